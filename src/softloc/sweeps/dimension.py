"""Feature-dimension sweep (the paper's supplementary Figure 1): top-1 accuracy at 10 m per
condition against the size of the PCA-whitened descriptor.

The raw pooled descriptors are computed once (:mod:`softloc.sweeps.descriptors`); the
whitening is fitted once, at the largest size, on the held-out fit set
(:mod:`softloc.evaluation.whitening`), each smaller size truncates it (exactly a refit) and
searches exactly. Sizes above ``min(D, N_fit - 1)`` cannot be fitted and are skipped (listed
in the JSON with the reason), as are sizes above the numerical rank of the fit descriptors
(NetVLAD's intra-normalisation makes that rank lower than D).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from softloc.data.places import PlaceTable
from softloc.evaluation.metrics import DEFAULT_THRESHOLDS
from softloc.evaluation.report import threshold_key
from softloc.evaluation.whitening import (
    WhiteningProtocol,
    evaluate_descriptors,
    feasible_dim,
    fit_whitening,
    whiten,
)
from softloc.models.whitening import PCAWhitening
from softloc.sweeps.descriptors import RawDescriptors, sweep_descriptors
from softloc.sweeps.outputs import format_sweep_table, write_sweep_files
from softloc.sweeps.plots import plot_lines

logger = logging.getLogger(__name__)

DEFAULT_DIMS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
#: The threshold of the sweeps' tables (metres), as in the paper's figures.
SWEEP_THRESHOLD_M = 10.0


def thresholds_with(threshold: float) -> list[float]:
    """The table thresholds plus ``threshold`` (once)."""
    return sorted(set(DEFAULT_THRESHOLDS) | {float(threshold)})


def top1_row(results: dict[str, dict[str, Any]], threshold: float) -> dict[str, float]:
    """``{condition: top-1 at threshold, ..., "mean": mean over conditions}``."""
    key = threshold_key(threshold)
    row = {condition: float(metrics["top1"][key]) for condition, metrics in results.items()}
    row["mean"] = float(np.mean(list(row.values())))
    return row


def evaluate_at_dim(
    raw: RawDescriptors,
    places: PlaceTable,
    dim: int | None,
    reference_subset: np.ndarray | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    fitted: PCAWhitening | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics per condition with whitening of size ``dim`` (None: raw descriptors) fitted on
    ``raw.fit`` only; references restricted to positions ``reference_subset`` if given.

    ``fitted``: a whitening already fitted on ``raw.fit`` to at least ``dim`` (truncated to
    ``dim``, which equals a fresh fit) so that a sweep decomposes the fit set only once.
    """
    if dim is None:
        whitening = None
    elif fitted is not None:
        whitening = fitted.truncated(dim)
    else:
        whitening = fit_whitening(raw.fit, dim)
    refs = raw.sets.references
    ref_desc = raw.references
    if reference_subset is not None:
        refs, ref_desc = refs[reference_subset], ref_desc[reference_subset]
    queries = raw.sets.queries
    return evaluate_descriptors(
        whiten(whitening, ref_desc),
        places.xy[refs],
        whiten(whitening, raw.queries),
        places.xy[queries],
        places.condition[queries],
        thresholds,
    )


def run_dimension_sweep(
    model_path: str | os.PathLike[str],
    places: PlaceTable,
    out: str | os.PathLike[str],
    dims: Sequence[int] = DEFAULT_DIMS,
    split: str = "test",
    reference_traversal: str = "reference",
    protocol: WhiteningProtocol | None = None,
    threshold: float = SWEEP_THRESHOLD_M,
    progress: bool = True,
) -> str:
    """Top-1 accuracy at ``threshold`` per condition for each whitened size; writes
    ``sweep_dimension.{csv,json,png}`` into ``out`` and returns the Markdown table.

    Raises:
        ValueError: no size can be fitted (all above ``min(D, N_fit - 1)``), bad sets.
    """
    out = Path(out)
    protocol = protocol or WhiteningProtocol()
    if not dims or any(int(d) < 1 for d in dims):
        raise ValueError(f"dims must be positive sizes, got {list(dims)}")
    raw = sweep_descriptors(
        model_path, places, out, split, reference_traversal, protocol, progress
    )
    cap = feasible_dim(max(int(d) for d in dims), len(raw.fit), raw.dim)
    skipped = {
        str(d): f"above min(D={raw.dim}, N_fit - 1={len(raw.fit) - 1})"
        for d in dims
        if int(d) > cap
    }
    kept = [int(d) for d in dims if int(d) <= cap]
    if not kept:
        raise ValueError(
            f"no size in {list(dims)} fits: descriptors have D={raw.dim} and the fit set "
            f"{len(raw.fit)} images; use smaller sizes or a larger fit set"
        )
    for dim, reason in skipped.items():
        logger.warning("dimension %s skipped: %s", dim, reason)
    thresholds = thresholds_with(threshold)
    # One fit at the largest size the fit descriptors' rank allows; smaller sizes truncate it.
    fitted = None
    for dim in sorted(kept, reverse=True):
        try:
            fitted = fit_whitening(raw.fit, dim)
            break
        except ValueError as error:  # above the numerical rank of the fit descriptors
            logger.warning("dimension %d skipped: %s", dim, error)
            skipped[str(dim)] = str(error)
    kept = [dim for dim in kept if str(dim) not in skipped]
    results: dict[str, Any] = {}
    rows = []
    for dim in tqdm(list(kept), desc="dimension sweep", disable=not progress, unit="dim"):
        results[str(dim)] = evaluate_at_dim(
            raw, places, dim, thresholds=thresholds, fitted=fitted
        )
        rows.append({"dim": dim, **top1_row(results[str(dim)], threshold)})
    if not rows:
        raise ValueError(f"no size in {list(dims)} could be fitted: {skipped}")
    conditions = list(results[str(kept[0])])
    columns = ["dim", *conditions, "mean"]
    config = {
        "model": str(model_path),
        "data": str(places.root),
        "split": split,
        "reference_traversal": reference_traversal,
        "dims": [int(d) for d in dims],
        "threshold_m": threshold,
        "whitening": replace(protocol, dim=None).to_dict(),
        "num_fit": len(raw.fit),
        "num_references": len(raw.sets.references),
        "num_queries": len(raw.sets.queries),
        "raw_dim": raw.dim,
    }
    paths = write_sweep_files(
        out, "dimension", columns, rows, config, {"skipped": skipped, "results": results}
    )
    lines = {c: (kept, [row[c] for row in rows]) for c in [*conditions, "mean"]}
    plot_lines(
        lines,
        paths["png"],
        xlabel="descriptor dimension after PCA-whitening",
        ylabel=f"top-1 accuracy at {threshold:g} m (%)",
        title=f"{Path(model_path).parent.name or Path(model_path).name}: feature dimension",
        log2_x=True,
        styles={"mean": {"color": "k", "linestyle": "--"}},
    )
    return format_sweep_table(columns, rows, percent=[*conditions, "mean"])
