"""Margin-ambiguity check (the paper's Proposition 3.3): the margin descriptors achieve
between a positive radius tau1 and a negative radius tau2, as the gap tau2 - tau1 shrinks.

Problem 3.2 of the paper asks for descriptors f with, for every anchor x, every positive p
(metric distance ``d(x, p) <= tau1``) and every negative n (``d(x, n) > tau2``)::

    ||f(x) - f(p)|| + alpha <= ||f(x) - f(n)||.

The largest alpha a given set of descriptors satisfies is, over the anchors,

    alpha* = min_x ( min_n ||f(x) - f(n)|| - max_p ||f(x) - f(p)|| ),

the minimum of the anchors' own margins. Proposition 3.3 (supplementary material) says that
for any continuous f, alpha* must go to 0 as tau2 - tau1 goes to 0: a place at tau1 and one
just beyond tau2 look almost alike, yet must be a margin apart. :func:`anchor_margins` computes
the margins, :func:`summarise_margins` alpha*, the median and the share of *violating*
anchors, those whose own margin is <= 0 (some negative is at least as close in descriptor
space as some positive, so no alpha > 0 holds for them). :func:`run_margin_sweep` does it for
several models over gaps around a centre radius and writes ``sweep_margin.{csv,json,png}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from softloc.atomic import write_with
from softloc.data.places import PlaceTable
from softloc.launch import is_main
from softloc.output_folders import claim_output_folder
from softloc.sweeps.outputs import format_sweep_table, write_sweep_files

logger = logging.getLogger(__name__)

DEFAULT_GAPS: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)
DEFAULT_CENTRE = 15.0
DEFAULT_ANCHORS = 200
WITHIN = ("traversal", "all")
COLUMNS = (
    "model", "gap_m", "tau1_m", "tau2_m", "achieved_margin", "median_margin",
    "violating_share", "anchors_used", "anchors_skipped",
)


def anchor_margins(
    descriptors: np.ndarray,
    positions: np.ndarray,
    anchors: Sequence[int] | np.ndarray,
    tau1: float,
    tau2: float,
    groups: Sequence[object] | np.ndarray | None = None,
) -> np.ndarray:
    """Each anchor's margin: nearest negative's minus farthest positive's descriptor distance.

    Args:
        descriptors: (N, D) descriptors; distances between them are Euclidean.
        positions: (N, 2) (or (N, k)) camera positions in metres.
        anchors: indices into the N images.
        tau1: positives are the other images within ``tau1`` metres (``<=``) of the anchor.
        tau2: negatives are the images farther than ``tau2`` metres (``>``); ``tau2 >= tau1``.
        groups: optional (N,) labels (e.g. traversals); positives and negatives are then
            taken only among the images of the anchor's own group.

    Returns:
        (len(anchors),) float64 margins; NaN for an anchor without a positive or a negative.

    Raises:
        ValueError: shapes that do not match, or ``tau2 < tau1`` or ``tau1 < 0``.
    """
    descriptors = np.asarray(descriptors, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    anchors = np.asarray(anchors, dtype=np.int64)
    if descriptors.ndim != 2 or positions.ndim != 2 or len(descriptors) != len(positions):
        raise ValueError(
            f"descriptors (N, D) and positions (N, 2) must have one row per image, got "
            f"{descriptors.shape} and {positions.shape}"
        )
    if not 0.0 <= tau1 <= tau2:
        raise ValueError(f"need 0 <= tau1 <= tau2 (metres), got tau1={tau1}, tau2={tau2}")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(descriptors),):
            raise ValueError(f"groups must have one label per image, got {groups.shape}")
    margins = np.full(len(anchors), np.nan)
    for k, anchor in enumerate(anchors):
        metres = np.linalg.norm(positions - positions[anchor], axis=1)
        apart = np.linalg.norm(descriptors - descriptors[anchor], axis=1)
        candidate = np.ones(len(metres), dtype=bool) if groups is None else (
            groups == groups[anchor]
        )
        positive = candidate & (metres <= tau1)
        positive[anchor] = False
        negative = candidate & (metres > tau2)
        if positive.any() and negative.any():
            margins[k] = apart[negative].min() - apart[positive].max()
    return margins


def summarise_margins(margins: np.ndarray) -> dict[str, float | int | None]:
    """alpha* (the minimum), the median, the share of violating anchors (margin <= 0) among
    the anchors that have a positive and a negative, and how many were used and skipped."""
    margins = np.asarray(margins, dtype=np.float64)
    used = margins[~np.isnan(margins)]
    if len(used) == 0:  # None, not NaN: the JSON stays standard
        return {"achieved_margin": None, "median_margin": None, "violating_share": None,
                "anchors_used": 0, "anchors_skipped": int(len(margins))}
    return {
        "achieved_margin": float(used.min()),
        "median_margin": float(np.median(used)),
        "violating_share": float(np.mean(used <= 0.0)),
        "anchors_used": int(len(used)),
        "anchors_skipped": int(len(margins) - len(used)),
    }


def radii(gap: float, centre: float) -> tuple[float, float]:
    """(tau1, tau2) = (centre - gap / 2, centre + gap / 2)."""
    return centre - 0.5 * gap, centre + 0.5 * gap


def margin_rows(
    descriptors: Mapping[str, np.ndarray],
    positions: np.ndarray,
    anchors: np.ndarray,
    gaps: Sequence[float],
    centre: float,
    groups: Sequence[object] | np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One row per (model, gap): the radii and :func:`summarise_margins` of the anchors."""
    rows = []
    for name, values in descriptors.items():
        for gap in gaps:
            tau1, tau2 = radii(float(gap), centre)
            margins = anchor_margins(values, positions, anchors, tau1, tau2, groups)
            summary = summarise_margins(margins)
            rows.append({"model": name, "gap_m": float(gap), "tau1_m": tau1, "tau2_m": tau2,
                         **summary})
    return rows


