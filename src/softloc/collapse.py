"""Collapse detection: notice during training when every image gets the same descriptor.

A collapsed descriptor network maps every image to (nearly) the same point. Its loss then sits
at the value the loss formula gives when all descriptors are equal (e.g. ``n_far x margin`` for
the triplet sum) and retrieval falls below the untrained network, while nothing else in a run
looks wrong. This module watches two signals:

- **spread**: the descriptors of a fixed *probe batch* of training images (chosen from the
  seed) are measured at every probe. The detector fires on the *mean pairwise distance*
  between them (L2 on the unit sphere: 0 when collapsed, about 1.41 for random directions).
  The *effective rank* of their covariance (``exp`` of the entropy of its normalised
  eigenvalues, Roy & Vetterli 2007) is logged beside it but does not fire: it is scale-free,
  so descriptors that differ only by numerical noise still have a high effective rank, while
  the mean distance sees that they are all in one spot. The effective rank tells the two kinds
  of collapse apart in the log (all in one point vs. all on a line).
- **loss at its collapse value**: each loss's collapse value is found generically, by calling
  the loss on a tuple whose descriptors are all the same unit vector, with the real distance
  matrix of that tuple (:func:`collapse_value`), for every training tuple
  (:class:`CollapseValueLoss`). No loss module has to declare anything. The signal holds when
  the median step since the last probe is within ``train.collapse_loss_tol`` (relative) of its
  tuple's collapse value.

Either signal holding at ``train.collapse_window`` consecutive probes fires the detector once:
one warning naming the step, the spread and the fix; the probe columns of ``val_log.csv``;
``"collapsed": true`` in the run's ``model.json``; and with ``train.stop_on_collapse`` an early
stop that keeps the weights of the last healthy probe (the newest checkpoint at or before it
when the run was resumed since).

Random stream: the probe images come from ``default_rng([seed, 8])``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from softloc.train import Trainer

logger = logging.getLogger(__name__)

#: Images in the probe batch (fewer when the training split is smaller).
PROBE_IMAGES = 48
#: Below this total variance the descriptors count as one point (effective rank 0).
TINY_VARIANCE = 1e-12
#: Absolute floor of the loss tolerance (for a loss whose collapse value is 0).
TINY_LOSS = 1e-6
#: The columns the probes add to ``val_log.csv``.
COLUMNS = ("spread", "effective_rank", "collapse_signal", "collapsed")
FIX = (
    "lower train.lr, turn mining on (mining.enabled=true) or start from another "
    "initialisation (train.seed)"
)
LOW_SPREAD = "low_spread"
LOSS_AT_COLLAPSE = "loss_at_collapse_value"


# ------------------------------------------------------------------------------ measures


def probe_rows(train_rows: np.ndarray, seed: int, size: int = PROBE_IMAGES) -> np.ndarray:
    """The probe batch: ``size`` training rows (sorted) drawn from ``default_rng([seed, 8])``."""
    rng = np.random.default_rng([seed, 8])
    count = min(size, len(train_rows))
    return np.sort(rng.choice(np.asarray(train_rows), count, replace=False))


def mean_pairwise_distance(descriptors: np.ndarray) -> float:
    """Mean L2 distance over all pairs i < j of the rows of ``descriptors`` (N, D), N >= 2."""
    x = np.asarray(descriptors, dtype=np.float64)
    if len(x) < 2:
        raise ValueError("the spread needs at least 2 descriptors")
    squared = (x * x).sum(axis=1)
    gram = squared[:, None] + squared[None, :] - 2.0 * (x @ x.T)
    upper = np.triu_indices(len(x), 1)
    return float(np.sqrt(np.clip(gram[upper], 0.0, None)).mean())


def effective_rank(descriptors: np.ndarray) -> float:
    """``exp(H)`` of the normalised eigenvalues of the descriptors' covariance (Roy & Vetterli).

    Between 1 (all variance along one direction) and ``min(N - 1, D)`` (equal variance in every
    direction); 0 when there is no variance at all (every descriptor the same).
    """
    x = np.asarray(descriptors, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    eigenvalues = np.linalg.svd(centred, compute_uv=False) ** 2
    total = eigenvalues.sum()
    if total <= TINY_VARIANCE * max(1, len(x)):
        return 0.0
    p = eigenvalues[eigenvalues > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


# ------------------------------------------------------------------------ collapse values


def collapse_value(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    distances: np.ndarray | torch.Tensor,
    dim: int = 8,
) -> float | None:
    """The loss of a tuple whose descriptors are all the same unit vector.

    Args:
        loss_fn: a loss module or function ``(descriptors (B, D), distances (B, B)) -> scalar``.
        distances: the tuple's real (B, B) distance matrix in metres.
        dim: descriptor dimension of the constant tuple (the value does not depend on it).

    Returns:
        The value, or None when the loss is undefined there (raises, or is not finite).
    """
    distances = torch.as_tensor(distances).detach().to("cpu", torch.float32)
    size = distances.shape[0]
    descriptors = torch.full((size, dim), 1.0 / math.sqrt(dim))
    try:
        with torch.no_grad():
            value = float(loss_fn(descriptors, distances))
    except (ValueError, RuntimeError) as error:
        logger.debug("no collapse value for %r: %s", loss_fn, error)
        return None
    return value if math.isfinite(value) else None


class CollapseValueLoss(torch.nn.Module):
    """A loss that also notes, for every tuple it sees, that tuple's collapse value.

    The training loss of a collapsed model equals the collapse value *of its own tuple*; for
    a loss whose terms depend on the metric distances (the soft loss) that value changes from
    tuple to tuple, so it is worked out for each one (one call of the loss on a constant tuple
    of width 8: negligible next to the network). The returned loss is the wrapped one's.
    """

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.last_collapse_value: float | None = None

    def forward(self, descriptors: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        value = self.loss(descriptors, distances)
        self.last_collapse_value = collapse_value(self.loss, distances)
        return value


# ------------------------------------------------------------------------------- detector


@dataclass(frozen=True)
class Probe:
    """One measurement: the probe batch's spread and which collapse signals hold."""

    step: int
    spread: float
    effective_rank: float
    signals: tuple[str, ...]
    collapsed: bool

    def cells(self) -> list[Any]:
        """The probe's cells in ``val_log.csv`` (see :data:`COLUMNS`)."""
        return [
            f"{self.spread:.6g}",
            f"{self.effective_rank:.4g}",
            "+".join(self.signals),
            int(self.collapsed),
        ]


