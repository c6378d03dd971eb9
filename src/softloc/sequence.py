"""Sequence localization: a hidden Markov model over the map's references, on the top-K lattice.

A car or robot sees an ordered sequence of images. Single-image retrieval localizes each on its
own; a hidden Markov model lets neighbouring frames vote: the vehicle cannot move 300 m between
two frames a tenth of a second apart.

The model, and why it is built this way:

- **States** are references of the map. To stay cheap at any map size, each frame keeps only its
  top-K retrieved references as candidate states (the lattice of SeqSLAM-like methods and of
  retrieval-based HMMs); a reference outside a frame's top-K has at most the emission of the
  K-th one, so it would rarely win anyway. One step costs O(K^2), independent of the map size.
- **Emission**: ``exp(-d / T)`` of the squared descriptor distance ``d`` of the candidate to the
  query, a softmax over the candidates with a temperature ``T`` fitted on the validation region
  (:func:`fit_temperature`).
- **Transition** from reference i to reference j: 1 when their metric distance lies within the
  displacement the speed range allows for the time step (``min_speed * dt`` to
  ``max_speed * dt``, widened by ``slack`` metres for the reference spacing), falling off as a
  Gaussian of the excess (``sigma`` metres) outside it, plus a floor ``jump`` so that the filter
  recovers from a wrong track (a kidnapped robot).
- **Forward filtering** is causal: the fix of frame t uses frames up to t only, as a robot must.
  **Viterbi** decoding (optional) gives the best whole path, for offline smoothing.
- A **time gap** larger than ``max_gap`` resets the filter (logged); frames without timestamps
  use their order (``dt = 1``). Everything is deterministic: ties break by retrieval rank.

A sequence of one frame gives exactly single-image retrieval (the top-1 candidate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequenceConfig:
    """Parameters of the sequence filter (speeds in metres per unit of timestamp).

    Attributes:
        temperature: emission temperature on squared descriptor distances (0 < T).
        min_speed, max_speed: the speed range; displacement per step must lie in
            ``[min_speed * dt - slack, max_speed * dt + slack]`` for full transition weight.
        slack: metres added to both ends (about the reference spacing plus lane changes).
        sigma: metres over which the weight falls off outside that range.
        jump: floor of the transition weight (relative to 1), the chance of a re-localization.
        max_gap: a time step above this resets the filter.
    """

    temperature: float = 0.05
    min_speed: float = 0.0
    max_speed: float = 20.0
    slack: float = 5.0
    sigma: float = 5.0
    jump: float = 1e-4
    max_gap: float = 10.0

    def __post_init__(self) -> None:
        checks = {
            "temperature": self.temperature > 0,
            "min_speed": self.min_speed >= 0,
            "max_speed": self.max_speed >= self.min_speed,
            "slack": self.slack >= 0,
            "sigma": self.sigma > 0,
            "jump": 0 <= self.jump < 1,
            "max_gap": self.max_gap > 0,
        }
        bad = [name for name, ok in checks.items() if not (ok and np.isfinite(getattr(self, name)))]
        if bad:
            raise ValueError(
                f"sequence filter: invalid {', '.join(bad)} "
                f"({', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}); temperature and sigma "
                "> 0, speeds >= 0 with max_speed >= min_speed, 0 <= jump < 1, max_gap > 0"
            )


def emission_log_weights(distances: np.ndarray, temperature: float) -> np.ndarray:
    """Log softmax of ``-distances / temperature`` over the last axis (the candidates)."""
    logits = -np.asarray(distances, dtype=np.float64) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def transition_weights(metric: np.ndarray, dt: float, config: SequenceConfig) -> np.ndarray:
    """Transition weights (not normalised) for metric distances ``metric`` over a step ``dt``."""
    low = max(0.0, config.min_speed * dt - config.slack)
    high = config.max_speed * dt + config.slack
    excess = np.maximum(low - metric, 0.0) + np.maximum(metric - high, 0.0)
    return (1.0 - config.jump) * np.exp(-0.5 * (excess / config.sigma) ** 2) + config.jump


def time_steps(timestamps: np.ndarray | None, count: int) -> np.ndarray:
    """(count,) time step before each frame: diff of timestamps (first 0), or 1 per frame."""
    if timestamps is None:
        return np.r_[0.0, np.ones(max(count - 1, 0))]
    stamps = np.asarray(timestamps, dtype=np.float64)
    if stamps.shape != (count,):
        raise ValueError(f"expected {count} timestamps, got shape {stamps.shape}")
    if not np.all(np.isfinite(stamps)):
        raise ValueError("timestamps must be finite; leave them out to use the frame order")
    return np.r_[0.0, np.abs(np.diff(stamps))]


@dataclass(frozen=True)
class SequenceFixes:
    """The filter's answer for every frame of a sequence.

    Attributes:
        rows: (T,) reference row chosen for each frame (forward filter, causal).
        probabilities: (T,) posterior probability of that reference among the candidates.
        resets: (T,) True where the filter started afresh (first frame, time gaps).
        smoothed_rows: (T,) Viterbi path, or None when not asked for.
    """

    rows: np.ndarray
    probabilities: np.ndarray
    resets: np.ndarray
    smoothed_rows: np.ndarray | None = None


def _check_lattice(candidates: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    candidates = np.asarray(candidates, dtype=np.int64)
    distances = np.asarray(distances, dtype=np.float64)
    if candidates.ndim != 2 or candidates.shape != distances.shape or candidates.shape[1] == 0:
        raise ValueError(
            f"candidates and distances must both be (T, K) with K >= 1, got {candidates.shape} "
            f"and {distances.shape}"
        )
    return candidates, distances


def filter_sequence(
    candidates: np.ndarray,
    distances: np.ndarray,
    ref_xy: np.ndarray,
    config: SequenceConfig,
    timestamps: np.ndarray | None = None,
    smooth: bool = False,
) -> SequenceFixes:
    """Forward-filter (and optionally Viterbi-decode) a sequence on its top-K lattice.

    Args:
        candidates: (T, K) reference rows retrieved per frame, best first (IVF padding -1 is
            allowed: such a candidate gets no weight).
        distances: (T, K) their squared descriptor distances to the frame's query.
        ref_xy: (N, 2) reference positions in metres.
        config: the filter's parameters.
        timestamps: (T,) frame times, or None to use the order (one unit per frame).
        smooth: also return the Viterbi path.
    """
    candidates, distances = _check_lattice(candidates, distances)
    ref_xy = np.asarray(ref_xy, dtype=np.float64)
    steps = time_steps(timestamps, len(candidates))
    valid = candidates >= 0
    if not valid.any(axis=1).all():
        raise ValueError(f"frame {int(np.flatnonzero(~valid.any(axis=1))[0])} has no candidate")
    log_emit = emission_log_weights(np.where(valid, distances, np.inf), config.temperature)
    count = len(candidates)
    rows = np.empty(count, dtype=np.int64)
    probs = np.empty(count)
    resets = np.zeros(count, dtype=bool)
    back: list[np.ndarray | None] = []
    scores: list[np.ndarray] = []
    log_belief = None
    viterbi = None
    for t in range(count):
        if log_belief is None or steps[t] > config.max_gap:
            if log_belief is not None:
                logger.info("sequence: frame %d comes %.3g after the last one (max_gap %.3g); "
                            "the filter starts afresh", t, steps[t], config.max_gap)
            resets[t] = True
            log_belief = log_emit[t].copy()
            viterbi = log_emit[t].copy()
            back.append(None)
        else:
            prev_xy = ref_xy[np.maximum(candidates[t - 1], 0)]
            this_xy = ref_xy[np.maximum(candidates[t], 0)]
            metric = np.linalg.norm(prev_xy[:, None, :] - this_xy[None, :, :], axis=-1)
            log_trans = np.log(transition_weights(metric, steps[t], config))  # (K_prev, K)
            log_belief = logsumexp(log_belief[:, None] + log_trans, axis=0) + log_emit[t]
            step_scores = viterbi[:, None] + log_trans
            back.append(np.argmax(step_scores, axis=0))
            viterbi = step_scores.max(axis=0) + log_emit[t]
        log_belief = log_belief - logsumexp(log_belief)
        best = int(np.argmax(log_belief))  # first maximum: the better-ranked candidate on a tie
        rows[t], probs[t] = candidates[t, best], float(np.exp(log_belief[best]))
        scores.append(viterbi)
    smoothed = _backtrack(candidates, scores, back) if smooth else None
    return SequenceFixes(rows=rows, probabilities=probs, resets=resets, smoothed_rows=smoothed)


def _backtrack(
    candidates: np.ndarray, scores: list[np.ndarray], back: list[np.ndarray | None]
) -> np.ndarray:
    """Viterbi path: the best final state, then each frame's best predecessor."""
    count = len(candidates)
    path = np.empty(count, dtype=np.int64)
    state = int(np.argmax(scores[-1]))
    for t in range(count - 1, -1, -1):
        path[t] = candidates[t, state]
        pointer = back[t]
        if pointer is not None:
            state = int(pointer[state])
        elif t > 0:
            state = int(np.argmax(scores[t - 1]))  # a reset: the segment before ends freely
    return path


