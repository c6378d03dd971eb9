"""`softloc localize` output: fixes as text, JSON or CSV, and the sequence-CSV input.

JSON is an array with one object per image, in the order given::

    {"image": "q1.png", "x": 12.5, "y": 3.0, "yaw": 1.57, "confidence": 0.41,
     "top_k": [{"path": "images/ref/00012.png", "x": 12.0, "y": 3.1, "distance": 0.52}, ...]}

An image that could not be localized has ``"error"`` (the reason) and null pose fields. CSV
has one row per image: ``image, x, y, yaw, confidence, top1_path, top1_distance, error``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from softloc.data.timestamps import ACCEPTED, parse_timestamp
from softloc.localizer import Fix

FORMATS: tuple[str, ...] = ("text", "json", "csv")
CSV_COLUMNS: tuple[str, ...] = (
    "image", "x", "y", "yaw", "confidence", "top1_path", "top1_distance", "error",
)

Outcome = Fix | tuple[str, str]  # a fix, or (image, reason) for an image that failed


def fix_text(fix: Fix) -> str:
    """Human-readable lines: the estimate with its confidence, then the references."""
    lines = [f"{fix.image}: x={fix.x:.2f} y={fix.y:.2f} yaw={np.rad2deg(fix.yaw):.1f}deg "
             f"confidence={fix.confidence:.3f}"]
    for rank, ref in enumerate(fix.top_k, start=1):
        lines.append(f"  {rank}. {ref.path}  x={ref.x:.2f} y={ref.y:.2f}  "
                     f"descriptor distance={ref.distance:.4f}")
    return "\n".join(lines)


def _failed(image: str, reason: str) -> dict:
    return {"image": image, "x": None, "y": None, "yaw": None, "confidence": None,
            "top_k": [], "error": reason}


def format_outcomes(outcomes: Sequence[Outcome], fmt: str) -> str:
    """All outcomes in one format (text lists failures as ``error:`` lines)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "text":
        return "\n".join(
            fix_text(o) if isinstance(o, Fix) else f"{o[0]}: error: {o[1]}" for o in outcomes
        ) + "\n"
    if fmt == "json":
        items = [o.to_dict() if isinstance(o, Fix) else _failed(*o) for o in outcomes]
        return json.dumps(items, indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for o in outcomes:
        if isinstance(o, Fix):
            top = o.top_k[0]
            writer.writerow([o.image, repr(o.x), repr(o.y), repr(o.yaw), repr(o.confidence),
                             top.path, repr(top.distance), ""])
        else:
            writer.writerow([o[0], "", "", "", "", "", "", o[1]])
    return buffer.getvalue()


def read_sequence_csv(path: str | os.PathLike[str]) -> tuple[list[Path], np.ndarray | None]:
    """Images and timestamps of a sequence CSV (columns ``image`` and optionally
    ``timestamp``, any form `prepare` accepts); relative image paths are relative to the CSV's
    folder. Rows are sorted by timestamp when every row has one, else kept in file order.

    Raises:
        ValueError: no ``image`` column, no rows, or a timestamp that cannot be parsed (the
            message names the file and the line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the sequence CSV ({error}); give a UTF-8 CSV "
                         "with columns image[,timestamp]") from error
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "image" not in fields:
        raise ValueError(f"{path}: no 'image' column (header: {reader.fieldnames}); give "
                         "columns image[,timestamp]")
    images, stamps = [], []
    for line, row in enumerate(reader, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        image = Path(row["image"])
        images.append(image if image.is_absolute() else path.parent / image)
        cell = row.get("timestamp", "")
        if cell:
            try:
                stamps.append(parse_timestamp(cell))
            except ValueError as error:
                raise ValueError(f"{path} line {line}: {error}; use {ACCEPTED}, or leave the "
                                 "cell empty to use the file order") from error
        else:
            stamps.append(None)
    if not images:
        raise ValueError(f"{path}: no rows")
    if any(s is None for s in stamps):
        return images, None
    order = np.argsort(np.asarray(stamps, dtype=np.float64), kind="stable")
    return [images[i] for i in order], np.asarray(stamps, dtype=np.float64)[order]