def plot_margins(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                 title: str | None = None) -> Path:
    """Left: achieved margin alpha* (solid) and median anchor margin (dashed) against the gap,
    one colour per model, with the 0 line; right: the share of violating anchors."""
    if not is_main():  # under torchrun rank 0 alone writes the sweep's files
        return Path(path)
    figure = Figure(figsize=(10.0, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    models = list(dict.fromkeys(row["model"] for row in rows))
    for slot, model in enumerate(models):
        mine = [row for row in rows if row["model"] == model]
        x = [row["gap_m"] for row in mine]
        colour = f"C{slot % 10}"
        left.plot(x, [row["achieved_margin"] for row in mine], marker="o", color=colour,
                  label=f"{model}: min over anchors")
        left.plot(x, [row["median_margin"] for row in mine], marker=".", color=colour,
                  linestyle="--", label=f"{model}: median")
        right.plot(x, [100.0 * row["violating_share"] for row in mine], marker="o",
                   color=colour, label=model)
    left.axhline(0.0, color="k", linewidth=0.8)
    left.set_xlabel("gap tau2 - tau1 (m)")
    left.set_ylabel("descriptor margin (L2 distance)")
    left.grid(True, alpha=0.3)
    left.legend(fontsize="x-small", loc="best")
    right.set_xlabel("gap tau2 - tau1 (m)")
    right.set_ylabel("anchors with margin <= 0 (%)")
    right.set_ylim(0.0, 102.0)
    right.grid(True, alpha=0.3)
    right.legend(fontsize="small", loc="best")
    if title:
        figure.suptitle(title)
    return write_with(path, lambda tmp: figure.savefig(tmp, format="png"))


def sample_anchors(places: PlaceTable, split: str, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` rows of ``split`` drawn without replacement (sorted), reproducibly."""
    pool = np.flatnonzero(places.split == split)
    if len(pool) == 0:
        raise ValueError(f"{places.root}: no images in split '{split}'")
    if count >= len(pool):
        return pool
    rng = np.random.default_rng([seed, 33])
    return np.sort(rng.choice(pool, count, replace=False))


def model_descriptors(model_path: str | os.PathLike[str], places: PlaceTable,
                      rows: np.ndarray, progress: bool = True) -> np.ndarray:
    """The model's descriptors (whitening included, as a map uses them) of ``rows``."""
    from softloc.extract import extract_over_ranks, image_store
    from softloc.models import load_model

    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model file; train one with softloc train")
    model, _ = load_model(model_path)
    store = image_store(model, [places.image_path(int(i)) for i in rows])
    # under torchrun split over the ranks, every rank gets every row in row order
    return extract_over_ranks(model, store, progress=progress, desc=model_path.parent.name)


def run_margin_sweep(
    models: Mapping[str, str | os.PathLike[str]],
    places: PlaceTable,
    out: str | os.PathLike[str],
    gaps: Sequence[float] = DEFAULT_GAPS,
    centre: float = DEFAULT_CENTRE,
    num_anchors: int = DEFAULT_ANCHORS,
    split: str = "test",
    seed: int = 0,
    within: str = "traversal",
    progress: bool = True,
) -> str:
    """Margins of several models over the gaps; writes ``sweep_margin.{csv,json,png}``.

    The images of ``split`` (every traversal) are described once per model; the same
    ``num_anchors`` anchors, drawn among them, serve every model and gap. Positives and
    negatives are the images of the anchor's own traversal (``within="traversal"``, the
    default: the proposition's setting, one continuous drive, no change of condition) or of
    every traversal of the split (``within="all"``: cross-condition positives then dominate
    the farthest positive).

    Raises:
        ValueError: no models, a negative gap, a gap wider than twice the centre, or a split
            without images; FileNotFoundError: a model file is missing.
    """
    if not models:
        raise ValueError("give at least one model (--model NAME=PATH)")
    if not gaps or any(float(g) < 0 or float(g) > 2 * centre for g in gaps):
        raise ValueError(f"gaps must lie in [0, 2 x centre = {2 * centre:g}] m, got {list(gaps)}")
    if num_anchors < 1:
        raise ValueError(f"the number of anchors must be >= 1, got {num_anchors}")
    if within not in WITHIN:
        raise ValueError(f"within must be one of {', '.join(WITHIN)}; got {within!r}")
    claim_output_folder(out, "sweep")
    pool = np.flatnonzero(places.split == split)
    anchors_rows = sample_anchors(places, split, num_anchors, seed)
    anchors = np.searchsorted(pool, anchors_rows)
    positions = places.xy[pool]
    descriptors = {
        name: model_descriptors(path, places, pool, progress) for name, path in models.items()
    }
    groups = places.traversal[pool] if within == "traversal" else None
    rows = margin_rows(descriptors, positions, anchors, gaps, centre, groups)
    config = {
        "models": {name: str(path) for name, path in models.items()},
        "data": str(places.root),
        "split": split,
        "gaps_m": [float(g) for g in gaps],
        "centre_m": centre,
        "num_anchors": int(len(anchors)),
        "num_images": int(len(pool)),
        "seed": seed,
        "within": within,
        "violating": "anchors whose own margin (nearest negative minus farthest positive "
        "descriptor distance) is <= 0, among anchors with a positive and a negative",
    }
    paths = write_sweep_files(Path(out), "margin", COLUMNS, rows, config)
    plot_margins(rows, paths["png"], title=f"margin against the gap around {centre:g} m "
                 f"({split}, {len(anchors)} anchors, within {within})")
    return format_sweep_table(COLUMNS, rows, percent=["violating_share"])


def parse_model_arguments(values: Sequence[str]) -> dict[str, Path]:
    """``NAME=PATH`` (or a bare ``PATH``, named after its folder) -> ``{name: path}``.

    Raises:
        ValueError: a name given twice.
    """
    models: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).parent.name or Path(value).stem, value
        if name in models:
            raise ValueError(f"model name {name!r} given twice; name them NAME=PATH")
        models[name] = Path(path)
    return models