@dataclass(frozen=True)
class Collapse:
    """What the detector found: the streak's first probe step, the step it fired, why."""

    onset: int
    detected: int
    spread: float
    effective_rank: float
    signals: tuple[str, ...]
    last_healthy: int | None


@dataclass
class CollapseDetector:
    """Fires once when a collapse signal holds at ``window`` consecutive probes.

    Args:
        window: consecutive probes a signal must hold at (0 turns detection off).
        spread_threshold: a mean pairwise descriptor distance below this is a collapse signal.
        loss_tolerance: relative distance to the collapse value within which a loss sits at it.
    """

    window: int
    spread_threshold: float
    loss_tolerance: float = 1e-3
    collapse: Collapse | None = None
    last_collapse_value: float | None = None
    _gaps: list[float] = field(default_factory=list)
    _streak: list[Probe] = field(default_factory=list)
    _last_healthy: int | None = None

    def observe_loss(self, loss: float, collapse: float | None) -> None:
        """Remember one step's loss and its tuple's collapse value (None: the loss has none)."""
        if collapse is None or not math.isfinite(loss):
            return
        self._gaps.append(abs(float(loss) - collapse) / (abs(collapse) + TINY_LOSS))
        self.last_collapse_value = collapse

    def loss_at_collapse(self) -> bool:
        """Whether the median step since the last probe sits at its collapse value."""
        return bool(self._gaps) and float(np.median(self._gaps)) <= self.loss_tolerance

    def signals(self, spread: float) -> tuple[str, ...]:
        """The collapse signals holding now (and forget the losses seen so far)."""
        found = []
        if spread < self.spread_threshold:
            found.append(LOW_SPREAD)
        if self.loss_at_collapse():
            found.append(LOSS_AT_COLLAPSE)
        self._gaps = []
        return tuple(found)

    def update(
        self, step: int, spread: float, rank: float, signals: tuple[str, ...]
    ) -> Probe:
        """Record one probe's verdict; returns it (``collapsed`` from the firing probe on)."""
        if self.window < 1:
            return Probe(step, spread, rank, signals, False)
        if not signals:
            self._streak = []
            if self.collapse is None:
                self._last_healthy = step
        elif self.collapse is None:
            probe = Probe(step, spread, rank, signals, False)
            self._streak.append(probe)
            if len(self._streak) >= self.window:
                first = self._streak[0]
                self.collapse = Collapse(
                    first.step, step, spread, rank, signals, self._last_healthy
                )
        return Probe(step, spread, rank, signals, self.collapse is not None)

    @property
    def last_healthy(self) -> int | None:
        """Step of the last probe at which no signal held (before the collapse)."""
        return self._last_healthy


