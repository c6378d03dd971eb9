"""Sequence-filter state per client session, one frame at a time.

`POST /localize/sequence` may send a drive in pieces. Each session keeps only what the next
step of the forward filter of :mod:`softloc.sequence` needs: the last frame's candidate rows
(its top-K lattice), its normalised log-belief over them and its timestamp. A step is the
same arithmetic as :func:`softloc.sequence.filter_sequence`, so a sequence sent in any number
of pieces gets the fixes it would get in one piece. Sessions idle longer than the expiry are
dropped, and the oldest is dropped when the store is full, so memory stays bounded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from softloc.sequence import SequenceConfig, emission_log_weights, transition_weights


@dataclass(frozen=True)
class FilterState:
    """The forward filter after a frame: its candidates (K,), log-belief (K,), timestamp."""

    candidates: np.ndarray
    log_belief: np.ndarray
    timestamp: float | None


def filter_step(
    state: FilterState | None,
    candidates: np.ndarray,
    distances: np.ndarray,
    ref_xy: np.ndarray,
    config: SequenceConfig,
    timestamp: float | None = None,
) -> tuple[int, FilterState]:
    """One forward step: the chosen reference row of this frame and the new state.

    The time step is the timestamp difference when both frames have one, else 1 (the frame
    order); a step above ``config.max_gap`` (or no state) starts the filter afresh.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    distances = np.asarray(distances, dtype=np.float64)
    valid = candidates >= 0
    if not valid.any():
        raise ValueError("the frame has no candidate reference")
    log_emit = emission_log_weights(np.where(valid, distances, np.inf), config.temperature)
    step = 1.0
    if state is not None and state.timestamp is not None and timestamp is not None:
        step = abs(float(timestamp) - state.timestamp)
    if state is None or step > config.max_gap:
        log_belief = log_emit
    else:
        prev_xy = ref_xy[np.maximum(state.candidates, 0)]
        this_xy = ref_xy[np.maximum(candidates, 0)]
        metric = np.linalg.norm(prev_xy[:, None, :] - this_xy[None, :, :], axis=-1)
        log_trans = np.log(transition_weights(metric, step, config))
        log_belief = logsumexp(state.log_belief[:, None] + log_trans, axis=0) + log_emit
    log_belief = log_belief - logsumexp(log_belief)
    best = int(np.argmax(log_belief))
    stamp = None if timestamp is None else float(timestamp)
    return int(candidates[best]), FilterState(candidates.copy(), log_belief, stamp)


class SessionStore:
    """Filter states by session id, dropped after ``expiry_s`` idle seconds; thread-safe.

    Args:
        expiry_s: idle seconds after which a session is forgotten.
        max_sessions: the most sessions kept (the least recently used goes first).
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, expiry_s: float = 600.0, max_sessions: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if expiry_s <= 0 or max_sessions < 1:
            raise ValueError("expiry_s must be > 0 and max_sessions >= 1")
        self.expiry_s, self.max_sessions, self.clock = expiry_s, max_sessions, clock
        self._states: OrderedDict[str, tuple[float, FilterState]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: str) -> FilterState | None:
        """The session's state, or None when it is new or expired."""
        with self._lock:
            self._expire()
            entry = self._states.get(session)
            return None if entry is None else entry[1]

    def put(self, session: str, state: FilterState) -> None:
        """Store the session's state (it becomes the most recently used)."""
        with self._lock:
            self._states[session] = (self.clock(), state)
            self._states.move_to_end(session)
            while len(self._states) > self.max_sessions:
                self._states.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._states)

    def _expire(self) -> None:
        now = self.clock()
        while self._states:
            session, (seen, _) = next(iter(self._states.items()))
            if now - seen <= self.expiry_s:
                break
            del self._states[session]
