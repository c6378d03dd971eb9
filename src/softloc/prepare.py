"""``softloc prepare``: any supported dataset -> the canonical layout, with a validation report.

Output folder::

    DIR/images/<traversal>/<row>_<stem>.png   images resized so the long side is max_side
    DIR/places.csv                          the canonical table (written last)
    DIR/summary.json, summary.md            counts per split x condition and per traversal
    DIR/report.json, report.md              every dropped row, counted and listed by kind
    DIR/drives.png                          map of the drives, coloured by split
    DIR/prepare.json                        format, source and options of the run
    DIR/sources.jsonl                       per cached image: its source, size and mtime

Cached images are named from the row (its index in the table, the sanitised traversal and file
stem), never from the source's folders, so they always lie under ``DIR`` whatever the paths in
the source (absolute, ``../``, two files differing only in their extension).

Resumable: images are written atomically (temporary name, then rename), and each one is listed
in ``sources.jsonl`` once written. A rerun reuses an image only when it is present and was made
from the same source file with the same size and modification time; otherwise (a killed run's
last image, a replaced source image) it is made again. A rerun with different options in the
same folder is refused (the cached images would not match).

Refused before anything is written: an ``--out`` that is the source's folder or holds the
source, a folder holding anything but an earlier prepare run (a town, another dataset, other
files), and any image listed inside ``--out``. Bad rows never stop the run; a failed *write*
(disk full, read-only) does, with exit 2 and the images written so far kept for a rerun. An
error is also raised when no image at all can be produced, after the report is written.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from softloc.atomic import atomic_path, write_json, write_text, write_with
from softloc.data.images import ImageError, ImageTooLargeError
from softloc.data.places import PLACES_FILE, PlaceTable, write_places
from softloc.data.readers import FORMATS, read_dataset
from softloc.data.readers.report import (
    FILTER_KINDS,
    PROBLEM_KINDS,
    DatasetError,
    Problem,
    count_problems,
)
from softloc.output_folders import claim_output_folder, visible_entries

logger = logging.getLogger(__name__)
IMAGES_DIR = "images"
MANIFEST_FILE = "prepare.json"
SOURCES_FILE = "sources.jsonl"
#: Problems listed per kind in report.md (all are in report.json).
LISTED_PER_KIND = 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class PrepareError(DatasetError):
    """Nothing sensible can be produced, or the output folder belongs to another run."""


class CacheWriteError(Exception):
    """Writing a cached image failed: the run's error (disk full, read-only), not the row's."""

    def __init__(self, target: Path, error: OSError) -> None:
        super().__init__(f"{target}: {error.strerror or error}")
        self.target = target
        self.error = error


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


def safe_name(text: str, limit: int = 60) -> str:
    """``text`` reduced to letters, digits, ``.``, ``_`` and ``-`` (no leading dot), at most
    ``limit`` characters; ``x`` when nothing is left."""
    return _UNSAFE.sub("_", str(text)).lstrip("._-")[:limit] or "x"


def cached_names(table: PlaceTable) -> list[str]:
    """Where row i's image is cached, relative to the output folder.

    ``images/<traversal>/<i>_<stem>.png``: the row index makes every name unique (two sources
    ``a.jpg`` and ``a.png`` never share a cache file), the sanitised traversal and stem keep
    it readable, and nothing of the source's folders is used, so the name never leaves
    ``images/``.
    """
    width = max(6, len(str(max(len(table) - 1, 0))))
    return [
        f"{IMAGES_DIR}/{safe_name(table.traversal[i])}/{i:0{width}d}_"
        f"{safe_name(Path(str(table.path[i])).stem)}.png"
        for i in range(len(table))
    ]


def source_record(path: Path) -> dict[str, Any] | None:
    """What identifies the content of a source image: path, size, mtime; None when absent."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return {"source": str(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _cache_image(loader, source: Path, target: Path, max_side: int) -> None:
    """Decode, resize and write one image.

    Raises:
        CacheWriteError: writing ``target`` failed (whatever the image).
        ImageError, OSError, ValueError, Image.DecompressionBombError: reading ``source``.
    """
    image = Image.fromarray(loader(source))
    size = resized_size(image.width, image.height, max_side)
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    try:
        with atomic_path(target) as tmp:
            image.save(tmp, format="PNG")
    except OSError as error:
        raise CacheWriteError(target, error) from error


def _cache_or_problem(
    loader, source: Path, target: Path, max_side: int
) -> tuple[Problem | None, dict[str, Any] | None]:
    """Cache one image: (None, its source record), or (the row's problem, None).

    A source that cannot be read or decoded is the row's problem; a target that cannot be
    written raises :class:`CacheWriteError` (the run's problem).
    """
    record = source_record(source)
    if record is None:
        return Problem("missing_image", str(source), "image not found"), None
    try:
        _cache_image(loader, source, target, max_side)
    except CacheWriteError:
        raise
    except (Image.DecompressionBombError, ImageTooLargeError) as error:
        return Problem("image_too_large", str(source),
                       f"{error} Shrink the image (e.g. to 4000 px on the long side) or drop "
                       "its row"), None
    except (ImageError, OSError, ValueError, SyntaxError) as error:
        kind = "missing_image" if not source.is_file() else "unreadable_image"
        return Problem(kind, str(source), str(error).split(": ", 1)[-1]), None
    return None, record