# ------------------------------------------------------------------------ trainer's side


def probe_steps(config: Any, has_validation: bool) -> int:
    """Steps between probes: every validation, or every checkpoint when validation is off."""
    train = config.train
    return train.val_every if has_validation and train.val_every else train.checkpoint_every


class CollapseWatch:
    """The Trainer's collapse detector: probe batch, schedule, warning, stop, model.json keys.

    The Trainer calls :meth:`after_step` once per step (and with ``loss=None`` at step 0),
    writes the returned probe's cells into ``val_log.csv``, stops when :attr:`stop` is set,
    takes :meth:`kept_model` as the final model then, and stores :meth:`model_extra` in
    ``model.json``.
    """

    def __init__(self, trainer: Trainer) -> None:
        cfg = trainer.config
        self.trainer = trainer
        self.every = probe_steps(cfg, trainer.validation is not None)
        self.rows = probe_rows(trainer.train_rows, cfg.train.seed)
        self.stop_on_collapse = bool(cfg.train.stop_on_collapse)
        window = cfg.train.collapse_window if len(self.rows) >= 2 else 0
        self.detector = CollapseDetector(
            window, cfg.train.collapse_spread, cfg.train.collapse_loss_tol
        )
        self._snapshot: tuple[int, dict[str, torch.Tensor]] | None = None
        self.kept_step: int | None = None
        self._recorder: CollapseValueLoss | None = None

    def wrap_loss(self, loss: torch.nn.Module) -> torch.nn.Module:
        """``loss`` noting each tuple's collapse value (unchanged when detection is off)."""
        if not self.enabled:
            return loss
        self._recorder = CollapseValueLoss(loss)
        return self._recorder

    @property
    def enabled(self) -> bool:
        return self.detector.window > 0

    @property
    def stop(self) -> bool:
        """Whether training should stop now (collapsed, with ``train.stop_on_collapse``)."""
        return self.stop_on_collapse and self.detector.collapse is not None

    def after_step(self, model: torch.nn.Module, done: int, loss: float | None) -> Probe | None:
        """Note the loss of the step that ended at ``done``; probe when a probe is due."""
        if not self.enabled:
            return None
        if loss is not None:
            recorder = self._recorder
            collapse = None if recorder is None else recorder.last_collapse_value
            self.detector.observe_loss(loss, collapse)
        if done % self.every != 0:
            return None
        return self.probe(model, done)

    def probe(self, model: torch.nn.Module, step: int) -> Probe:
        """Measure the probe batch now and update the verdict (warning when it fires)."""
        from softloc.extract import extract_over_ranks

        # under torchrun the ranks share the work and every rank gets every row, so all of
        # them take the same verdict
        descriptors = extract_over_ranks(model, self.trainer.store, self.rows, desc="probe")
        spread = mean_pairwise_distance(descriptors)
        rank = effective_rank(descriptors)
        had = self.detector.collapse is not None
        probe = self.detector.update(step, spread, rank, self.detector.signals(spread))
        if not probe.signals and self.stop_on_collapse and not had:
            state = model.state_dict()
            self._snapshot = (step, {k: v.detach().cpu().clone() for k, v in state.items()})
        if not had and self.detector.collapse is not None:
            logger.warning(self.message())
        return probe

    def message(self) -> str:
        """The one warning: step, spread, signals, the loss's collapse value, the fix."""
        found = self.detector.collapse
        assert found is not None
        window = self.detector.window
        text = (
            f"{self.trainer.out}: the model COLLAPSED at step {found.onset} (detected at step "
            f"{found.detected}, {window} probe(s) in a row): the mean pairwise descriptor "
            f"distance of the {len(self.rows)} probe images is {found.spread:.3g} "
            f"(threshold {self.detector.spread_threshold:g}), effective rank "
            f"{found.effective_rank:.3g}"
        )
        if LOSS_AT_COLLAPSE in found.signals and self.detector.last_collapse_value is not None:
            text += (
                f"; the training loss sits at its collapse value "
                f"{self.detector.last_collapse_value:.4g} (its value when all descriptors are "
                "equal)"
            )
        text += f". Fix: {FIX}."
        if self.stop_on_collapse:
            kept = found.last_healthy
            text += f" Stopping (train.stop_on_collapse); keeping the weights of step {kept or 0}."
        return text

    def restore(self, val_log: Path) -> None:
        """Take back the verdict of the probes already in ``val_log`` (a resumed run)."""
        if not self.enabled or not val_log.is_file():
            return
        with val_log.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("spread"):
                    continue
                signals = tuple(s for s in (row.get("collapse_signal") or "").split("+") if s)
                self.detector.update(
                    int(row["step"]), float(row["spread"]), float(row["effective_rank"]), signals
                )
        if self.detector.collapse is not None:
            logger.warning("%s (found in %s)", self.message(), val_log)

    def kept_model(self) -> torch.nn.Module:
        """The final model of a stopped run: the weights of the last healthy probe.

        Held in memory since that probe; after a resume, the newest checkpoint at or before
        that step, or the initial weights when none is left on disk.
        """
        from softloc.checkpoints import list_checkpoints, load_checkpoint

        found = self.detector.collapse
        assert found is not None
        kept = found.last_healthy or 0
        model = self.trainer.initial_model()
        if self._snapshot is not None and self._snapshot[0] == kept:
            model.load_state_dict(self._snapshot[1])
            self.kept_step = kept
            return model
        self.kept_step = 0
        for path in reversed(list_checkpoints(self.trainer.checkpoint_dir)):
            step = int(path.stem.split("_")[-1])
            if step <= kept:
                model, _ = load_checkpoint(path)
                self.kept_step = step
                break
        if self.kept_step != kept:
            logger.warning(
                "no checkpoint of step %d is left on disk: keeping step %d instead",
                kept,
                self.kept_step,
            )
        return model

    def model_extra(self) -> dict[str, Any]:
        """Keys for ``model.json``'s ``extra``: ``collapsed`` and, if so, where and why."""
        if not self.enabled:
            return {}
        found = self.detector.collapse
        if found is None:
            return {"collapsed": False}
        extra: dict[str, Any] = {
            "collapsed": True,
            "collapse_step": found.onset,
            "collapse_detected_step": found.detected,
            "collapse_spread": found.spread,
            "collapse_effective_rank": found.effective_rank,
            "collapse_signals": list(found.signals),
        }
        if self.stop:
            extra["stopped_on_collapse"] = True
            kept = self.kept_step if self.kept_step is not None else found.last_healthy
            extra["step"] = kept or 0
        return extra


