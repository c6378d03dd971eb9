"""Readers of real datasets in their own formats; each gives a PlaceTable and its problems.

``read_dataset(format, source, **options)`` dispatches by format name (see :data:`FORMATS`),
then applies the options every format shares: train/val/test regions and reference
subsampling along the drive. Every dropped row is a :class:`~.report.Problem`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from softloc.data.readers.msls import read_msls
from softloc.data.readers.pittsburgh import read_pittsburgh
from softloc.data.readers.plain_csv import read_plain_csv
from softloc.data.readers.regions import assign_regions, read_regions, subsample_along
from softloc.data.readers.report import DatasetError, Problem, ReadResult
from softloc.data.readers.robotcar import read_robotcar
from softloc.data.readers.vg_benchmark import read_vg_benchmark, write_vg_benchmark

#: Format name -> reader(source, **options).
FORMATS: dict[str, Callable[..., ReadResult]] = {
    "robotcar": read_robotcar,
    "pittsburgh": read_pittsburgh,
    "vg": read_vg_benchmark,
    "msls": read_msls,
    "csv": read_plain_csv,
}


def read_dataset(
    format: str,
    source: str | os.PathLike[str],
    regions: str | os.PathLike[str] | None = None,
    reference_spacing: float = 0.0,
    reference_traversal: str = "reference",
    **options: Any,
) -> ReadResult:
    """Read ``source`` in ``format``; then split by ``regions`` and thin the reference drive.

    Raises:
        DatasetError: unknown format, or nothing usable (the message names the file).
    """
    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; one of {sorted(FORMATS)}")
    if not np.isfinite(reference_spacing) or reference_spacing < 0:
        raise DatasetError(f"--reference-spacing must be a distance >= 0 metres (0 keeps every "
                           f"reference frame), got {reference_spacing}")
    result = FORMATS[format](Path(source), **options)
    if regions is not None:
        table, problems = assign_regions(result.table, read_regions(regions), str(regions))
        result.table, result.problems = table, result.problems + problems
    if reference_spacing > 0:
        table, problems = subsample_along(result.table, reference_spacing, reference_traversal)
        result.table, result.problems = table, result.problems + problems
    if len(result.table) == 0:
        raise DatasetError(f"{source}: no image left after the regions and spacing options; "
                           f"check {regions or 'the options'}")
    return result


__all__ = [
    "FORMATS", "DatasetError", "Problem", "ReadResult", "read_dataset", "read_msls",
    "read_pittsburgh", "read_plain_csv", "read_robotcar", "read_vg_benchmark",
    "write_vg_benchmark",
]
