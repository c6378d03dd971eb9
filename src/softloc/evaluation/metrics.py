"""Localization accuracy from retrieval results: pure numpy functions.

A query counts as localized within ``d`` metres at top-N when at least one of its first N
retrieved references lies within ``d`` metres of the query's true position (the paper's
"top-N localization accuracy"; deep-vg's recall@N with a radius). The *upper bound* is the
share of queries that have any reference within ``d`` metres at all: no retrieval can beat it,
so it separates what the map allows from what the descriptor achieves.

Positions are in metres, (Q, 2) for queries and (R, 2) for references; ``retrieved`` holds
integer row indices into the references, best first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.neighbors import NearestNeighbors

#: Thresholds of the paper's tables, in metres.
DEFAULT_THRESHOLDS: tuple[float, ...] = (5.0, 10.0, 15.0, 25.0)
#: The N of recall@N, as the VPR literature reports it (NetVLAD, deep-vg), at RECALL_RADIUS_M.
RECALL_TOP_N: tuple[int, ...] = (1, 5, 10, 20)
RECALL_RADIUS_M = 25.0
#: Largest threshold and step of the accuracy curves, in metres.
CURVE_MAX_M = 25.0
CURVE_STEP_M = 0.5


def curve_thresholds(max_m: float = CURVE_MAX_M, step_m: float = CURVE_STEP_M) -> np.ndarray:
    """Thresholds 0, step, ..., max_m (inclusive) in metres, e.g. 51 values for 0-25 m by 0.5."""
    if not (max_m > 0 and step_m > 0):
        raise ValueError(f"curve range needs max_m > 0 and step_m > 0, got {max_m}, {step_m}")
    count = int(np.floor(max_m / step_m + 1e-9)) + 1
    return np.arange(count, dtype=np.float64) * step_m


def _check_xy(name: str, xy: np.ndarray) -> np.ndarray:
    """(N, 2) finite float64 positions, N > 0, or a ValueError naming ``name``."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) (x, y in metres), got {xy.shape}")
    if xy.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one position is needed")
    if not np.all(np.isfinite(xy)):
        raise ValueError(f"{name} holds NaN or infinite positions; drop or fix those rows")
    return xy


def _check_thresholds(thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """(T,) finite, non-negative thresholds in metres."""
    values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("thresholds is empty: give at least one distance in metres")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"thresholds must be finite and >= 0 metres, got {values.tolist()}")
    return values


def _check_retrieved(retrieved: np.ndarray, num_queries: int, num_refs: int) -> np.ndarray:
    """(Q, K) int64 indices into the references; a (Q,) array is read as K = 1."""
    retrieved = np.asarray(retrieved)
    if retrieved.ndim == 1:
        retrieved = retrieved[:, None]
    if retrieved.ndim != 2 or retrieved.shape[0] != num_queries or retrieved.shape[1] == 0:
        raise ValueError(
            f"retrieved must have shape (Q, K) = ({num_queries}, K >= 1), got {retrieved.shape}"
        )
    if not np.issubdtype(retrieved.dtype, np.integer):
        raise ValueError(f"retrieved must hold integer reference indices, got {retrieved.dtype}")
    retrieved = retrieved.astype(np.int64, copy=False)
    bad = (retrieved < 0) | (retrieved >= num_refs)
    if np.any(bad):
        q, k = np.argwhere(bad)[0]
        raise ValueError(
            f"retrieved[{q}, {k}] = {retrieved[q, k]} is outside [0, {num_refs}); a -1 means the "
            "index returned fewer than K results (raise nprobe or use a flat index)"
        )
    return retrieved


def retrieved_distances(
    query_xy: np.ndarray, ref_xy: np.ndarray, retrieved: np.ndarray
) -> np.ndarray:
    """Metric distance from each query to each of its retrieved references.

    Args:
        query_xy: (Q, 2) query positions, metres.
        ref_xy: (R, 2) reference positions, metres.
        retrieved: (Q, K) (or (Q,)) indices into ``ref_xy``, best first.

    Returns:
        (Q, K) float64 distances in metres.
    """
    query_xy = _check_xy("query_xy", query_xy)
    ref_xy = _check_xy("ref_xy", ref_xy)
    retrieved = _check_retrieved(retrieved, len(query_xy), len(ref_xy))
    return np.linalg.norm(ref_xy[retrieved] - query_xy[:, None, :], axis=2)


