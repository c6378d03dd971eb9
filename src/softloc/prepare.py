"""``softloc prepare``: any supported dataset -> the canonical layout, with a validation report.

Output folder::

    DIR/images/<source relative path>.png   images resized so the long side is max_side
    DIR/places.csv                          the canonical table (written last)
    DIR/summary.json, summary.md            counts per split x condition and per traversal
    DIR/report.json, report.md              every dropped row, counted and listed by kind
    DIR/drives.png                          map of the drives, coloured by split
    DIR/prepare.json                        format, source and options of the run

Resumable: images are written atomically (temporary name, then rename), so an image present
under its final name is complete and a rerun skips it. A rerun with different options in the
same folder is refused (the cached images would not match). Bad rows never stop the run; an
error is raised only when no image at all can be produced, after the report is written.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from softloc.atomic import atomic_path, write_json, write_text, write_with
from softloc.data.images import ImageError
from softloc.data.places import PLACES_FILE, PlaceTable, write_places
from softloc.data.readers import FORMATS, read_dataset
from softloc.data.readers.report import (
    FILTER_KINDS,
    PROBLEM_KINDS,
    DatasetError,
    Problem,
    count_problems,
)

logger = logging.getLogger(__name__)
IMAGES_DIR = "images"
#: Problems listed per kind in report.md (all are in report.json).
LISTED_PER_KIND = 20


class PrepareError(DatasetError):
    """Nothing sensible can be produced, or the output folder belongs to another run."""


@dataclass(frozen=True)
class PrepareResult:
    """What a run produced."""

    out: Path
    table: PlaceTable
    problems: list[Problem]
    written: int  # images decoded and written by this run
    reused: int  # images already present from an earlier, interrupted run


def reader_options(format: str) -> list[str]:
    """Option names the reader of ``format`` accepts, plus the shared ones."""
    if format not in FORMATS:
        raise PrepareError(f"unknown dataset format {format!r}; one of {sorted(FORMATS)}")
    names = list(inspect.signature(FORMATS[format]).parameters)[1:]
    return names + ["regions", "reference_spacing", "reference_traversal"]


def resized_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled so the long side is ``max_side`` (never enlarged)."""
    scale = max_side / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def _cache_image(loader, source: Path, target: Path, max_side: int) -> None:
    image = Image.fromarray(loader(source))
    size = resized_size(image.width, image.height, max_side)
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG")


def _cache_or_problem(
    loader, source: Path, target: Path, max_side: int
) -> Problem | None:
    """Cache one image; the problem instead of an exception when it cannot be read."""
    try:
        _cache_image(loader, source, target, max_side)
        return None
    except (ImageError, OSError, ValueError) as error:
        kind = "missing_image" if not source.is_file() else "unreadable_image"
        return Problem(kind, str(source), str(error).split(": ", 1)[-1])


def _check_previous_run(out: Path, manifest: dict[str, Any]) -> None:
    path = out / "prepare.json"
    images = out / IMAGES_DIR
    if not path.is_file() or not images.is_dir() or not any(images.rglob("*.png")):
        return  # nothing cached yet: an earlier run that failed early may be corrected freely
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        previous = {}
    keys = ("format", "source", "max_side", "options")
    before = {k: previous.get(k) for k in keys}
    if before != {k: manifest[k] for k in keys}:
        raise PrepareError(
            f"{path}: {out} was prepared with other settings ({before}); use a new --out "
            "folder, or delete this one to start over"
        )


def prepare(
    format: str,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    max_side: int = 240,
    progress: bool = True,
    vg_out: str | os.PathLike[str] | None = None,
    workers: int = 1,
    **options: Any,
) -> PrepareResult:
    """Read ``source`` in ``format``, cache resized images and write the canonical layout.

    Args:
        format: one of :data:`softloc.data.readers.FORMATS`.
        source: what the reader takes (a folder, a .mat or a CSV file).
        out: output folder; rerunning with the same arguments resumes.
        max_side: long side of the cached images (the authors use 240).
        vg_out: also write the prepared images in the VG-benchmark layout there (lat/lon in
            the names when the source gives its UTM zone).
        workers: images decoded, demosaiced, resized and written at once (threads: PNG
            codecs and the demosaic release the GIL, and a reader's loader need not be
            picklable). The output does not depend on it.
        options: reader options (see :func:`reader_options`).

    Raises:
        PrepareError: unknown format or option, a folder prepared with other settings, or no
            image could be produced (the report is written first).
    """
    allowed = reader_options(format)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise PrepareError(f"option(s) {unknown} do not apply to format {format!r}; it takes "
                           f"{', '.join(allowed)}")
    if workers < 1:
        raise PrepareError(f"workers must be >= 1, got {workers}")
    if max_side < 8:
        raise PrepareError(f"max_side {max_side} is too small; use e.g. 240")
    out = Path(out)
    manifest = {
        "format": format, "source": str(Path(source).resolve()), "max_side": int(max_side),
        "options": json.loads(json.dumps(dict(sorted(options.items())), default=str)),
    }
    _check_previous_run(out, manifest)
    result = read_dataset(format, source, **options)
    write_json(out / "prepare.json", manifest)
    table = result.table
    problems = list(result.problems)
    keep = np.ones(len(table), dtype=bool)
    paths = [
        (Path(IMAGES_DIR) / Path(table.path[i]).with_suffix(".png")).as_posix()
        for i in range(len(table))
    ]
    todo = [i for i in range(len(table)) if not (out / paths[i]).is_file()]
    reused = len(table) - len(todo)

    def cache(i: int) -> Problem | None:
        return _cache_or_problem(result.loader, table.image_path(i), out / paths[i], max_side)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # one worker stays in this thread, so an interrupt stops exactly where it came
        mapped = map(cache, todo) if workers == 1 else pool.map(cache, todo)
        outcomes = tqdm(mapped, total=len(todo), desc="prepare", unit="img",
                        disable=not progress)
        for i, problem in zip(todo, outcomes, strict=True):  # in row order, whatever finished
            if problem is not None:
                problems.append(problem)
                keep[i] = False
    written = int(len(todo) - (~keep).sum())
    columns = {c: getattr(table, c)[keep] for c in
               ("x", "y", "yaw", "timestamp", "traversal", "condition", "split")}
    prepared = PlaceTable(path=np.asarray(paths, dtype=str)[keep] if paths else np.zeros(0, str),
                          **columns, root=out)
    write_report(out, problems, format, str(source), len(table))
    if len(prepared) == 0:
        raise PrepareError(
            f"{source}: none of the {len(table)} listed images could be read (see "
            f"{out / 'report.md'}); check that the image folders were extracted beside the "
            "metadata, under the folder given as SOURCE"
        )
    write_summary(out, prepared, problems, manifest, written, reused)
    plot_drives(prepared, out / "drives.png")
    write_places(prepared, out / PLACES_FILE)
    if vg_out is not None:
        from softloc.data.readers.vg_benchmark import write_vg_benchmark

        number, letter = result.zone or (None, None)
        write_vg_benchmark(prepared, vg_out, number, letter)
    logger.info("prepared %d images in %s (%d dropped)", len(prepared), out, sum(
        p.rows for p in problems))
    return PrepareResult(out, prepared, problems, written, reused)


