"""What a report compares: RUN_DIRs resolved to maps, and the sweep outputs to include.

A RUN_DIR is one of

- a **map folder** (made by ``softloc map build``; it holds ``manifest.json`` and the model):
  used as it is;
- a **training run folder** (made by ``softloc train``; it holds ``model.safetensors``): a map
  of its references is built into ``OUT/maps/<name>/`` and reused by later reports as long as
  the run's model file is unchanged (same SHA-256 as the map's copy);
- a **demo folder** (made by ``softloc demo``; it holds ``maps/<model>/``): every map in it.

The name of a model is its folder's name (``parent-name`` when two folders share a name).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from softloc.atomic import atomic_path
from softloc.data.places import PlaceTable
from softloc.evaluation.protocol import model_names
from softloc.localize import MAP_MODEL, build_map
from softloc.mapping import MANIFEST_FILE, Map, MapError, sha256_file
from softloc.train import FINAL_MODEL

logger = logging.getLogger(__name__)

#: Sweep outputs (made by ``softloc sweep``) are files named ``sweep_<kind>.<ext>``.
SWEEP_SUFFIXES: tuple[str, ...] = (".csv", ".png", ".json")


class ReportInputError(FileNotFoundError, ValueError):
    """A RUN_DIR or sweep folder is not what the report can read."""


@dataclass(frozen=True)
class ReportRun:
    """One model of the report: its name, the folder given, and the map evaluated."""

    name: str
    source: Path
    map_dir: Path
    built: bool = False


def _maps_in(folder: Path) -> list[Path]:
    maps = folder / "maps"
    if not maps.is_dir():
        return []
    return sorted(p for p in maps.iterdir() if (p / MANIFEST_FILE).is_file())


def _cached_map(model_path: Path, map_dir: Path) -> bool:
    """Whether ``map_dir`` is a complete, intact map built from exactly this model file.

    A map that does not load (damaged, or written by an older softloc) is rebuilt.
    """
    copy = map_dir / MAP_MODEL
    if not (map_dir / MANIFEST_FILE).is_file() or not copy.is_file():
        return False
    try:
        Map.load(map_dir)
    except MapError as error:
        logger.info("rebuilding the map %s: %s", map_dir, error)
        return False
    return sha256_file(copy) == sha256_file(model_path)


def resolve_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    places: PlaceTable,
    out: str | os.PathLike[str],
    split: str = "test",
    traversal: str = "reference",
    spacing: float = 0.0,
    progress: bool = True,
) -> list[ReportRun]:
    """Maps of the given RUN_DIRs, building (or reusing) one per training run.

    Raises:
        ReportInputError: no RUN_DIR, or a folder that is none of the three kinds.
    """
    if not run_dirs:
        raise ReportInputError("give at least one RUN_DIR (a map, training run or demo folder)")
    expanded: list[tuple[Path, Path, str]] = []  # (folder, source, kind)
    for given in map(Path, run_dirs):
        if (given / MANIFEST_FILE).is_file():
            expanded.append((given, given, "map"))
        elif (given / FINAL_MODEL).is_file():
            expanded.append((given, given, "run"))
        elif maps := _maps_in(given):
            expanded.extend((m, given, "map") for m in maps)
        else:
            raise ReportInputError(
                f"{given}: not a map folder ({MANIFEST_FILE}), a training run ({FINAL_MODEL}) "
                "or a demo folder (maps/*/); build a map with `softloc map build` or train "
                "with `softloc train` first"
            )
    names = model_names([folder for folder, _, _ in expanded])
    runs = []
    for name, (folder, source, kind) in zip(names, expanded, strict=True):
        if kind == "map":
            runs.append(ReportRun(name, source, folder))
            continue
        model_path = folder / FINAL_MODEL
        map_dir = Path(out) / "maps" / name
        if _cached_map(model_path, map_dir):
            logger.info("reusing the map %s of %s", map_dir, folder)
        else:
            build_map(model_path, places, map_dir, split=split, traversal=traversal,
                      spacing=spacing, progress=progress)
        runs.append(ReportRun(name, source, map_dir, built=True))
    return runs


def find_sweeps(folders: Sequence[str | os.PathLike[str]]) -> dict[str, dict[str, Path]]:
    """``{kind: {suffix: path}}`` of the ``sweep_<kind>.csv/.png/.json`` files in ``folders``.

    A folder that does not exist is an error (a mistyped ``--sweeps``); a later folder's file
    replaces an earlier one of the same name.
    """
    found: dict[str, dict[str, Path]] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ReportInputError(f"{folder}: no such sweep folder; check --sweeps")
        for path in sorted(folder.glob("sweep_*")):
            if path.is_file() and path.suffix in SWEEP_SUFFIXES:
                kind = path.stem.removeprefix("sweep_")
                found.setdefault(kind, {})[path.suffix] = path
    return found


def copy_sweeps(sweeps: dict[str, dict[str, Path]], out: Path) -> dict[str, dict[str, Path]]:
    """Copy the sweep files into ``out`` (so the report stands alone); return the copies."""
    copies: dict[str, dict[str, Path]] = {}
    for kind, files in sweeps.items():
        for suffix, path in files.items():
            target = out / path.name
            if path.resolve() != target.resolve():
                with atomic_path(target) as tmp:
                    shutil.copyfile(path, tmp)
            copies.setdefault(kind, {})[suffix] = target
    return copies
