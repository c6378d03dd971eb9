"""What a reader found wrong or left out, counted and listed, and what it returns.

Readers never stop on one bad row: each row they cannot use becomes a :class:`Problem`
(missing image, row without a position, duplicate timestamp, ...) and is dropped. Rows left out
on purpose (an excluded drive, a reference frame thinned by spacing) are recorded the same way
with a ``filter`` kind, so the report accounts for every row of the source.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from softloc.data.places import PlaceTable

#: Kinds of problems, with what they mean for the user. Readers use only these kinds.
PROBLEM_KINDS: dict[str, str] = {
    "missing_image": "image listed in the metadata but not on disk",
    "unreadable_image": "image file present but it cannot be decoded",
    "no_position": "row without a usable position (NaN, empty, or outside the INS time span)",
    "duplicate_timestamp": "timestamp repeated within one traversal; the later row is dropped",
    "unexpected_zone": "coordinates outside the expected UTM zone or area of the dataset",
    "ins_not_good": "a neighbouring INS row is not INS_SOLUTION_GOOD (RobotCar)",
    "missing_metadata": "a drive or folder lacks a metadata file (timestamps, ins.csv, CSVs)",
    "bad_row": "row or file name that cannot be parsed (e.g. an empty image path)",
    "bad_timestamp": "timestamp that is neither epoch seconds/ms/us nor ISO-8601 (or empty)",
    "bad_yaw": "yaw or heading that is not a finite number (or empty)",
    "duplicate_image": "image listed again at the same place; the first row is kept",
    "conflicting_positions": "image listed at positions more than 1 m apart; all its rows dropped",
    "image_too_large": "image over Pillow's decompression-bomb limit (2 x MAX_IMAGE_PIXELS)",
}
#: Rows left out on purpose by an option; counted, not errors.
FILTER_KINDS: dict[str, str] = {
    "excluded_drive": "drive on the exclusion list",
    "unlisted_drive": "drive not in the configuration's list of drives",
    "outside_regions": "position outside every train/val/test polygon",
    "subsampled": "reference frame closer than the spacing to the previous kept frame",
    "far_from_queries": "database image farther than the limit from every query (Pittsburgh)",
    "not_pitch1": "Pittsburgh view with pitch 2 (kept: pitch 1 only)",
    "panorama": "MSLS panorama (skipped, as in the MSLS tools)",
}


class DatasetError(ValueError):
    """Nothing sensible can be read; the message names the file and what to do."""


@dataclass(frozen=True)
class Problem:
    """One row or file that was dropped, and why."""

    kind: str
    file: str
    detail: str = ""
    rows: int = 1

    def __post_init__(self) -> None:
        if self.kind not in PROBLEM_KINDS and self.kind not in FILTER_KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}")

    @property
    def is_filter(self) -> bool:
        """True when the rows were left out on purpose by an option."""
        return self.kind in FILTER_KINDS

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "file": self.file, "detail": self.detail, "rows": self.rows}


def count_problems(problems: list[Problem]) -> dict[str, int]:
    """Rows dropped per kind."""
    counts: Counter[str] = Counter()
    for problem in problems:
        counts[problem.kind] += problem.rows
    return dict(sorted(counts.items()))


def rgb_loader(path: Path) -> np.ndarray:
    """Decode an ordinary image file as (H, W, 3) uint8 RGB."""
    from softloc.data.images import load_image

    return load_image(path)


@dataclass
class ReadResult:
    """A reader's output: the table, the dropped rows, and how to decode its images.

    Attributes:
        table: the usable rows; paths relative to ``table.root`` (the source folder).
        problems: every dropped row or file.
        loader: decodes one source image to (H, W, 3) uint8 RGB (RobotCar: demosaic first).
        dataset: format name, for reports.
        has_timestamps: whether the source gives real capture times.
        zone: UTM (zone number, letter) of x/y when the source says it, else None.
    """

    table: PlaceTable
    problems: list[Problem] = field(default_factory=list)
    loader: Callable[[Path], np.ndarray] = rgb_loader
    dataset: str = ""
    has_timestamps: bool = False
    zone: tuple[int, str] | None = None

    def counts(self) -> dict[str, int]:
        return count_problems(self.problems)


def empty_table(root: str | os.PathLike[str]) -> PlaceTable:
    """A table with no rows."""
    empty = np.zeros(0)
    return PlaceTable(
        path=np.zeros(0, dtype=str), x=empty, y=empty, yaw=empty, timestamp=empty,
        traversal=np.zeros(0, dtype=str), condition=np.zeros(0, dtype=str),
        split=np.zeros(0, dtype=str), root=Path(root),
    )


def drop_duplicate_timestamps(
    table: PlaceTable, source: str
) -> tuple[PlaceTable, list[Problem]]:
    """Keep the first row of each (traversal, timestamp); report the others."""
    seen: set[tuple[str, float]] = set()
    keep = np.ones(len(table), dtype=bool)
    problems = []
    for i in range(len(table)):
        key = (str(table.traversal[i]), float(table.timestamp[i]))
        if key in seen:
            keep[i] = False
            problems.append(
                Problem("duplicate_timestamp", source, f"{table.path[i]}: t={key[1]!r}")
            )
        seen.add(key)
    return table.subset(keep), problems
