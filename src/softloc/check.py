"""Check the images of a dataset before they are needed, and say which places.csv line is bad.

Two depths:

- `check_images` (``softloc check --data D``) decodes every image fully, as training and map
  building will, and reports every file that fails;
- `header_check` (run by the Trainer before step 1) only opens each file's header, verifies a
  PNG's chunk checksums and a JPEG's end marker (decoding just the JPEGs that lack it), so a
  missing, empty, truncated or foreign file stops training at the start, not at the step that
  first samples it.

Every problem names the image and its line in ``places.csv`` (line 1 is the header).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from softloc.data.images import load_image
from softloc.data.places import PLACES_FILE, PlaceTable

_JPEG_TAIL = 1024  # bytes at the end of a JPEG searched for its end-of-image marker


@dataclass(frozen=True)
class ImageProblem:
    """One image that cannot be used."""

    path: str
    line: int | None
    reason: str

    def describe(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path}: {self.reason}"


def places_lines(root: str | os.PathLike[str]) -> dict[str, int]:
    """Relative image path -> its line number in ``root/places.csv`` (empty if unreadable).

    Counted by the CSV reader, so quoted fields holding line breaks and blank lines are
    numbered as an editor shows them.
    """
    path = Path(root) / PLACES_FILE
    lines: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if "path" not in header:
                return {}
            column = header.index("path")
            start = reader.line_num
            for row in reader:
                if len(row) > column:
                    lines.setdefault(row[column].strip(), start + 1)
                start = reader.line_num
    except OSError:
        return {}
    return lines


def _decode(path: Path) -> str | None:
    """None when the image decodes fully, else why not."""
    try:
        load_image(path)
    except Exception as error:  # noqa: BLE001 - PIL raises many types; each is a bad file
        return _reason(error, path)
    return None


def _header(path: Path) -> str | None:
    """None when the image's header (and PNG checksums / JPEG end marker) look sound."""
    try:
        size = path.stat().st_size
    except OSError:
        return "image not found"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as image:
            width, height = image.size
            kind = image.format
            if width < 1 or height < 1:
                return f"image has no pixels ({width}x{height})"
            if kind == "PNG":
                image.verify()
    except Exception as error:  # noqa: BLE001 - PIL raises many types; each is a bad file
        return f"not a readable image ({error})"
    if kind == "JPEG":
        with path.open("rb") as handle:
            handle.seek(max(0, size - _JPEG_TAIL))
            if b"\xff\xd9" not in handle.read():
                return _decode(path)  # no end marker: only a full decode can tell
    return None


def _reason(error: Exception, path: Path) -> str:
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _run(
    places: PlaceTable,
    rows: Sequence[int] | np.ndarray | None,
    test: Callable[[Path], str | None],
    workers: int | None,
) -> list[ImageProblem]:
    indices = range(len(places)) if rows is None else [int(i) for i in rows]
    indices = sorted(set(indices))
    lines = places_lines(places.root)
    paths = [places.image_path(i) for i in indices]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(test, paths, chunksize=64))
    problems = []
    for index, reason in zip(indices, reasons, strict=True):
        if reason is not None:
            relative = str(places.path[index])
            problems.append(ImageProblem(relative, lines.get(relative), reason))
    return problems


def check_images(
    places: PlaceTable, rows: Sequence[int] | None = None, workers: int | None = None
) -> list[ImageProblem]:
    """Decode every image (or those of ``rows``); return one problem per bad file."""
    return _run(places, rows, _decode, workers)


def header_check(
    places: PlaceTable, rows: Sequence[int] | np.ndarray | None = None, workers: int | None = None
) -> list[ImageProblem]:
    """The fast check of every image (or those of ``rows``); one problem per bad file."""
    return _run(places, rows, _header, workers)


def describe_problems(problems: Sequence[ImageProblem], places: PlaceTable, limit: int = 20) -> str:
    """A multi-line listing: which places.csv, then one line per bad image (up to ``limit``)."""
    shown = [f"  {p.describe()}" for p in problems[:limit]]
    if len(problems) > limit:
        shown.append(f"  ... and {len(problems) - limit} more (softloc check lists them all)")
    return "\n".join([f"{Path(places.root) / PLACES_FILE}:", *shown])


def bad_images_message(problems: Sequence[ImageProblem], places: PlaceTable) -> str:
    """The error of a training run that met bad images before step 1."""
    return (
        f"{len(problems)} image(s) of the dataset cannot be read, so training did not start "
        f"(nothing was written):\n{describe_problems(problems, places)}\nReplace those files or "
        f"drop their rows from places.csv; `softloc check --data {places.root}` decodes every "
        "image"
    )


def with_places_line(message: str, places: PlaceTable) -> str:
    """``message`` (an image error naming a file) with that file's places.csv line added."""
    lines = places_lines(places.root)
    for relative, line in lines.items():
        absolute = str(Path(places.root) / relative)
        if message.startswith(f"{absolute}:"):
            return f"{Path(places.root) / PLACES_FILE}, line {line}: {message}"
    return message