def topn_accuracy(
    query_xy: np.ndarray,
    ref_xy: np.ndarray,
    retrieved: np.ndarray,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
) -> np.ndarray:
    """Top-N localization accuracy for every N up to K and every threshold.

    Args:
        query_xy: (Q, 2) query positions, metres.
        ref_xy: (R, 2) reference positions, metres.
        retrieved: (Q, K) indices into ``ref_xy``, best first.
        thresholds: (T,) distances in metres; a reference at exactly the threshold counts.

    Returns:
        (K, T) array; entry ``[n - 1, t]`` is the share of queries whose closest (in metres)
        of the first ``n`` retrieved references lies within ``thresholds[t]`` metres. Each
        column is non-decreasing in ``n``.

    Raises:
        ValueError: wrong shapes, no queries, NaN positions, indices outside the references.
    """
    thresholds = _check_thresholds(thresholds)
    distances = retrieved_distances(query_xy, ref_xy, retrieved)
    best_so_far = np.minimum.accumulate(distances, axis=1)  # (Q, K)
    hits = best_so_far[:, :, None] <= thresholds[None, None, :]  # (Q, K, T)
    return hits.mean(axis=0)


def nearest_reference_distance(query_xy: np.ndarray, ref_xy: np.ndarray) -> np.ndarray:
    """(Q,) distance in metres from each query to its nearest reference (k-d tree)."""
    query_xy = _check_xy("query_xy", query_xy)
    ref_xy = _check_xy("ref_xy", ref_xy)
    tree = NearestNeighbors(n_neighbors=1, algorithm="kd_tree").fit(ref_xy)
    distances, _ = tree.kneighbors(query_xy)
    return distances[:, 0]


def upper_bound(
    query_xy: np.ndarray,
    ref_xy: np.ndarray,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
) -> np.ndarray:
    """Best accuracy any retrieval could reach: share of queries with a reference within d.

    Uses a k-d tree over the references, so 10k queries against 100k references take well
    under a second.

    Args:
        query_xy: (Q, 2) query positions, metres.
        ref_xy: (R, 2) reference positions, metres.
        thresholds: (T,) distances in metres (inclusive).

    Returns:
        (T,) shares in [0, 1].
    """
    thresholds = _check_thresholds(thresholds)
    nearest = nearest_reference_distance(query_xy, ref_xy)
    return (nearest[:, None] <= thresholds[None, :]).mean(axis=0)


def position_errors(
    query_xy: np.ndarray, ref_xy: np.ndarray, retrieved: np.ndarray
) -> np.ndarray:
    """(Q,) metric error in metres of the top-1 position estimate (the first retrieved ref)."""
    retrieved = np.asarray(retrieved)
    top1 = retrieved[:, :1] if retrieved.ndim == 2 else retrieved
    return retrieved_distances(query_xy, ref_xy, top1)[:, 0]