def _check_previous_run(out: Path, manifest: dict[str, Any]) -> None:
    path = out / MANIFEST_FILE
    images = out / IMAGES_DIR
    if not path.is_file() or not images.is_dir() or not any(images.rglob("*.png")):
        return  # nothing cached yet: an earlier run that failed early may be corrected freely
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        previous = {}
    keys = ("format", "source", "max_side", "options")
    before = {k: previous.get(k) for k in keys}
    if before != {k: manifest[k] for k in keys}:
        raise PrepareError(
            f"{path}: {out} was prepared with other settings ({before}); use a new --out "
            "folder, or delete this one to start over"
        )


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies below it (both resolved)."""
    return path == folder or folder in path.parents


def check_out_apart_from_source(source: Path, out: Path, option: str = "--out") -> None:
    """Refuse an output folder that is the source's folder or holds the source.

    Writing ``places.csv`` and ``images/`` there would mix prepared files with the source's
    and could replace them (a source CSV named ``places.csv``). A new folder *inside* the
    source's folder is fine: nothing of the source is overwritten.

    Raises:
        PrepareError: naming both folders and a folder to use instead.
    """
    if not Path(source).exists():
        return  # the reader names the missing source; nothing is written before it does
    src = Path(source).resolve()
    folder = src if src.is_dir() else src.parent
    target = Path(out).resolve()
    if target == folder or _inside(src, target):
        raise PrepareError(
            f"{option} {out} is the folder of the source {source} (or holds it): prepare "
            "would write places.csv and images/ among the source's files and could replace "
            f"them; nothing was written. Choose a new folder, e.g. {folder}-prepared"
        )


def _check_dataset_is_ours(out: Path) -> None:
    """A folder claimed as a dataset must hold an earlier prepare run, not a town or a
    hand-made dataset (whose places.csv prepare would replace)."""
    if (out / MANIFEST_FILE).is_file() and not (out / "town.json").is_file():
        return
    names = visible_entries(out)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    what = "a town" if (out / "town.json").is_file() else "a dataset that prepare did not write"
    raise PrepareError(
        f"{out} already holds {what} ({shown}; no {MANIFEST_FILE} of an earlier prepare run): "
        "prepare would replace its places.csv; nothing was written. Choose a new or empty "
        "folder for --out"
    )


def _check_images_outside(table: PlaceTable, out: Path) -> None:
    """Refuse a table that lists images inside ``out`` (they could be overwritten)."""
    target = str(out.resolve())
    root = str(table.root.resolve())
    for i, name in enumerate(table.path):
        where = os.path.normpath(os.path.join(root, str(name)))
        if where == target or where.startswith(target + os.sep):
            raise PrepareError(
                f"{table.image_path(i)}: a source image lies inside --out {out}, where prepare "
                "writes its own images and could overwrite it; nothing was written. Choose an "
                "--out outside the source images"
            )


@contextmanager
def _writing(out: Path, what: str) -> Iterator[None]:
    """Turn an OSError while writing ``what`` into the run's error, naming the path and why."""
    try:
        yield
    except OSError as error:
        where = error.filename or out
        raise PrepareError(
            f"{where}: cannot write {what} ({error.strerror or error}); free space on the disk "
            f"of {out} (or make it writable), then run the same command again: the images "
            "cached so far are kept and reused"
        ) from None


def read_sources(out: Path) -> dict[str, dict[str, Any]]:
    """``sources.jsonl`` as ``{cached image: source record}`` (later lines win; a line cut
    short by a kill is skipped)."""
    path = out / SOURCES_FILE
    if not path.is_file():
        return {}
    records: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            records[str(entry.pop("image"))] = entry
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            continue
    return records


def _journal_finished(out: Path, pending: list[tuple[int, Future]], line) -> int:
    """After a failed write, list the images other workers finished anyway, so that a rerun
    reuses them (best effort: the disk may be full). Returns how many were listed."""
    finished = []
    for i, future in pending:
        if future.done() and not future.cancelled() and future.exception() is None:
            problem, record = future.result()
            if problem is None:
                finished.append(line(i, record))
    try:
        with open(out / SOURCES_FILE, "a", encoding="utf-8") as journal:
            journal.write("".join(finished))
    except OSError:
        return 0
    return len(finished)


