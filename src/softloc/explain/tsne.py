"""t-SNE of query descriptors, each point coloured by where the query was taken.

A descriptor that encodes place puts queries of nearby places next to each other whatever
the condition, so the colours of the 2-D colour code (:mod:`softloc.explain.colors`) form
smooth bands; a descriptor that encodes the condition (night vs day) forms clusters of mixed
colours. One panel per model, side by side, and the colour key (the reference positions in the
same colours) as a map (the paper's Figures 3, 5 and 6).
"""

from __future__ import annotations

import csv
import inspect
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from softloc.atomic import write_text, write_with
from softloc.explain.colors import RegionBounds, draw_color_key, position_colors
from softloc.explain.queries import MapRetrieval

#: t-SNE needs a handful of points; fewer raise a ValueError.
MIN_POINTS = 5


def embed_tsne(
    descriptors: np.ndarray, seed: int = 0, perplexity: float = 30.0, iterations: int = 500
) -> np.ndarray:
    """(N, D) descriptors -> (N, 2) t-SNE embedding (scikit-learn, PCA init, seeded).

    The perplexity is lowered to ``(N - 1) / 3`` for small N (it must stay below N).
    ``iterations`` (at least 250) is half scikit-learn's default: the layout has settled by
    then on descriptor sets of a few hundred points, at half the time.

    Raises:
        ValueError: fewer than :data:`MIN_POINTS` descriptors or NaN values.
    """
    descriptors = np.asarray(descriptors, dtype=np.float32)
    if descriptors.ndim != 2 or len(descriptors) < MIN_POINTS:
        raise ValueError(
            f"t-SNE needs at least {MIN_POINTS} descriptors of shape (N, D), got "
            f"{descriptors.shape}; choose a split or condition with more queries"
        )
    if not np.all(np.isfinite(descriptors)):
        raise ValueError("descriptors hold NaN or infinite values; re-extract them")
    perplexity = float(min(perplexity, (len(descriptors) - 1) / 3.0))
    # scikit-learn renamed n_iter to max_iter in 1.5
    steps = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                **{steps: max(250, int(iterations))})
    return tsne.fit_transform(descriptors).astype(np.float64)


@dataclass(frozen=True)
class TsnePanel:
    """One model's embedding: ``embedding[i]`` is query ``i`` at position ``xy[i]``."""

    name: str
    embedding: np.ndarray
    xy: np.ndarray
    paths: np.ndarray
    conditions: np.ndarray


def subsample(count: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` row indices spread evenly over ``range(count)``."""
    if count <= max_points:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, max_points).round().astype(np.int64))


def tsne_panels(
    retrievals: Sequence[MapRetrieval], max_points: int = 600, seed: int = 0
) -> list[TsnePanel]:
    """One :class:`TsnePanel` per map, of at most ``max_points`` queries (evenly chosen)."""
    panels = []
    for retrieval in retrievals:
        rows = subsample(len(retrieval.queries), max_points)
        queries = retrieval.queries.subset(rows)
        panels.append(
            TsnePanel(
                name=retrieval.name,
                embedding=embed_tsne(retrieval.descriptors[rows], seed=seed),
                xy=queries.xy,
                paths=queries.path,
                conditions=queries.condition,
            )
        )
    return panels


def tsne_figure(
    panels: Sequence[TsnePanel], ref_xy: np.ndarray, bounds: RegionBounds | None = None,
    point_size: float = 10.0,
) -> Figure:
    """The panels side by side, then the colour key (a map of ``ref_xy``)."""
    if not panels:
        raise ValueError("no t-SNE panel to draw: give at least one map")
    bounds = bounds or RegionBounds.around(ref_xy, *[panel.xy for panel in panels])
    columns = len(panels) + 1
    figure = Figure(figsize=(3.6 * columns, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=False):
        colors = position_colors(panel.xy, bounds)
        ax.scatter(panel.embedding[:, 0], panel.embedding[:, 1], c=colors, s=point_size,
                   linewidths=0)
        ax.set_title(f"{panel.name} ({len(panel.xy)} queries)")
        ax.set_xticks([])
        ax.set_yticks([])
    draw_color_key(axes[-1], ref_xy, bounds)
    figure.suptitle("t-SNE of query descriptors, coloured by position")
    return figure


def tsne_csv(panels: Sequence[TsnePanel], bounds: RegionBounds) -> str:
    """The numbers behind the picture: one row per model and query."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "path", "condition", "x", "y", "tsne_1", "tsne_2", "r", "g", "b"])
    for panel in panels:
        colors = position_colors(panel.xy, bounds)
        for i in range(len(panel.xy)):
            writer.writerow([
                panel.name, panel.paths[i], panel.conditions[i],
                f"{panel.xy[i, 0]:.3f}", f"{panel.xy[i, 1]:.3f}",
                f"{panel.embedding[i, 0]:.4f}", f"{panel.embedding[i, 1]:.4f}",
                *(f"{c:.4f}" for c in colors[i]),
            ])
    return buffer.getvalue()


def write_tsne(
    retrievals: Sequence[MapRetrieval],
    out: str | os.PathLike[str],
    max_points: int = 600,
    seed: int = 0,
    stem: str = "tsne",
) -> Path:
    """Write ``<stem>.png`` and ``<stem>.csv`` into ``out``; return the PNG path.

    The colour key shows the first map's references; the colour code spans the bounding box
    of those references and of every query drawn.
    """
    out = Path(out)
    panels = tsne_panels(retrievals, max_points=max_points, seed=seed)
    ref_xy = retrievals[0].the_map.places.xy
    bounds = RegionBounds.around(ref_xy, *[panel.xy for panel in panels])
    figure = tsne_figure(panels, ref_xy, bounds)
    write_text(out / f"{stem}.csv", tsne_csv(panels, bounds))
    return write_with(out / f"{stem}.png", lambda tmp: figure.savefig(tmp, format="png"))
