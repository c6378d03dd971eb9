"""Sequence localization evaluated like single images: top-1 accuracy per condition against L.

Each query traversal of the split is one drive, ordered by timestamp. For a sequence length L,
the fix of frame t is the filter's answer after frames t - L + 1 .. t (fewer at the start of a
drive): every frame is judged on the same amount of history, only the past is used, and
L = 1 is single-image retrieval exactly (:func:`softloc.sequence.windowed_fixes`).

The filter's emission temperature is fitted on the validation region (split ``val``): its
references (the map's reference traversal) and queries, described by the map's own model, so
no test query ever tunes it. Without a validation split the default temperature is used, and
the log says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from softloc.data.places import PlaceTable
from softloc.evaluation.metrics import DEFAULT_THRESHOLDS, topn_accuracy
from softloc.evaluation.report import threshold_key
from softloc.extract import extract_over_ranks, image_store
from softloc.sequence import SequenceConfig, fit_temperature, windowed_fixes

logger = logging.getLogger(__name__)

DEFAULT_LENGTHS: tuple[int, ...] = (1, 2, 5, 10, 20)
CANDIDATES = 20  # top-K retrieved per frame: the filter's states


def drive_orders(queries: PlaceTable) -> list[np.ndarray]:
    """Row indices of each query traversal (a drive), ordered by timestamp (stable)."""
    drives = []
    for traversal in queries.traversals():
        rows = np.flatnonzero(queries.traversal == traversal)
        drives.append(rows[np.argsort(queries.timestamp[rows], kind="stable")])
    return drives


def lattice(
    ref_desc: np.ndarray, query_desc: np.ndarray, k: int = CANDIDATES
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) top-k reference rows and their squared descriptor distances, exact search.

    Ties in similarity rank the lower reference row first (the evaluation's tie order).
    """
    scores = np.asarray(query_desc, np.float32) @ np.asarray(ref_desc, np.float32).T
    k = min(k, scores.shape[1])
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape),
                        -scores.astype(np.float64)), axis=-1)[:, :k]
    top = np.take_along_axis(scores, order, -1)
    return order.astype(np.int64), np.maximum(2.0 - 2.0 * top.astype(np.float64), 0.0)


def sequence_fixes(
    queries: PlaceTable,
    candidates: np.ndarray,
    distances: np.ndarray,
    ref_xy: np.ndarray,
    config: SequenceConfig,
    length: int,
) -> np.ndarray:
    """(Q,) reference row fixed for each query when its drive is filtered with windows of
    ``length`` frames (timestamps give the time steps)."""
    fixed = np.empty(len(queries), dtype=np.int64)
    for rows in drive_orders(queries):
        fixed[rows] = windowed_fixes(
            candidates[rows], distances[rows], ref_xy, config, length,
            timestamps=queries.timestamp[rows],
        )
    return fixed


def accuracy_by_length(
    queries: PlaceTable,
    candidates: np.ndarray,
    distances: np.ndarray,
    ref_xy: np.ndarray,
    config: SequenceConfig,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{str(L): {condition: {threshold: top-1 accuracy}}}`` of the filtered fixes."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for length in lengths:
        fixed = sequence_fixes(queries, candidates, distances, ref_xy, config, int(length))
        per_condition = {}
        for condition in queries.conditions():
            mask = queries.condition == condition
            accuracy = topn_accuracy(queries.xy[mask], ref_xy, fixed[mask, None], thresholds)[0]
            per_condition[condition] = {
                threshold_key(t): float(a) for t, a in zip(thresholds, accuracy, strict=True)
            }
        out[str(int(length))] = per_condition
    return out


def fit_on_validation(
    model: Any,
    places: PlaceTable,
    reference_traversal: str,
    config: SequenceConfig,
    radius: float = 10.0,
    split: str = "val",
) -> SequenceConfig:
    """``config`` with its temperature fitted on the ``split`` region (unchanged if absent)."""
    region = places.where(split=split)
    refs = region.subset(region.traversal == reference_traversal)
    queries = region.subset(region.traversal != reference_traversal)
    if len(refs) == 0 or len(queries) == 0:
        logger.warning("sequence: no '%s' references and queries to fit the temperature on; "
                       "using %.3g", split, config.temperature)
        return config
    describe = [refs, queries]
    ref_desc, query_desc = (
        extract_over_ranks(model, image_store(model, [t.image_path(i) for i in range(len(t))]))
        for t in describe
    )
    candidates, distances = lattice(ref_desc, query_desc)
    metric = np.linalg.norm(refs.xy[candidates] - queries.xy[:, None, :], axis=-1)
    temperature = fit_temperature(distances, metric <= radius)
    logger.info("sequence: emission temperature %.4g fitted on %d '%s' queries", temperature,
                len(queries), split)
    return replace(config, temperature=temperature)