def _remove_unlisted(out: Path, listed: set[str]) -> int:
    """Delete cached images the finished table does not list, and stale temporaries."""
    images = out / IMAGES_DIR
    if not images.is_dir():
        return 0
    stale = [p for p in images.rglob("*.png") if p.relative_to(out).as_posix() not in listed]
    stale += list(images.rglob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


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
        PrepareError: unknown format or option, an ``--out`` that is the source's folder or
            holds another dataset or other files, a folder prepared with other settings, a
            write that failed (disk full), or no image could be produced (the report is
            written first).
        OutputFolderError: ``out`` is a file, not writable, or holds another kind of output.
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
    check_out_apart_from_source(Path(source), out)
    if vg_out is not None:
        check_out_apart_from_source(Path(source), Path(vg_out), "--vg-out")
        vg, target = Path(vg_out).resolve(), out.resolve()
        if _inside(vg, target) or _inside(target, vg):
            raise PrepareError(f"--vg-out {vg_out} and --out {out} overlap; give two separate "
                               "folders")
    if claim_output_folder(out, "dataset", allow=("report",)):  # report.json is prepare's own
        _check_dataset_is_ours(out)
    manifest = {
        "format": format, "source": str(Path(source).resolve()), "max_side": int(max_side),
        "options": json.loads(json.dumps(dict(sorted(options.items())), default=str)),
    }
    _check_previous_run(out, manifest)
    result = read_dataset(format, source, **options)
    table = result.table
    _check_images_outside(table, out)
    with _writing(out, MANIFEST_FILE):
        write_json(out / MANIFEST_FILE, manifest)
        # until it is written again, the folder must not look complete
        (out / PLACES_FILE).unlink(missing_ok=True)
    problems = list(result.problems)
    keep = np.ones(len(table), dtype=bool)
    paths = cached_names(table)
    previous = read_sources(out)
    sources = [table.image_path(i) for i in range(len(table))]
    records: list[dict[str, Any] | None] = [None] * len(table)
    todo = []
    for i in range(len(table)):
        record = source_record(sources[i])
        if record is not None and previous.get(paths[i]) == record and (out / paths[i]).is_file():
            records[i] = record
        else:
            todo.append(i)
    reused = len(table) - len(todo)

    def cache(i: int) -> tuple[Problem | None, dict[str, Any] | None]:
        return _cache_or_problem(result.loader, sources[i], out / paths[i], max_side)

    written = 0
    pool = ThreadPoolExecutor(max_workers=workers)
    # one worker stays in this thread, so an interrupt stops exactly where it came
    futures = [] if workers == 1 else [pool.submit(cache, i) for i in todo]
    consumed = 0

    def journal_line(i: int, record: dict[str, Any]) -> str:
        return json.dumps({"image": paths[i], **record}, sort_keys=True) + "\n"

    try:
        with _writing(out, SOURCES_FILE), open(out / SOURCES_FILE, "a",
                                                encoding="utf-8") as journal:
            for k in tqdm(range(len(todo)), desc="prepare", unit="img", disable=not progress):
                i = todo[k]  # in row order, whatever finished first
                problem, record = cache(i) if workers == 1 else futures[k].result()
                consumed = k + 1
                if problem is not None:
                    problems.append(problem)
                    keep[i] = False
                    continue
                records[i] = record
                written += 1
                journal.write(journal_line(i, record))
                journal.flush()
    except CacheWriteError as error:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True)
        kept = _journal_finished(out, [(todo[k], futures[k]) for k in range(consumed,
                                                                            len(futures))],
                                 journal_line)
        raise PrepareError(
            f"{error.target}: cannot write the cached image ({error.error.strerror or error.error})"
            f"; the disk holding {out} is full or not writable. Free space (or choose another "
            f"--out), then run the same command again: the {reused + written + kept} images "
            "cached so far are kept and reused"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    columns = {c: getattr(table, c)[keep] for c in
               ("x", "y", "yaw", "timestamp", "traversal", "condition", "split")}
    prepared = PlaceTable(path=np.asarray(paths, dtype=str)[keep] if paths else np.zeros(0, str),
                          **columns, root=out)
    with _writing(out, "the report"):
        write_report(out, problems, format, str(source), len(table))
    if len(prepared) == 0:
        raise PrepareError(
            f"{source}: none of the {len(table)} listed images could be read (see "
            f"{out / 'report.md'}); check that the image folders were extracted beside the "
            "metadata, under the folder given as SOURCE"
        )
    with _writing(out, "the summary, sources.jsonl and places.csv"):
        write_summary(out, prepared, problems, manifest, written, reused)
        plot_drives(prepared, out / "drives.png")
        lines = [json.dumps({"image": paths[i], **records[i]}, sort_keys=True)
                 for i in np.flatnonzero(keep)]
        write_text(out / SOURCES_FILE, "\n".join(lines) + "\n")
        removed = _remove_unlisted(out, set(prepared.path.tolist()))
        if removed:
            logger.info("removed %d cached images no longer listed from %s", removed,
                        out / IMAGES_DIR)
        write_places(prepared, out / PLACES_FILE)
    if vg_out is not None:
        from softloc.data.readers.vg_benchmark import write_vg_benchmark

        number, letter = result.zone or (None, None)
        with _writing(Path(vg_out), "the VG-benchmark layout"):
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
