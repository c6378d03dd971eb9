"""The worst failures of a model: query, what the map retrieved, and the true nearest reference.

Failures are the queries whose top-1 reference lies farthest (in metres) from the query; ties
keep the query order (traversal, then time). Looking at the three images side by side tells
whether the model confused two look-alike places or whether the query shows nothing of its
place (glare, darkness, a truck).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from softloc.atomic import write_text, write_with
from softloc.explain.queries import MapRetrieval


@dataclass(frozen=True)
class Failure:
    """One failed query: rows into the queries and the map's references, and distances (m)."""

    query: int
    retrieved: int
    nearest: int
    error_m: float
    nearest_m: float


def worst_failures(retrieval: MapRetrieval, count: int = 6) -> list[Failure]:
    """The ``count`` queries with the largest top-1 error, largest first."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    errors = retrieval.errors
    nearest_rows, nearest_m = retrieval.nearest
    order = np.argsort(-errors, kind="stable")[:count]
    return [
        Failure(
            query=int(i),
            retrieved=int(retrieval.retrieved[i, 0]),
            nearest=int(nearest_rows[i]),
            error_m=float(errors[i]),
            nearest_m=float(nearest_m[i]),
        )
        for i in order
    ]


def failures_figure(retrieval: MapRetrieval, failures: Sequence[Failure]) -> Figure:
    """One row per failure: query, retrieved (with its error), true nearest reference."""
    if not failures:
        raise ValueError(f"{retrieval.name}: no failure to draw")
    width, height = retrieval.size
    panel = 2.2
    figure = Figure(figsize=(3 * panel + 0.4, 0.5 + len(failures) * panel * height / width + 0.35),
                    dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(failures), 3, squeeze=False)
    for r, failure in enumerate(failures):
        condition = retrieval.queries.condition[failure.query]
        images = [
            (retrieval.query_image(failure.query), f"query ({condition})"),
            (retrieval.reference_image(failure.retrieved), f"retrieved: {failure.error_m:.1f} m"),
            (retrieval.reference_image(failure.nearest), f"nearest: {failure.nearest_m:.1f} m"),
        ]
        for c, (image, label) in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=8, color="tab:red" if c == 1 else "black")
    figure.suptitle(f"{retrieval.name}: worst top-1 failures", fontsize=10)
    return figure


def failures_csv(retrieval: MapRetrieval, failures: Sequence[Failure]) -> list[list[str]]:
    """Rows (no header) of the failure table of one model."""
    queries, refs = retrieval.queries, retrieval.the_map.places
    return [
        [retrieval.name, str(rank), queries.path[f.query], queries.condition[f.query],
         refs.path[f.retrieved], f"{f.error_m:.2f}", refs.path[f.nearest], f"{f.nearest_m:.2f}"]
        for rank, f in enumerate(failures, start=1)
    ]


FAILURE_COLUMNS = ("model", "rank", "query", "condition", "retrieved", "error_m", "nearest",
                   "nearest_m")


def write_failures(
    retrievals: Sequence[MapRetrieval],
    out: str | os.PathLike[str],
    count: int = 6,
    stem: str = "failures",
) -> list[Path]:
    """Write ``<stem>_<model>.png`` per map and one ``<stem>.csv``; return the PNG paths."""
    out = Path(out)
    pngs: list[Path] = []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    for retrieval in retrievals:
        failures = worst_failures(retrieval, count)
        writer.writerows(failures_csv(retrieval, failures))
        figure = failures_figure(retrieval, failures)
        path = out / f"{stem}_{retrieval.name}.png"
        pngs.append(write_with(path, lambda tmp, f=figure: f.savefig(tmp, format="png")))
    write_text(out / f"{stem}.csv", buffer.getvalue())
    return pngs
