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

from softloc.atomic import write_json, write_text
from softloc.collapse import marked_name
from softloc.data.places import PlaceTable
from softloc.evaluation.metrics import DEFAULT_THRESHOLDS, RECALL_TOP_N
from softloc.evaluation.report import (
    curves_from_results,
    evaluate_retrieval,
    format_summary_table,
    format_table,
    plot_curves,
)
from softloc.extract import extract_descriptors, image_store
from softloc.localize import load_map_model
from softloc.mapping import Map

logger = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_TABLE = "results.md"
CURVES_PNG = "curves.png"


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
) -> dict[str, dict[str, Any]]:
    """Metrics per condition of one map: ``{condition: evaluate_retrieval(...)}``.

    ``top_k`` references are retrieved per query (20, for recall@20); ties in similarity are
    ordered by :func:`order_ties`. The descriptors are those of the map's own model, whose
    whitening (if any) the Trainer fitted on training images, never on these queries.
    """
    the_map = Map.load(map_dir)
    model = load_map_model(map_dir)
    queries = query_places(places, the_map, split)
    store = image_store(model, [queries.image_path(i) for i in range(len(queries))])
    descriptors = extract_descriptors(model, store, progress=progress, desc="queries")
    _, retrieved = order_ties(*the_map.search(descriptors, top_k))
    return metrics_by_condition(queries, the_map.places.xy, retrieved, thresholds)


def metrics_by_condition(
    queries: PlaceTable,
    ref_xy: np.ndarray,
    retrieved: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    conditions: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{condition: evaluate_retrieval(...)}`` of queries whose references were retrieved
    (``retrieved`` (Q, K), best first, ties ordered by :func:`order_ties`), conditions in the
    order given (default: the queries' order of first appearance)."""
    results = {}
    for condition in conditions if conditions is not None else queries.conditions():
        mask = queries.condition == condition
        results[condition] = evaluate_retrieval(
            queries.xy[mask], ref_xy, retrieved[mask], thresholds
        )
    return results


def write_results(
    results: Mapping[str, Mapping[str, Any]], out: str | os.PathLike[str], title: str = ""
) -> str:
    """Write ``results.json``, ``results.md`` and ``curves.png``; return the Markdown table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULTS_JSON, results)
    table = format_table(results) + "\n" + format_summary_table(results)
    write_text(out / RESULTS_TABLE, (f"# {title}\n\n" if title else "") + table)
    curves, upper = curves_from_results(results)
    plot_curves(curves, upper, out / CURVES_PNG, title=title or None)
    return table


def evaluate_maps(
    maps: Mapping[str, str | os.PathLike[str]],
    places: PlaceTable,
    out: str | os.PathLike[str],
    split: str = "test",
    progress: bool = True,
) -> str:
    """Evaluate several maps (one per model) on the same queries; write and return the table."""
    if not maps:
        raise ValueError("give at least one map to evaluate")
    results = {
        marked_name(name, path): evaluate_map(path, places, split=split, progress=progress)
        for name, path in maps.items()
    }
    return write_results(results, out, title=f"top-N accuracy on split '{split}'")
