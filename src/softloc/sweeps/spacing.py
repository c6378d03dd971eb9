"""Reference-spacing sweep (the paper's Figure 2): top-1 accuracy at 10 m per condition when
the reference drive is subsampled so that consecutive references lie at least ``l`` metres
apart (:func:`softloc.data.tuples.subsample_by_spacing`, as ``softloc map build --spacing``).

Descriptors are computed once for every reference; each spacing selects a subset of them.
The whitening (size ``protocol.dim``) is fitted once, on the held-out fit set, so it is the
same for every spacing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from softloc.data.places import PlaceTable
from softloc.evaluation.report import threshold_key
from softloc.evaluation.whitening import (
    WhiteningProtocol,
    evaluate_descriptors,
    feasible_dim,
    fit_whitening,
    spaced_references,
    whiten,
)
from softloc.sweeps.descriptors import sweep_descriptors
from softloc.sweeps.dimension import SWEEP_THRESHOLD_M, thresholds_with, top1_row
from softloc.sweeps.outputs import format_sweep_table, write_sweep_files
from softloc.sweeps.plots import plot_lines

logger = logging.getLogger(__name__)

DEFAULT_SPACINGS: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0)


def run_spacing_sweep(
    model_path: str | os.PathLike[str],
    places: PlaceTable,
    out: str | os.PathLike[str],
    spacings: Sequence[float] = DEFAULT_SPACINGS,
    split: str = "test",
    reference_traversal: str = "reference",
    protocol: WhiteningProtocol | None = None,
    threshold: float = SWEEP_THRESHOLD_M,
    progress: bool = True,
) -> str:
    """Top-1 accuracy at ``threshold`` per condition for each reference spacing; writes
    ``sweep_spacing.{csv,json,png}`` into ``out`` and returns the Markdown table.

    The whitening size is ``protocol.dim`` lowered to what the fit set allows (recorded as
    ``whitening_dim`` in the JSON); ``protocol.dim=None`` evaluates raw descriptors.
    """
    out = Path(out)
    protocol = protocol or WhiteningProtocol()
    if not spacings or any(float(s) < 0 for s in spacings):
        raise ValueError(f"spacings must be >= 0 metres, got {list(spacings)}")
    raw = sweep_descriptors(
        model_path, places, out, split, reference_traversal, protocol, progress
    )
    dim = protocol.dim
    if dim is not None:
        dim = feasible_dim(dim, len(raw.fit), raw.dim)
        if dim < protocol.dim:
            logger.warning("whitening to %d dims instead of %d (fit set too small)", dim,
                           protocol.dim)
    whitening = None if dim is None else fit_whitening(raw.fit, dim)
    ref_desc = whiten(whitening, raw.references)
    query_desc = whiten(whitening, raw.queries)
    queries = raw.sets.queries
    thresholds = thresholds_with(threshold)
    key = threshold_key(threshold)
    results: dict[str, Any] = {}
    rows = []
    for spacing in tqdm(spacings, desc="spacing sweep", disable=not progress, unit="spacing"):
        keep = spaced_references(places, raw.sets.references, float(spacing))
        refs = raw.sets.references[keep]
        by_condition = evaluate_descriptors(
            ref_desc[keep],
            places.xy[refs],
            query_desc,
            places.xy[queries],
            places.condition[queries],
            thresholds,
        )
        results[f"{float(spacing):g}"] = by_condition
        bound = np.mean([m["upper_bound"][key] for m in by_condition.values()])
        rows.append(
            {
                "spacing_m": float(spacing),
                "references": int(len(keep)),
                **top1_row(by_condition, threshold),
                "upper_bound": float(bound),
            }
        )
    conditions = list(results[f"{float(spacings[0]):g}"])
    columns = ["spacing_m", "references", *conditions, "mean", "upper_bound"]
    config = {
        "model": str(model_path),
        "data": str(places.root),
        "split": split,
        "reference_traversal": reference_traversal,
        "spacings_m": [float(s) for s in spacings],
        "threshold_m": threshold,
        "whitening": protocol.to_dict(),
        "whitening_dim": dim,
        "num_fit": len(raw.fit),
        "num_queries": len(queries),
        "raw_dim": raw.dim,
    }
    paths = write_sweep_files(out, "spacing", columns, rows, config, {"results": results})
    x = [row["spacing_m"] for row in rows]
    lines = {c: (x, [row[c] for row in rows]) for c in [*conditions, "mean", "upper_bound"]}
    plot_lines(
        lines,
        paths["png"],
        xlabel="minimum spacing of consecutive references (m)",
        ylabel=f"top-1 accuracy at {threshold:g} m (%)",
        title=f"{Path(model_path).parent.name or Path(model_path).name}: reference spacing",
        styles={
            "mean": {"color": "k", "linestyle": "--"},
            "upper_bound": {"color": "0.5", "linestyle": ":", "marker": "x"},
        },
    )
    return format_sweep_table(columns, rows, percent=[*conditions, "mean", "upper_bound"])