def windowed_fixes(
    candidates: np.ndarray,
    distances: np.ndarray,
    ref_xy: np.ndarray,
    config: SequenceConfig,
    length: int,
    timestamps: np.ndarray | None = None,
) -> np.ndarray:
    """(T,) reference row of each frame from the filter run over it and its ``length - 1``
    predecessors (fewer at the start of the sequence). ``length = 1`` is single-image
    retrieval; the evaluation uses this so that every frame is judged on the same amount of
    history."""
    if length < 1:
        raise ValueError(f"sequence length must be >= 1, got {length}")
    candidates, distances = _check_lattice(candidates, distances)
    stamps = None if timestamps is None else np.asarray(timestamps, dtype=np.float64)
    out = np.empty(len(candidates), dtype=np.int64)
    for t in range(len(candidates)):
        start = max(0, t - length + 1)
        fixes = filter_sequence(
            candidates[start : t + 1], distances[start : t + 1], ref_xy, config,
            None if stamps is None else stamps[start : t + 1],
        )
        out[t] = fixes.rows[-1]
    return out


def fit_temperature(
    distances: np.ndarray,
    correct: np.ndarray,
    grid: np.ndarray | None = None,
) -> float:
    """Emission temperature that maximises the likelihood of the correct candidates.

    Args:
        distances: (Q, K) squared descriptor distances of each validation query's top-K.
        correct: (Q, K) True where that candidate lies within the success radius of the query.
            Queries with no correct candidate carry no information and are left out.
        grid: temperatures to try (default: 40 values from 1e-3 to 10, log-spaced).

    Returns:
        The temperature of ``grid`` with the highest mean log probability of the correct
        candidates (their summed softmax mass), the smallest one on a tie.
    """
    distances = np.asarray(distances, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if distances.shape != correct.shape or distances.ndim != 2:
        raise ValueError(f"distances {distances.shape} and correct {correct.shape} must match")
    useful = correct.any(axis=1)
    if not useful.any():
        raise ValueError("no validation query has a correct candidate: cannot fit a temperature")
    grid = np.geomspace(1e-3, 10.0, 40) if grid is None else np.asarray(grid, dtype=np.float64)
    d, c = distances[useful], correct[useful]
    best, best_score = float(grid[0]), -np.inf
    for temperature in grid:
        log_p = emission_log_weights(d, float(temperature))
        top = np.where(c, log_p, -np.inf).max(axis=1, keepdims=True)
        mass = top[:, 0] + np.log(np.where(c, np.exp(log_p - top), 0.0).sum(axis=1))
        score = float(mass.mean())
        if score > best_score + 1e-12:
            best, best_score = float(temperature), score
    return best
