"""Files of a sweep: ``sweep_<kind>.csv`` (the table), ``sweep_<kind>.json`` (table, config
and the full metrics of every point) and ``sweep_<kind>.png`` (the plot), written atomically.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from softloc.atomic import write_json, write_text
from softloc.launch import is_main


def sweep_paths(out: str | os.PathLike[str], kind: str) -> dict[str, Path]:
    """The three files of sweep ``kind`` in folder ``out``."""
    out = Path(out)
    return {suffix: out / f"sweep_{kind}.{suffix}" for suffix in ("csv", "json", "png")}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_sweep_files(
    out: str | os.PathLike[str],
    kind: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``sweep_<kind>.csv`` and ``sweep_<kind>.json``; return the paths (png included).

    The JSON holds ``kind``, ``config`` (everything needed to rerun the sweep), ``columns``,
    ``rows`` and whatever ``extra`` adds (e.g. the full metrics of each point).
    """
    paths = sweep_paths(out, kind)
    if not is_main():  # under torchrun every rank holds the table; rank 0 alone writes it
        return paths
    paths["csv"].parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column, "")) for column in columns])
    write_text(paths["csv"], buffer.getvalue())
    document = {"kind": kind, "config": dict(config), "columns": list(columns), "rows": list(rows)}
    document.update(extra or {})
    write_json(paths["json"], document)
    return paths


def format_sweep_table(
    columns: Sequence[str], rows: Sequence[Mapping[str, Any]], percent: Sequence[str] = ()
) -> str:
    """A Markdown table of the rows; columns in ``percent`` (shares) shown in percent."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if column in percent and isinstance(value, float):
                cells.append(f"{100.0 * value:.1f}")
            else:
                cells.append(_cell(value) if not isinstance(value, float) else f"{value:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
