"""Evaluation results as JSON-able dicts, Markdown tables and accuracy-curve plots.

:func:`evaluate_retrieval` turns one retrieval run (one model, one condition) into a plain
dict; the lead's ``results.json`` nests those as ``results[model][condition]``.
:func:`format_table` and :func:`plot_curves` read such dicts only: no model, no images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from softloc.atomic import write_with
from softloc.evaluation.metrics import (
    CURVE_MAX_M,
    CURVE_STEP_M,
    DEFAULT_THRESHOLDS,
    RECALL_RADIUS_M,
    RECALL_TOP_N,
    area_under_curve,
    curve_thresholds,
    error_percentiles,
    nearest_reference_distance,
    position_errors,
    recall_at_n,
    topn_accuracy,
    upper_bound,
)
from softloc.evaluation.plots import condition_panels, is_first_in_row

logger = logging.getLogger(__name__)

#: The top-N columns of the tables.
DEFAULT_TOP_N: tuple[int, ...] = (1, 5)
#: Key of the recall@N dict in a metrics dict.
RECALL_KEY = f"recall_at_{RECALL_RADIUS_M:g}m"

Curve = tuple[Sequence[float], Sequence[float]]


def threshold_key(threshold: float) -> str:
    """The dict key of a threshold in metres: ``5.0 -> "5"``, ``7.5 -> "7.5"``."""
    return f"{float(threshold):g}"


def evaluate_retrieval(
    query_xy: np.ndarray,
    ref_xy: np.ndarray,
    retrieved: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    top_n: Sequence[int] = DEFAULT_TOP_N,
    curve_max_m: float = CURVE_MAX_M,
    curve_step_m: float = CURVE_STEP_M,
    recall_n: Sequence[int] = RECALL_TOP_N,
) -> dict[str, Any]:
    """Accuracy of one retrieval run as a JSON-able dict.

    Args:
        query_xy: (Q, 2) query positions, metres.
        ref_xy: (R, 2) reference positions, metres.
        retrieved: (Q, K) reference indices, best first.
        thresholds: distances (metres) of the table columns.
        top_n: the N of the top-N entries; an N larger than K is left out (with a warning).
        curve_max_m, curve_step_m: range and step of the curves (and of the AUC).
        recall_n: the N of recall@N at 25 m; an N above K is left out (with a warning)
            unless the K retrieved are all the references.

    Returns:
        A dict of shares in [0, 1]::

            {
              "num_queries": Q, "num_references": R,
              "top1": {"5": .., "10": .., "15": .., "25": ..},   # one "top<N>" per N <= K
              "top5": {...},
              "upper_bound": {"5": .., ...},
              "curves": {"thresholds": [0.0, 0.5, ..., 25.0],
                         "top1": [...], "top5": [...], "upper_bound": [...]},
              "auc": ..,                # area under the top-1 curve, 0-25 m, in [0, 1]
              "auc_upper_bound": ..,    # the same for the upper-bound curve
              "recall_at_25m": {"1": .., "5": .., "10": .., "20": ..},
              "median_error_m": .., "p90_error_m": ..,   # top-1 position error, metres
            }

        Keys of the threshold dicts come from :func:`threshold_key`. ``auc`` is the exact
        area under the top-1 step curve on [0, ``curve_max_m``] divided by ``curve_max_m``,
        i.e. the mean over queries of ``max(0, 1 - e_q / curve_max_m)`` with ``e_q`` the
        top-1 error (see :func:`~softloc.evaluation.metrics.area_under_curve`). Recall@N
        counts every query (:func:`~softloc.evaluation.metrics.recall_at_n`). The error
        percentiles interpolate linearly between order statistics (numpy's default).

        The retrieved order is taken as given: ties in descriptor similarity are ordered by
        whoever searched (:func:`softloc.evaluation.protocol.order_ties` puts the lower
        reference row first).
    """
    query_xy = np.asarray(query_xy, dtype=np.float64)
    retrieved = np.asarray(retrieved)
    if retrieved.ndim == 1:
        retrieved = retrieved[:, None]
    num_retrieved = retrieved.shape[1] if retrieved.ndim == 2 else 0
    kept_n = [int(n) for n in top_n if 1 <= int(n) <= num_retrieved]
    dropped = [n for n in top_n if n not in kept_n]
    if dropped:
        logger.warning("top-%s left out: only %d neighbours retrieved", dropped, num_retrieved)
    curve_t = curve_thresholds(curve_max_m, curve_step_m)
    all_t = np.concatenate([np.asarray(thresholds, dtype=np.float64), curve_t])
    accuracy = topn_accuracy(query_xy, ref_xy, retrieved, all_t)  # (K, T + C)
    bound = upper_bound(query_xy, ref_xy, all_t)
    num_t = len(thresholds)
    result: dict[str, Any] = {
        "num_queries": int(len(query_xy)),
        "num_references": int(len(np.asarray(ref_xy))),
    }
    for n in kept_n:
        result[f"top{n}"] = _by_threshold(thresholds, accuracy[n - 1, :num_t])
    result["upper_bound"] = _by_threshold(thresholds, bound[:num_t])
    curves: dict[str, list[float]] = {"thresholds": curve_t.tolist()}
    for n in kept_n:
        curves[f"top{n}"] = accuracy[n - 1, num_t:].tolist()
    curves["upper_bound"] = bound[num_t:].tolist()
    result["curves"] = curves
    errors = position_errors(query_xy, ref_xy, retrieved)
    result["auc"] = area_under_curve(errors, curve_max_m)
    result["auc_upper_bound"] = area_under_curve(
        nearest_reference_distance(query_xy, ref_xy), curve_max_m
    )
    num_refs = len(np.asarray(ref_xy))
    kept_recall = [int(n) for n in recall_n if num_retrieved >= min(int(n), num_refs)]
    if len(kept_recall) < len(recall_n):
        logger.warning("recall@N left out for N > %d: too few neighbours retrieved", num_retrieved)
    recalls = recall_at_n(query_xy, ref_xy, retrieved, kept_recall, RECALL_RADIUS_M)
    result[RECALL_KEY] = {str(n): value for n, value in recalls.items()}
    result["median_error_m"], result["p90_error_m"] = error_percentiles(errors, (50.0, 90.0))
    return result


def _by_threshold(thresholds: Sequence[float], values: np.ndarray) -> dict[str, float]:
    return {threshold_key(t): float(v) for t, v in zip(thresholds, values, strict=True)}


def _is_metrics(entry: Any) -> bool:
    """Whether ``entry`` is one :func:`evaluate_retrieval` dict (not a nest of them)."""
    return isinstance(entry, Mapping) and "upper_bound" in entry


def _rows(results: Mapping[str, Any]) -> list[tuple[tuple[str, ...], Mapping[str, Any]]]:
    """Flatten ``{condition: metrics}`` or ``{model: {condition: metrics}}`` into rows."""
    rows = []
    for name, entry in results.items():
        if _is_metrics(entry):
            rows.append(((str(name),), entry))
        elif isinstance(entry, Mapping) and entry and all(map(_is_metrics, entry.values())):
            rows.extend(((str(name), str(cond)), metrics) for cond, metrics in entry.items())
        else:
            raise ValueError(
                f"results[{name!r}] is neither a metrics dict (with 'top1', 'upper_bound', ...)"
                " nor a dict of them keyed by condition; build it with evaluate_retrieval()"
            )
    depths = {len(label) for label, _ in rows}
    if len(depths) > 1:
        raise ValueError(
            "results mixes {condition: metrics} and {model: {condition: metrics}} entries; "
            "use one layout"
        )
    return rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def format_table(
    results: Mapping[str, Any],
    thresholds: Sequence[float] | None = None,
    top_n: Sequence[int] = DEFAULT_TOP_N,
    include_upper_bound: bool = True,
) -> str:
    """A Markdown table of accuracies in percent with one decimal.

    Args:
        results: ``{model: {condition: metrics}}`` (rows model x condition) or
            ``{condition: metrics}`` (rows condition), metrics from :func:`evaluate_retrieval`.
        thresholds: columns in metres; default: those of the first row's upper bound.
        top_n: which top-N column groups to show.
        include_upper_bound: add the upper bound at the same thresholds.

    Returns:
        The table, e.g. ``| model | condition | top-1 @5 m | ... | upper @25 m |``; a value
        missing from a row (say top-5 when only 1 neighbour was retrieved) shows as "-".

    Raises:
        ValueError: empty or malformed ``results``.
    """
    rows = _rows(results)
    if not rows:
        raise ValueError("results is empty: nothing to tabulate")
    if thresholds is None:
        keys = list(rows[0][1]["upper_bound"].keys())
    else:
        keys = [threshold_key(t) for t in thresholds]
    groups = [(f"top{n}", f"top-{n}") for n in top_n]
    if include_upper_bound:
        groups.append(("upper_bound", "upper"))
    label_names = ["model", "condition"] if len(rows[0][0]) == 2 else ["condition"]
    header = label_names + [f"{title} @{key} m" for _, title in groups for key in keys]
    aligns = ["---"] * len(label_names) + ["---:"] * (len(header) - len(label_names))
    lines = [_markdown_row(header), _markdown_row(aligns)]
    for label, metrics in rows:
        cells = list(label)
        for group, _ in groups:
            values = metrics.get(group, {})
            cells.extend(_percent(values.get(key)) for key in keys)
        lines.append(_markdown_row(cells))
    return "\n".join(lines) + "\n"


def format_summary_table(results: Mapping[str, Any]) -> str:
    """A Markdown table of the summary numbers: AUC, recall@N at 25 m, top-1 errors.

    Columns: AUC of the top-1 curve 0-25 m and of the upper bound (percent), recall@1/5/10/20
    at 25 m (percent), median and 90th-percentile top-1 position error (metres). A value
    missing from a row (results written before these keys existed, or too few neighbours
    retrieved) shows as "-".

    Args:
        results: as for :func:`format_table`.

    Raises:
        ValueError: empty or malformed ``results``.
    """
    rows = _rows(results)
    if not rows:
        raise ValueError("results is empty: nothing to tabulate")
    label_names = ["model", "condition"] if len(rows[0][0]) == 2 else ["condition"]
    recall_header = [f"R@{n} @{RECALL_RADIUS_M:g} m" for n in RECALL_TOP_N]
    header = label_names + ["AUC 0-25 m", "upper AUC", *recall_header, "median err (m)"]
    header.append("p90 err (m)")
    aligns = ["---"] * len(label_names) + ["---:"] * (len(header) - len(label_names))
    lines = [_markdown_row(header), _markdown_row(aligns)]
    for label, metrics in rows:
        recalls = metrics.get(RECALL_KEY, {})
        cells = list(label)
        cells.append(_percent(metrics.get("auc")))
        cells.append(_percent(metrics.get("auc_upper_bound")))
        cells.extend(_percent(recalls.get(str(n))) for n in RECALL_TOP_N)
        cells.extend(_metres(metrics.get(key)) for key in ("median_error_m", "p90_error_m"))
        lines.append(_markdown_row(cells))
    return "\n".join(lines) + "\n"


def _metres(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def curves_from_results(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]], n: int = 1
) -> tuple[dict[str, dict[str, Curve]], dict[str, Curve]]:
    """Arguments of :func:`plot_curves` from ``results[model][condition]`` metrics dicts.

    Args:
        results: ``{model: {condition: metrics}}`` from :func:`evaluate_retrieval`.
        n: which top-N curve to draw.

    Returns:
        ``(curves, upper)``: ``{condition: {model: (thresholds, values)}}`` and
        ``{condition: (thresholds, upper bound)}`` (the first model's, as every model of a
        condition shares the queries and references).

    Raises:
        ValueError: a metrics dict without curves or without the top-``n`` curve.
    """
    curves: dict[str, dict[str, Curve]] = {}
    upper: dict[str, Curve] = {}
    for model, by_condition in results.items():
        for condition, metrics in by_condition.items():
            stored = metrics.get("curves", {}) if isinstance(metrics, Mapping) else {}
            if f"top{n}" not in stored or "thresholds" not in stored:
                raise ValueError(
                    f"results[{model!r}][{condition!r}] has no top-{n} curve; compute it with "
                    f"evaluate_retrieval() retrieving at least {n} neighbours"
                )
            thresholds = stored["thresholds"]
            curves.setdefault(condition, {})[model] = (thresholds, stored[f"top{n}"])
            if condition not in upper and "upper_bound" in stored:
                upper[condition] = (thresholds, stored["upper_bound"])
    return curves, upper


def plot_curves(
    curves: Mapping[str, Mapping[str, Curve]],
    upper: Mapping[str, Curve],
    path: str | os.PathLike[str],
    title: str | None = None,
    ylabel: str = "top-1 accuracy (%)",
) -> Path:
    """Accuracy against the distance threshold, one subplot per condition, as a PNG.

    Args:
        curves: ``{condition: {label: (thresholds, values)}}``; thresholds in metres, values
            as shares in [0, 1], e.g. the ``curves`` of :func:`evaluate_retrieval` per model.
        upper: ``{condition: (thresholds, values)}``, drawn dashed; a condition may be absent.
        path: output PNG, written atomically.
        title: figure title.
        ylabel: y-axis label.

    Returns:
        ``path``.

    Raises:
        ValueError: no conditions, or a curve whose thresholds and values differ in length.
    """
    if not curves:
        raise ValueError("curves is empty: give at least one condition with one curve")
    conditions = list(curves)
    figure, axes = condition_panels(len(conditions))
    labels = list(dict.fromkeys(label for by_label in curves.values() for label in by_label))
    palette = [f"C{i % 10}" for i in range(len(labels))]
    colours = dict(zip(labels, palette, strict=True))  # one colour per model in every panel
    for slot, condition in enumerate(conditions):
        ax = axes[slot]
        for label, curve in curves[condition].items():
            x, y = _curve_arrays(curve, f"curves[{condition!r}][{label!r}]")
            ax.plot(x, 100.0 * y, label=str(label), color=colours[label], linewidth=1.6)
        if condition in upper:
            x, y = _curve_arrays(upper[condition], f"upper[{condition!r}]")
            ax.plot(x, 100.0 * y, "k--", label="upper bound", linewidth=1.2)
        ax.set_title(str(condition))
        ax.set_xlabel("distance threshold (m)")
        ax.set_ylim(0.0, 102.0)
        ax.grid(True, alpha=0.3)
        if is_first_in_row(slot, len(conditions)):
            ax.set_ylabel(ylabel)
        ax.legend(fontsize="small", loc="best")
    if title:
        figure.suptitle(title)
    return write_with(path, lambda tmp: figure.savefig(tmp, format="png"))


def _curve_arrays(curve: Curve, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(curve[0], dtype=np.float64)
    y = np.asarray(curve[1], dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(
            f"{name}: thresholds {x.shape} and values {y.shape} must be equal-length 1-D arrays"
        )
    return x, y
