"""Line plots of sweeps (matplotlib, Agg canvas, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from softloc.atomic import write_with
from softloc.launch import is_main


def plot_lines(
    lines: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike[str],
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    log2_x: bool = False,
    styles: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """One line per label, values given as shares in [0, 1] and drawn in percent.

    Args:
        lines: ``{label: (x, y)}``.
        path: output PNG.
        xlabel, ylabel, title: axis labels and title.
        log2_x: logarithmic x axis in base 2 with the x values as ticks (dimensions).
        styles: optional matplotlib keyword arguments per label (colour, linestyle, marker).

    Raises:
        ValueError: no lines, or a line whose x and y differ in length.
    """
    if not lines:
        raise ValueError("nothing to plot: give at least one line")
    if not is_main():  # under torchrun rank 0 alone writes the sweep's files
        return Path(path)
    figure = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ticks: set[float] = set()
    for slot, (label, (x, y)) in enumerate(lines.items()):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"line {label!r}: x {x.shape} and y {y.shape} must match")
        style = {"marker": "o", "color": f"C{slot % 10}", "linewidth": 1.6}
        style.update((styles or {}).get(label, {}))
        ax.plot(x, 100.0 * y, label=str(label), **style)
        ticks.update(x.tolist())
    if log2_x:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 102.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    return write_with(path, lambda tmp: figure.savefig(tmp, format="png"))
