"""Sensitivity sweep (the paper's Figure 4): influence function x tuple size, each trained with
the soft contrastive loss, evaluated as top-1 accuracy against the threshold (0-25 m), mean
over conditions.

Every point is a training run in ``OUT/runs/<influence>_<near>x<far>/`` (the Trainer's run
folder: config, logs, checkpoints, model) followed by its evaluation, written last as
``evaluation.json``. A run whose ``evaluation.json`` matches the configuration is skipped, a
run with a final model is only evaluated, and an interrupted run resumes from its last
checkpoint, so an interrupted sweep resumes where it stopped.

The runs train without the Trainer's own whitening (``model.whitening_dim`` is set to null):
the sweep refits PCA-whitening of ``protocol.dim`` on the held-out fit set for every model,
as the other sweeps do. An influence function takes its options from the base config when
the base config uses that function, else its defaults (15 m scale, as the authors).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from softloc.atomic import write_json
from softloc.config import RunConfig, config_from_dict, config_to_dict, load_config
from softloc.data.places import PlaceTable
from softloc.evaluation.metrics import DEFAULT_THRESHOLDS
from softloc.evaluation.report import threshold_key
from softloc.evaluation.whitening import (
    EvaluationSets,
    WhiteningProtocol,
    evaluation_sets,
    feasible_dim,
)
from softloc.launch import is_main
from softloc.sweeps.descriptors import CACHE_FOLDER, compute_raw_descriptors
from softloc.sweeps.dimension import evaluate_at_dim
from softloc.sweeps.outputs import format_sweep_table, write_sweep_files
from softloc.sweeps.plots import plot_lines
from softloc.train import FINAL_MODEL, Trainer

logger = logging.getLogger(__name__)

DEFAULT_INFLUENCES: tuple[str, ...] = ("sigmoid", "linear", "tanh")
DEFAULT_TUPLE_SIZES: tuple[tuple[int, int], ...] = ((4, 4), (8, 8), (12, 12))
EVALUATION_FILE = "evaluation.json"


def parse_tuple_size(text: str) -> tuple[int, int]:
    """``"8/8"`` -> (8, 8): near and far images per tuple."""
    try:
        near, far = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"tuple size {text!r} must look like NEAR/FAR, e.g. 8/8") from None
    if near < 1 or far < 1:
        raise ValueError(f"tuple size {text!r}: both counts must be >= 1")
    return near, far


def run_name(influence: str, near: int, far: int) -> str:
    """Folder name of one sweep point, e.g. ``sigmoid_8x8``."""
    return f"{influence}_{near}x{far}"


def point_config(
    base: RunConfig, influence: str, near: int, far: int, steps: int | None = None
) -> RunConfig:
    """The base configuration with the soft loss, this influence function and tuple size."""
    values = config_to_dict(base)
    if base.loss.influence != influence:
        values["loss"]["influence_options"] = {}
    values["loss"]["name"] = "soft_contrastive"
    values["loss"]["influence"] = influence
    values["tuples"]["n_near"] = int(near)
    values["tuples"]["n_far"] = int(far)
    values["model"]["whitening_dim"] = None
    if steps is not None:
        values["train"]["steps"] = int(steps)
    return config_from_dict(values)


def _finished(run_dir: Path, config: RunConfig, protocol: WhiteningProtocol) -> dict | None:
    """The stored evaluation of a finished run of exactly this configuration, or None."""
    try:
        stored = json.loads((run_dir / EVALUATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = stored.get("config") == config_to_dict(config)
    if not same or stored.get("protocol") != protocol.to_dict():
        return None
    return stored


def run_point(
    config: RunConfig,
    places: PlaceTable,
    sets: EvaluationSets,
    run_dir: Path,
    protocol: WhiteningProtocol,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) and evaluate one sweep point; returns its stored evaluation dict.

    Raises:
        ValueError: ``run_dir`` holds a run of another configuration (nothing is deleted).
    """
    stored = _finished(run_dir, config, protocol)
    if stored is not None:
        logger.info("%s: finished earlier, skipped", run_dir.name)
        return stored
    existing = run_dir / "config.yaml"
    if existing.is_file() and load_config(existing) != config:
        raise ValueError(
            f"{existing}: this folder holds a run with another configuration (different "
            "steps, base config or data); use another --out or remove that run folder"
        )
    model_path = run_dir / FINAL_MODEL
    if not model_path.is_file():
        Trainer(config, run_dir, places=places, progress=progress).run(resume=True)
    raw = compute_raw_descriptors(
        model_path, places, sets, run_dir / CACHE_FOLDER, progress=progress
    )
    dim = None if protocol.dim is None else feasible_dim(protocol.dim, len(raw.fit), raw.dim)
    results = evaluate_at_dim(raw, places, dim, thresholds=DEFAULT_THRESHOLDS)
    document = {
        "config": config_to_dict(config),
        "protocol": protocol.to_dict(),
        "whitening_dim": dim,
        "results": results,
    }
    if is_main():  # under torchrun rank 0 alone writes
        write_json(run_dir / EVALUATION_FILE, document)
    return document


