"""What an output folder holds, and the one rule every command follows before writing into it.

A command that writes into ``--out`` first *claims* the folder for one kind of output (a dataset,
a training run, a map, an evaluation, a report, a sweep). The claim succeeds when the folder is
missing, empty, or already holds that same kind of output (the command then applies its own
resume / overwrite policy). It fails, before anything is written, when the folder holds
another kind of output or files softloc did not make, so a mistyped ``--out`` never replaces a
user's places.csv, model or map. The claim also checks that the location is writable, so a
read-only disk fails at the start and not after an hour of computation.

Each kind is recognised by its marker files: the files a complete or partial output of that kind
always has. Hidden files (``.name``, e.g. stale temporaries or ``.DS_Store``) are ignored.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# kind -> files whose presence marks a folder as holding that kind of output
MARKERS: dict[str, tuple[str, ...]] = {
    "dataset": ("places.csv", "town.json", "prepare.json"),
    "training run": ("config.yaml", "model.json", "model.safetensors", "train_log.csv",
                     "checkpoints"),
    "map": ("manifest.json", "descriptors.npy", "index.faiss"),
    "evaluation": ("results.json",),
    "report": ("index.html", "report.json"),
    "sweep": ("sweep_dimension.json", "sweep_spacing.json", "sweep_sensitivity.json",
              "sweep_margin.json", "sweep_sequence.json"),
    "demo": ("demo.yaml",),
}


class OutputFolderError(ValueError):
    """``--out`` cannot be used: it holds something else, is a file, or is not writable."""


def visible_entries(folder: Path) -> list[str]:
    """Names in ``folder`` that are not hidden (hidden ones are temporaries or OS litter)."""
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def folder_kinds(folder: str | os.PathLike[str]) -> list[str]:
    """The kinds of softloc output ``folder`` holds, judged by their marker files."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = set(visible_entries(folder))
    kinds = [kind for kind, markers in MARKERS.items() if names & set(markers)]
    if "dataset" in kinds and "report" in kinds and "index.html" not in names:
        kinds.remove("report")  # prepare writes its own report.json beside places.csv
    if "map" in kinds:  # a map holds its references' places.csv and its model's files
        if not names & {"town.json", "prepare.json"} and "dataset" in kinds:
            kinds.remove("dataset")
        if not names & {"config.yaml", "train_log.csv", "checkpoints"} and "training run" in kinds:
            kinds.remove("training run")
    return kinds


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Raise `OutputFolderError` unless a file can be created in ``folder`` (or where it would be).

    The nearest existing ancestor is tried when ``folder`` does not exist yet.
    """
    folder = Path(folder)
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        raise OutputFolderError(
            f"{probe_dir} is a file, not a folder; choose another --out"
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".softloc-write-check.", dir=probe_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        raise OutputFolderError(
            f"{folder}: cannot write there ({error.strerror or error}); choose a writable --out "
            "or free space on that disk"
        ) from error


def claim_output_folder(
    folder: str | os.PathLike[str],
    kind: str,
    allow: tuple[str, ...] = (),
) -> bool:
    """Make sure ``folder`` may receive output of ``kind``; return whether it holds one already.

    Args:
        folder: the ``--out`` folder (created later by the caller, not here).
        kind: one of `MARKERS`.
        allow: further kinds the command may write beside its own (e.g. a demo folder holds
            a dataset, runs and maps in sub-folders, and its own evaluation files).

    Returns:
        True when ``folder`` already holds output of ``kind`` (the caller then resumes, refuses
        or overwrites by its own rule); False when it is missing or empty.

    Raises:
        OutputFolderError: ``folder`` is a file, is not writable, or holds anything other than
            output of ``kind`` (or of ``allow``). Nothing has been written.
    """
    if kind not in MARKERS:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {sorted(MARKERS)}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder} is a file, not a folder; choose another --out")
    check_writable(folder)
    if not folder.exists() or not visible_entries(folder):
        return False
    kinds = folder_kinds(folder)
    if kind in kinds:
        others = [k for k in kinds if k != kind and k not in allow]
        if not others:
            return True
    held = ", ".join(kinds) if kinds else "files softloc did not write"
    names = visible_entries(folder)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise OutputFolderError(
        f"{folder} already holds {held} ({shown}), not a {kind}; nothing was written. "
        f"Choose a new or empty folder for --out"
    )
