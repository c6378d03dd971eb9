"""Figures with one panel per condition: the shared grid, and the precision-coverage picture
of the fixes' confidence."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from softloc.atomic import write_with

CURVE_KEY = "precision_coverage_10m"


def condition_panels(count: int) -> tuple[Figure, list[Any]]:
    """A figure of ``count`` panels sharing the y axis, at most 4 a row, and its axes in order.

    The slots past ``count`` in the last row are hidden; ``axes[i]`` is panel i. Every
    per-condition figure uses this one grid, so the pictures of a report line up.
    """
    columns = min(count, 4)
    rows = -(-count // columns)
    figure = Figure(figsize=(4.0 * columns, 3.4 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    axes = [grid[slot // columns][slot % columns] for slot in range(rows * columns)]
    for ax in axes[count:]:
        ax.set_visible(False)
    return figure, axes[:count]


def is_first_in_row(slot: int, count: int) -> bool:
    """Whether panel ``slot`` of a :func:`condition_panels` grid of ``count`` starts a row."""
    return slot % min(count, 4) == 0


def plot_precision_coverage(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    path: str | os.PathLike[str],
    target: float = 0.95,
) -> Path | None:
    """Precision of the accepted top-1 fixes (within 10 m) against the share accepted, as the
    confidence threshold falls, one line per model and a panel per condition; the target
    precision is drawn dashed. Returns None (and writes nothing) when no result holds a curve.
    """
    by_condition: dict[str, dict[str, Mapping[str, list[float]]]] = {}
    for model, per_condition in results.items():
        for condition, metrics in per_condition.items():
            if isinstance(metrics, Mapping) and CURVE_KEY in metrics:
                by_condition.setdefault(str(condition), {})[str(model)] = metrics[CURVE_KEY]
    if not by_condition:
        return None
    figure, axes = condition_panels(len(by_condition))
    models = list(dict.fromkeys(m for curves in by_condition.values() for m in curves))
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for slot, (condition, curves) in enumerate(by_condition.items()):
        ax = axes[slot]
        for model, curve in curves.items():
            coverage = [100.0 * c for c in curve["coverage"]]
            precision = [100.0 * p for p in curve["precision"]]
            ax.plot(coverage, precision, color=colours[model], label=model, linewidth=1.6)
        ax.axhline(100.0 * target, color="k", linestyle="--", linewidth=1.0,
                   label=f"{100 * target:g} % precision")
        ax.set_title(condition)
        ax.set_xlabel("fixes accepted (%)")
        ax.set_xlim(0.0, 100.0)
        ax.set_ylim(0.0, 102.0)
        ax.grid(True, alpha=0.3)
        if is_first_in_row(slot, len(by_condition)):
            ax.set_ylabel("accepted fixes within 10 m (%)")
        ax.legend(fontsize="small", loc="lower left")
    figure.suptitle("confidence: precision against coverage")
    return write_with(path, lambda tmp: figure.savefig(tmp, format="png"))