def accuracy_curve(
    query_xy: np.ndarray,
    ref_xy: np.ndarray,
    retrieved: np.ndarray,
    n: int = 1,
    max_m: float = CURVE_MAX_M,
    step_m: float = CURVE_STEP_M,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` accuracy against the threshold, 0 to ``max_m`` metres by ``step_m``.

    Returns:
        ``(thresholds, values)``, both (T,), e.g. T = 51 for the default 0-25 m by 0.5 m.

    Raises:
        ValueError: ``n`` outside [1, K] besides the checks of :func:`topn_accuracy`.
    """
    retrieved = np.asarray(retrieved)
    if retrieved.ndim == 1:
        retrieved = retrieved[:, None]
    num_retrieved = retrieved.shape[-1]
    if not 1 <= n <= num_retrieved:
        raise ValueError(f"n = {n} must lie in [1, K = {num_retrieved}]; retrieve more neighbours")
    thresholds = curve_thresholds(max_m, step_m)
    accuracy = topn_accuracy(query_xy, ref_xy, retrieved[:, :n], thresholds)
    return thresholds, accuracy[n - 1]


def upper_bound_curve(
    query_xy: np.ndarray,
    ref_xy: np.ndarray,
    max_m: float = CURVE_MAX_M,
    step_m: float = CURVE_STEP_M,
) -> tuple[np.ndarray, np.ndarray]:
    """Upper bound against the threshold: ``(thresholds, values)``, both (T,)."""
    thresholds = curve_thresholds(max_m, step_m)
    return thresholds, upper_bound(query_xy, ref_xy, thresholds)


def area_under_curve(errors: np.ndarray, max_m: float = CURVE_MAX_M) -> float:
    """Normalised area under an accuracy curve on [0, ``max_m``], in [0, 1].

    The top-1 curve is the step function ``A(d) = share of queries with error <= d``; its
    exact area divided by ``max_m`` is::

        AUC = (1 / max_m) * integral_0^max_m A(d) dd = mean_q max(0, 1 - e_q / max_m)

    (each query contributes the part of [0, max_m] where it counts as localized). So it
    does not depend on the sampling of the plotted curve; 1 means every error is 0 m, 0 that
    none is below ``max_m``. A query with no reference within ``max_m`` contributes 0. Given
    the top-1 errors it is the top-1 AUC; given :func:`nearest_reference_distance` the AUC of
    the upper bound.

    Args:
        errors: (Q,) non-negative distances in metres (Q >= 1).
        max_m: right end of the curve, metres (> 0).
    """
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if errors.size == 0:
        raise ValueError("errors is empty: the area under the curve needs at least one query")
    if not np.all(np.isfinite(errors)) or np.any(errors < 0):
        raise ValueError("errors must be finite and >= 0 metres")
    if not max_m > 0:
        raise ValueError(f"max_m must be > 0 metres, got {max_m}")
    return float(np.mean(np.clip(1.0 - errors / max_m, 0.0, 1.0)))


def recall_at_n(
    query_xy: np.ndarray,
    ref_xy: np.ndarray,
    retrieved: np.ndarray,
    top_n: Sequence[int] = RECALL_TOP_N,
    radius_m: float = RECALL_RADIUS_M,
) -> dict[int, float]:
    """Recall@N: share of queries with a reference within ``radius_m`` among the first N.

    The VPR literature's number (NetVLAD, deep-visual-geo-localization-benchmark): the same
    as top-N localization accuracy at ``radius_m``. Every query counts in the denominator,
    also one with no reference within ``radius_m`` at all (it is a miss for every N), so
    recall@N never exceeds the upper bound at ``radius_m``.

    Args:
        query_xy, ref_xy: (Q, 2) and (R, 2) positions, metres.
        retrieved: (Q, K) reference indices, best first.
        top_n: the N values. An N above K is allowed only when the K retrieved are all R
            references (then recall@N = recall@K); otherwise it raises.
        radius_m: distance in metres (inclusive).

    Returns:
        ``{N: recall}`` in the order of ``top_n``.

    Raises:
        ValueError: an N < 1, or N > K with fewer than all references retrieved.
    """
    retrieved = np.asarray(retrieved)
    if retrieved.ndim == 1:
        retrieved = retrieved[:, None]
    num_retrieved = retrieved.shape[-1]
    num_refs = len(np.asarray(ref_xy))
    accuracy = topn_accuracy(query_xy, ref_xy, retrieved, [radius_m])[:, 0]
    recalls = {}
    for n in top_n:
        n = int(n)
        if n < 1:
            raise ValueError(f"recall@{n}: N must be >= 1")
        if n > num_retrieved and num_retrieved < num_refs:
            raise ValueError(
                f"recall@{n} needs at least {n} retrieved references per query, got "
                f"{num_retrieved}; search with k >= {n}"
            )
        recalls[n] = float(accuracy[min(n, num_retrieved) - 1])
    return recalls


def error_percentiles(
    errors: np.ndarray, percentiles: Sequence[float] = (50.0, 90.0)
) -> list[float]:
    """Percentiles of position errors in metres (linear interpolation between order
    statistics, numpy's default; the 50th is the usual median, the mean of the two middle
    values for an even count).

    Raises:
        ValueError: no errors, or non-finite ones.
    """
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if errors.size == 0 or not np.all(np.isfinite(errors)):
        raise ValueError("position errors must be a non-empty array of finite metres")
    return [float(v) for v in np.percentile(errors, list(percentiles))]
