"""The evaluation protocol: every query of a split against each map, per condition.

Queries are the split's images whose traversal is not one of the map's reference traversals;
each model describes them once, the map returns the top-K references, and accuracy is
reported per condition with the upper bound. Results go to ``results.json`` (the layout of
:func:`softloc.evaluation.report.evaluate_retrieval`, keyed model -> condition), a Markdown
table ``results.md`` and the curves ``curves.png``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from softloc import distributed
from softloc.atomic import write_json, write_text
from softloc.collapse import marked_name
from softloc.confidence import fix_confidence, precision_coverage, threshold_for_precision
from softloc.data.places import PlaceTable
from softloc.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    RECALL_TOP_N,
    nearest_reference_distance,
)
from softloc.evaluation.plots import plot_precision_coverage
from softloc.evaluation.report import (
    curves_from_results,
    evaluate_retrieval,
    format_summary_table,
    format_table,
    plot_curves,
)
from softloc.extract import extract_over_ranks, image_store
from softloc.localize import load_map_model
from softloc.mapping import Map
from softloc.output_folders import claim_output_folder

logger = logging.getLogger(__name__)

CALIBRATION_THRESHOLD_M = 10.0
CALIBRATION_PRECISION = 0.95
RESULTS_JSON = "results.json"
RESULTS_TABLE = "results.md"
CURVES_PNG = "curves.png"
PRECISION_COVERAGE_PNG = "precision_coverage.png"


def query_places(places: PlaceTable, the_map: Map, split: str) -> PlaceTable:
    """Images of ``split`` that are not references of ``the_map`` (by traversal)."""
    in_split = places.where(split=split)
    reference = set(the_map.places.traversal.tolist())
    queries = in_split.subset(~np.isin(in_split.traversal, list(reference)))
    if len(queries) == 0:
        raise ValueError(
            f"{places.root}: no query images in split '{split}' outside the map's traversals "
            f"{sorted(reference)}"
        )
    return queries


def model_names(folders: Sequence[str | os.PathLike[str]]) -> list[str]:
    """One distinct name per map folder: its folder's name, ``parent-name`` when two share it.

    A name still taken twice (``a/x/m`` and ``b/x/m``) gets ``-2``, ``-3`` ... in order.
    """
    folders = [Path(f) for f in folders]
    names = [f.name for f in folders]
    seen: dict[str, int] = {}
    unique = []
    for folder, name in zip(folders, names, strict=True):
        if names.count(name) > 1:
            name = f"{folder.parent.name}-{name}"
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}-{count + 1}")
    return unique


def warn_if_unrelated(
    the_map: Map,
    places: PlaceTable,
    queries: PlaceTable,
    max_threshold_m: float,
    label: str = "",
) -> list[str]:
    """Warn (log) when a map and its queries look unrelated; return the warnings.

    Two signs that a map is evaluated on another dataset or split, where the numbers would be
    silently zero or meaningless: no query lies within ``max_threshold_m`` of any reference,
    and the map's image root is not the dataset's folder.
    """
    warnings = []
    name = label or "the map"
    map_root = os.path.realpath(the_map.places.root)
    data_root = os.path.realpath(places.root)
    if map_root != data_root:
        warnings.append(
            f"{name} was built from images under {map_root}, but the queries come from "
            f"{data_root}: check --data (a map is evaluated on the dataset it was built from)"
        )
    if len(queries) and len(the_map):
        nearest = nearest_reference_distance(queries.xy, the_map.places.xy)
        if float(nearest.min()) > max_threshold_m:
            warnings.append(
                f"no query lies within {max_threshold_m:g} m of any reference of {name} "
                f"(closest: {float(nearest.min()):.0f} m): every accuracy will be 0; the map "
                "and the queries are from different places (another split or dataset?)"
            )
    for warning in warnings:
        logger.warning("%s", warning)
    return warnings


def order_ties(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Search results best first, with a fixed order among equal similarities.

    FAISS returns tied scores in the order of its heap (a flat index keeps the lowest rows
    at the cut-off of k but lists them highest row first), so the evaluation re-sorts each row
    by score (descending), then reference row (ascending): among equally similar
    references the earlier row of the map (the earlier image of the reference drive) ranks
    first. Padding (-1, from an IVF index that found too few) stays at the end.

    Args:
        scores: (Q, K) similarities (inner products, larger is better).
        indices: (Q, K) reference rows.

    Returns:
        ``(scores, indices)`` re-ordered.
    """
    scores = np.asarray(scores)
    indices = np.asarray(indices)
    order = np.lexsort((indices, -scores.astype(np.float64), indices < 0), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(indices, order, -1)


def evaluate_map(
    map_dir: str | os.PathLike[str],
    places: PlaceTable,
    split: str = "test",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    top_k: int = max(RECALL_TOP_N),
    progress: bool = True,
    sequence_lengths: Sequence[int] = (),
    main_only: bool = False,
) -> dict[str, dict[str, Any]]:
    """Metrics per condition of one map: ``{condition: evaluate_retrieval(...)}``, plus the
    confidence calibration (:func:`calibration`) and, for each of ``sequence_lengths``, the
    sequence filter's top-1 accuracy ``top1_seq<L>`` (:mod:`softloc.evaluation.sequences`).

    Under torchrun the queries are described by all ranks. With ``main_only`` the descriptors
    are gathered on rank 0 alone, which computes the metrics; the other ranks take part in
    the collective steps only (the validation fit of the sequence filter) and return ``{}``.
    Without it every rank computes, and returns, the same metrics.

    ``top_k`` references are retrieved per query (20, for recall@20); ties in similarity are
    ordered by :func:`order_ties`. The descriptors are those of the map's own model, whose
    whitening (if any) the Trainer fitted on training images, never on these queries.
    """
    the_map = Map.load(map_dir)
    model = load_map_model(map_dir)
    queries = query_places(places, the_map, split)
    warn_if_unrelated(the_map, places, queries, max(thresholds), label=str(map_dir))
    store = image_store(model, [queries.image_path(i) for i in range(len(queries))])
    # split over the ranks of a torchrun launch, gathered in row order before any metric
    descriptors = extract_over_ranks(model, store, progress=progress, desc="queries",
                                     main_only=main_only)
    if descriptors is None:  # another rank, main_only: the same collectives as rank 0, no metric
        if sequence_lengths:
            fitted_sequence_config(model, places, the_map)
        return {}
    scores, retrieved = order_ties(*the_map.search(descriptors, top_k))
    results = metrics_by_condition(queries, the_map.places.xy, retrieved, thresholds,
                                   scores=scores)
    if sequence_lengths:
        add_sequence_results(results, model, places, the_map, queries, retrieved, scores,
                             sequence_lengths, thresholds)
    return results


def add_sequence_results(
    results: dict[str, dict[str, Any]],
    model: Any,
    places: PlaceTable,
    the_map: Map,
    queries: PlaceTable,
    retrieved: np.ndarray,
    scores: np.ndarray,
    lengths: Sequence[int],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> None:
    """Add ``top1_seq<L>`` (top-1 accuracy per threshold of the sequence filter with windows
    of L frames) to each condition of ``results``; the filter's temperature is fitted on the
    validation region first."""
    from softloc.evaluation.sequences import accuracy_by_length

    config = fitted_sequence_config(model, places, the_map)
    valid = retrieved >= 0
    distances = np.where(valid, np.maximum(2.0 - 2.0 * scores.astype(np.float64), 0.0), 4.0)
    by_length = accuracy_by_length(queries, retrieved, distances, the_map.places.xy, config,
                                   lengths, thresholds)
    for length, per_condition in by_length.items():
        for condition, accuracy in per_condition.items():
            results[condition][f"top1_seq{length}"] = accuracy


def fitted_sequence_config(model: Any, places: PlaceTable, the_map: Map) -> Any:
    """The sequence filter's default config with its temperature fitted on the validation
    region against the map's reference traversal; under torchrun every rank must call it
    (its extraction is a collective step)."""
    from softloc.evaluation.sequences import fit_on_validation
    from softloc.sequence import SequenceConfig

    return fit_on_validation(model, places, str(the_map.places.traversal[0]), SequenceConfig())


def calibration(
    query_xy: np.ndarray,
    ref_xy: np.ndarray,
    retrieved: np.ndarray,
    scores: np.ndarray,
    threshold: float = CALIBRATION_THRESHOLD_M,
    target: float = CALIBRATION_PRECISION,
) -> dict[str, Any]:
    """How far the fixes' confidence can be trusted, for one condition.

    Returns ``precision_coverage_10m`` (the curve: thresholds, coverage, precision of top-1
    fixes within ``threshold`` metres), ``coverage_p95_10m`` (the share of queries accepted at
    the lowest confidence threshold whose accepted fixes are right ``target`` of the time; 0
    when none is) and ``confidence_p95_10m`` (that threshold; absent when none reaches it).
    """
    distances = np.maximum(2.0 - 2.0 * np.asarray(scores, dtype=np.float64), 0.0)
    confidence = np.array([
        fix_confidence(d[r >= 0], ref_xy[r[r >= 0]]) for d, r in zip(distances, retrieved,
                                                                    strict=True)
    ])
    correct = np.linalg.norm(ref_xy[retrieved[:, 0]] - query_xy, axis=1) <= threshold
    curve = precision_coverage(confidence, correct)
    cut = threshold_for_precision(curve, target)
    out: dict[str, Any] = {"precision_coverage_10m": curve.as_dict()}
    if cut is None:
        out["coverage_p95_10m"] = 0.0
    else:
        out["coverage_p95_10m"] = float(np.mean(confidence >= cut))
        out["confidence_p95_10m"] = cut
    return out


def metrics_by_condition(
    queries: PlaceTable,
    ref_xy: np.ndarray,
    retrieved: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    conditions: Sequence[str] | None = None,
    scores: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """``{condition: evaluate_retrieval(...)}`` of queries whose references were retrieved
    (``retrieved`` (Q, K), best first, ties ordered by :func:`order_ties`), conditions in the
    order given (default: the queries' order of first appearance). With the retrieval's
    ``scores`` (Q, K), each condition also gets its confidence :func:`calibration`."""
    results = {}
    for condition in conditions if conditions is not None else queries.conditions():
        mask = queries.condition == condition
        results[condition] = evaluate_retrieval(
            queries.xy[mask], ref_xy, retrieved[mask], thresholds
        )
        if scores is not None:
            results[condition].update(
                calibration(queries.xy[mask], ref_xy, retrieved[mask], scores[mask])
            )
    return results


def write_results(
    results: Mapping[str, Mapping[str, Any]], out: str | os.PathLike[str], title: str = ""
) -> str:
    """Write ``results.md``, the plots, then ``results.json``; return the Markdown table.

    ``results.json`` (the mark of a complete evaluation) is written last, so a run stopped
    part-way never leaves one beside missing tables or plots.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(results) + "\n" + format_summary_table(results)
    write_text(out / RESULTS_TABLE, (f"# {title}\n\n" if title else "") + table)
    curves, upper = curves_from_results(results)
    plot_curves(curves, upper, out / CURVES_PNG, title=title or None)
    plot_precision_coverage(results, out / PRECISION_COVERAGE_PNG)
    write_json(out / RESULTS_JSON, results)
    return table


def evaluate_maps(
    maps: Mapping[str, str | os.PathLike[str]],
    places: PlaceTable,
    out: str | os.PathLike[str],
    split: str = "test",
    progress: bool = True,
    sequence_lengths: Sequence[int] = (),
) -> str:
    """Evaluate several maps (one per model) on the same queries; write and return the table.

    Under torchrun rank 0 alone computes the metrics and writes them; the other ranks describe
    their share of the queries and return an empty table. ``out`` is claimed first (missing,
    empty or an evaluation, and writable), so a bad ``--out`` fails before any map is
    evaluated. Name maps with :func:`model_names` when two folders share a name.
    """
    if not maps:
        raise ValueError("give at least one map to evaluate")
    claim_output_folder(out, "evaluation")
    results = {
        marked_name(name, path): evaluate_map(path, places, split=split, progress=progress,
                                              sequence_lengths=sequence_lengths, main_only=True)
        for name, path in maps.items()
    }
    title = f"top-N accuracy on split '{split}'"
    table = ""
    if distributed.is_main():  # under torchrun rank 0 alone computed the metrics and writes
        table = write_results(results, out, title=title)
    distributed.barrier("results written")  # every rank returns once results.json exists
    return table