def _mean_curve(results: dict[str, dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Top-1 curve averaged over conditions: (thresholds, values)."""
    curves = [metrics["curves"] for metrics in results.values()]
    values = np.mean([curve["top1"] for curve in curves], axis=0)
    return list(curves[0]["thresholds"]), values.tolist()


def run_sensitivity_sweep(
    config: RunConfig,
    places: PlaceTable,
    out: str | os.PathLike[str],
    influences: Sequence[str] = DEFAULT_INFLUENCES,
    tuple_sizes: Sequence[tuple[int, int]] = DEFAULT_TUPLE_SIZES,
    steps: int | None = None,
    split: str = "test",
    protocol: WhiteningProtocol | None = None,
    progress: bool = True,
) -> str:
    """Train and evaluate every influence x tuple size; write ``sweep_sensitivity.{csv,json,
    png}`` into ``out`` and return the Markdown table (mean over conditions).

    Args:
        config: the base training configuration (e.g. the ``demo`` preset).
        places: the dataset.
        out: the sweep folder; runs go to ``out/runs/<influence>_<near>x<far>/``.
        influences: influence function names (registered in :mod:`softloc.losses`).
        tuple_sizes: (near, far) images per tuple.
        steps: training steps of every run (default: the config's).
        split: evaluated split.
        protocol: whitening of the evaluation.
    """
    out = Path(out)
    protocol = protocol or WhiteningProtocol()
    if not influences or not tuple_sizes:
        raise ValueError("give at least one influence function and one tuple size")
    points = [(i, int(n), int(f)) for i in influences for n, f in tuple_sizes]
    configs = {p: point_config(config, *p, steps=steps) for p in points}  # validate all first
    sets = evaluation_sets(places, split, config.data.reference_traversal, protocol)
    rows = []
    curves: dict[str, tuple[list[float], list[float]]] = {}
    results: dict[str, Any] = {}
    for number, point in enumerate(points, start=1):
        name = run_name(*point)
        logger.info("sensitivity run %d/%d: %s", number, len(points), name)
        document = run_point(configs[point], places, sets, out / "runs" / name, protocol, progress)
        by_condition = document["results"]
        results[name] = by_condition
        row: dict[str, Any] = {"influence": point[0], "n_near": point[1], "n_far": point[2]}
        for threshold in DEFAULT_THRESHOLDS:
            key = threshold_key(threshold)
            row[f"top1@{key}m"] = float(np.mean([m["top1"][key] for m in by_condition.values()]))
        row["auc"] = float(np.mean([m["auc"] for m in by_condition.values()]))
        rows.append(row)
        curves[name] = _mean_curve(by_condition)
    metric_columns = [f"top1@{threshold_key(t)}m" for t in DEFAULT_THRESHOLDS] + ["auc"]
    columns = ["influence", "n_near", "n_far", *metric_columns]
    sweep_config = {
        "base_config": config_to_dict(config),
        "data": str(places.root),
        "influences": list(influences),
        "tuple_sizes": [f"{n}/{f}" for n, f in tuple_sizes],
        "steps": steps if steps is not None else config.train.steps,
        "split": split,
        "whitening": protocol.to_dict(),
    }
    curve_doc = {name: {"thresholds": x, "mean_top1": y} for name, (x, y) in curves.items()}
    paths = write_sweep_files(
        out, "sensitivity", columns, rows, sweep_config, {"curves": curve_doc, "results": results}
    )
    dashes = ["-", "--", ":", "-."]
    styles = {
        run_name(*p): {
            "color": f"C{list(influences).index(p[0]) % 10}",
            "linestyle": dashes[[tuple(s) for s in tuple_sizes].index((p[1], p[2])) % 4],
            "marker": None,
        }
        for p in points
    }
    plot_lines(
        curves,
        paths["png"],
        xlabel="distance threshold (m)",
        ylabel="top-1 accuracy, mean over conditions (%)",
        title="sensitivity: influence function x near/far images per tuple",
        styles=styles,
    )
    return format_sweep_table(columns, rows, percent=metric_columns)
