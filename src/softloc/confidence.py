"""How far to trust a fix: a confidence from descriptor distances, and its calibration.

**The score.** Retrieval is trustworthy when the best reference is clearly more similar than any
reference *elsewhere*. Let ``d1`` be the squared descriptor distance of the top-1 reference and
``d_other`` that of the best-ranked retrieved reference lying more than ``radius`` metres
(default 25) from the top-1. The confidence is ``1 - d1 / d_other`` (clipped to [0, 1]): 0 when
another place is as similar as the chosen one (the ambiguity of a repeated facade), near 1 when
the query matches one place only. When every retrieved reference lies within ``radius`` of the
top-1, the last retrieved distance stands in for ``d_other``: a lower bound on it, so the score
errs on the cautious side. This is the distance-ratio test of local feature matching, applied
to places.

**Calibration.** A score means something only once it is tied to precision. On a split with
ground truth, :func:`precision_coverage` gives, for each threshold, the share of queries
accepted (coverage) and the share of accepted fixes that are right (precision), and
:func:`threshold_for_precision` the lowest threshold whose accepted fixes reach a precision
target (e.g. 95 % within 10 m). A user can then accept only fixes above it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RADIUS_M = 25.0


def fix_confidence(
    distances: np.ndarray, positions: np.ndarray, radius: float = DEFAULT_RADIUS_M
) -> float:
    """Confidence in [0, 1] of one fix from its top-k list.

    Args:
        distances: (k,) squared descriptor distances of the retrieved references, best first.
        positions: (k, 2) their positions in metres.
        radius: metres from the top-1 beyond which a reference counts as another place.
    """
    distances = np.asarray(distances, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    if distances.ndim != 1 or len(distances) == 0 or positions.shape != (len(distances), 2):
        raise ValueError(
            f"expected (k,) distances and (k, 2) positions with k >= 1, got {distances.shape} "
            f"and {positions.shape}"
        )
    if len(distances) == 1:
        return 0.0  # nothing to compare with: no evidence that the match is unique
    far = np.linalg.norm(positions - positions[0], axis=1) > radius
    other = distances[np.flatnonzero(far)[0]] if far.any() else distances[-1]
    if other <= 0:
        return 0.0
    return float(np.clip(1.0 - distances[0] / other, 0.0, 1.0))


def fix_confidences(
    distances: np.ndarray, positions: np.ndarray, radius: float = DEFAULT_RADIUS_M
) -> np.ndarray:
    """(Q,) confidences of Q fixes from (Q, k) distances and (Q, k, 2) positions."""
    return np.array(
        [fix_confidence(d, p, radius) for d, p in zip(distances, positions, strict=True)],
        dtype=np.float64,
    )


@dataclass(frozen=True)
class PrecisionCoverage:
    """Precision of the fixes accepted at each confidence threshold.

    Attributes:
        thresholds: (M,) distinct confidences, descending; a fix is accepted when its
            confidence is >= the threshold.
        coverage: (M,) share of all fixes accepted.
        precision: (M,) share of accepted fixes that are correct.
    """

    thresholds: np.ndarray
    coverage: np.ndarray
    precision: np.ndarray

    def as_dict(self) -> dict[str, list[float]]:
        """Plain lists, for JSON."""
        return {
            "thresholds": self.thresholds.tolist(),
            "coverage": self.coverage.tolist(),
            "precision": self.precision.tolist(),
        }


def precision_coverage(confidence: np.ndarray, correct: np.ndarray) -> PrecisionCoverage:
    """Precision against coverage as the acceptance threshold sweeps the confidences."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
        raise ValueError(
            f"confidence {confidence.shape} and correct {correct.shape} must be equal, non-empty"
            " 1-D arrays"
        )
    order = np.argsort(-confidence, kind="stable")
    sorted_conf, sorted_ok = confidence[order], correct[order]
    accepted = np.arange(1, len(order) + 1)
    hits = np.cumsum(sorted_ok)
    # a threshold accepts every fix of equal confidence: keep the last index of each value
    last = np.r_[np.flatnonzero(np.diff(sorted_conf) != 0), len(order) - 1]
    return PrecisionCoverage(
        thresholds=sorted_conf[last],
        coverage=accepted[last] / len(order),
        precision=hits[last] / accepted[last],
    )


def threshold_for_precision(curve: PrecisionCoverage, target: float = 0.95) -> float | None:
    """The lowest threshold (largest coverage) whose accepted fixes reach ``target`` precision.

    Returns None when no threshold reaches it.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    reaching = np.flatnonzero(curve.precision >= target - 1e-12)
    if reaching.size == 0:
        return None
    return float(curve.thresholds[reaching[-1]])
