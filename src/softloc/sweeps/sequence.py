"""`softloc sweep sequence`: top-1 accuracy at 10 m against the sequence length L.

Each map is evaluated once (its queries described once); the sequence filter then runs over
every query drive with windows of L frames for each L (:mod:`softloc.evaluation.sequences`),
L = 1 being single-image retrieval. Writes ``sweep_sequence.{csv,json,png}``: one line per
model and condition.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from softloc.data.places import PlaceTable
from softloc.evaluation.protocol import evaluate_map
from softloc.evaluation.sequences import DEFAULT_LENGTHS
from softloc.output_folders import claim_output_folder
from softloc.sweeps.outputs import format_sweep_table, write_sweep_files
from softloc.sweeps.plots import plot_lines

KIND = "sequence"
COLUMNS = ("model", "condition", "length", "top1_10m")


def run_sequence_sweep(
    maps: Mapping[str, str | os.PathLike[str]],
    places: PlaceTable,
    out: str | os.PathLike[str],
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    split: str = "test",
    threshold: float = 10.0,
    progress: bool = True,
) -> str:
    """Accuracy against L for each map and condition; return the Markdown table."""
    if not maps:
        raise ValueError("give at least one map")
    if not lengths or min(lengths) < 1:
        raise ValueError(f"sequence lengths must be >= 1, got {list(lengths)}")
    claim_output_folder(out, "sweep")
    key = f"{threshold:g}"
    rows, lines, metrics = [], {}, {}
    for name, folder in maps.items():
        results = evaluate_map(folder, places, split=split, progress=progress,
                               thresholds=(threshold,), sequence_lengths=lengths)
        metrics[name] = results
        for condition, values in results.items():
            ys = [values[f"top1_seq{length}"][key] for length in lengths]
            lines[f"{name} / {condition}"] = (list(lengths), ys)
            rows.extend({"model": name, "condition": condition, "length": int(length),
                         "top1_10m": y} for length, y in zip(lengths, ys, strict=True))
    config = {"maps": {k: str(Path(v)) for k, v in maps.items()}, "lengths": list(lengths),
              "split": split, "threshold_m": threshold}
    paths = write_sweep_files(out, KIND, COLUMNS, rows, config, {"metrics": metrics})
    plot_lines(lines, paths["png"], xlabel="sequence length L (frames)",
               ylabel=f"top-1 accuracy at {key} m (%)", title="sequence localization",
               log2_x=True)
    return format_sweep_table(COLUMNS, rows, percent=("top1_10m",))