# ----------------------------------------------------------------------- marking results


def collapse_note(extra: Mapping[str, Any]) -> str:
    """``"(collapsed at step N)"`` for a model whose ``model.json`` says it collapsed, else ''.

    A run stopped on collapse keeps earlier weights: ``"(collapsed at step N; kept step K)"``.
    """
    if not extra.get("collapsed"):
        return ""
    note = f"collapsed at step {extra.get('collapse_step', '?')}"
    if extra.get("stopped_on_collapse"):
        note += f"; kept step {extra.get('step', '?')}"
    return f"({note})"


def model_collapse_note(folder_or_file: str | Path) -> str:
    """:func:`collapse_note` of the model in a map or run folder (or a model file)."""
    import json

    path = Path(folder_or_file)
    sidecar = path / "model.json" if path.is_dir() else path.with_suffix(".json")
    try:
        extra = json.loads(sidecar.read_text(encoding="utf-8")).get("extra", {})
    except (OSError, ValueError, AttributeError):
        return ""
    return collapse_note(extra if isinstance(extra, Mapping) else {})


def marked_name(name: str, folder_or_file: str | Path) -> str:
    """``name`` with the collapse note of its model appended (unchanged when healthy)."""
    note = model_collapse_note(folder_or_file)
    return f"{name} {note}" if note else name