def write_report(out: Path, problems: list[Problem], format: str, source: str,
                 listed: int) -> None:
    """report.json (every problem) and report.md (counts, then examples per kind)."""
    counts = count_problems(problems)
    write_json(out / "report.json", {
        "format": format, "source": source, "rows_read": listed, "counts": counts,
        "problems": [p.to_dict() for p in problems],
    })
    lines = [f"# Validation report: {format} from `{source}`", ""]
    if not problems:
        lines += ["No problems: every row was usable.", ""]
    else:
        lines += ["| kind | rows dropped | what it means |", "|---|---:|---|"]
        for kind, n in counts.items():
            what = PROBLEM_KINDS.get(kind) or f"filter: {FILTER_KINDS[kind]}"
            lines.append(f"| {kind} | {n} | {what} |")
        lines.append("")
        for kind in counts:
            items = [p for p in problems if p.kind == kind]
            lines.append(f"## {kind} ({len(items)} entries)")
            lines += [f"- `{p.file}` {p.detail}" + (f" ({p.rows} rows)" if p.rows != 1 else "")
                      for p in items[:LISTED_PER_KIND]]
            if len(items) > LISTED_PER_KIND:
                lines.append(f"- ... {len(items) - LISTED_PER_KIND} more in report.json")
            lines.append("")
    write_text(out / "report.md", "\n".join(lines))


def write_summary(out: Path, table: PlaceTable, problems: list[Problem],
                  manifest: dict[str, Any], written: int, reused: int) -> None:
    """summary.json / summary.md: images per split and condition, per traversal."""
    by_split: dict[str, dict[str, int]] = {}
    for split, condition in zip(table.split, table.condition, strict=True):
        by_split.setdefault(str(split), Counter())[str(condition)] += 1
    by_traversal = Counter(table.traversal.tolist())
    summary = {
        **manifest, "images": len(table), "written": written, "reused": reused,
        "by_split_condition": {s: dict(sorted(c.items())) for s, c in sorted(by_split.items())},
        "by_traversal": dict(sorted(by_traversal.items())),
        "dropped": count_problems(problems),
    }
    write_json(out / "summary.json", summary)
    conditions = sorted({c for counts in by_split.values() for c in counts})
    lines = [f"# {manifest['format']} dataset: {len(table)} images", "",
             "| split | " + " | ".join(conditions) + " | total |",
             "|---|" + "---:|" * (len(conditions) + 1)]
    for split, counts in sorted(by_split.items()):
        cells = [str(counts.get(c, 0)) for c in conditions]
        lines.append(f"| {split} | " + " | ".join(cells) + f" | {sum(counts.values())} |")
    lines += ["", "| traversal | images |", "|---|---:|"]
    lines += [f"| {t} | {n} |" for t, n in sorted(by_traversal.items())]
    write_text(out / "summary.md", "\n".join(lines) + "\n")


def plot_drives(table: PlaceTable, path: Path) -> None:
    """Scatter of the positions, coloured by split, one marker per traversal (up to 10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 7))
    for split in sorted(set(table.split.tolist())):
        rows = table.where(split=split)
        ax.scatter(rows.x, rows.y, s=3, label=f"{split} ({len(rows)})",
                   color=colours.get(split), alpha=0.6, linewidths=0)
    ax.set_xlabel("easting x (m)")
    ax.set_ylabel("northing y (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.legend(markerscale=4, loc="best")
    ax.set_title(f"{len(table)} images, {len(table.traversals())} traversal(s)")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
