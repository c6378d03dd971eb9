"""hloc interoperability: global-feature HDF5 files and retrieval pairs.

hloc (cvg/Hierarchical-Localization) computes 6-DoF poses after retrieval. Its global features
live in an HDF5 file with one group per image name holding a dataset ``global_descriptor``
(float16 when extracted ``as_half``). A name with sub-folders (``db/seq1/0001.jpg``) is a
nested group path, because h5py creates the intermediate groups: hloc lists the names as the
parent group of every dataset (``list_h5_names``) and reads ``file[name]["global_descriptor"]``
(``pairs_from_retrieval.get_descriptors``). Its retrieval pairs are text lines
``query_name db_name``, best first per query.

Here: write such a file from a map (its references keyed by the path stored in the map) and
from query images described by the map's model, read one back (a file another extractor
made, for ``softloc map import --hloc``), and write pairs from the map's own index.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from softloc.atomic import write_text, write_with
from softloc.localize import IMAGE_SUFFIXES

DATASET = "global_descriptor"


class HlocError(ValueError):
    """An hloc file or query list that cannot be written or read as asked."""


def check_names(names: Sequence[str], where: str) -> list[str]:
    """hloc names (relative POSIX paths, unique, no empty part); the error names the bad one."""
    clean = []
    seen: set[str] = set()
    for name in names:
        name = str(name).replace("\\", "/").strip("/")
        if not name or any(part in ("", ".", "..") for part in name.split("/")):
            raise HlocError(f"{where}: image name {name!r} cannot be an HDF5 group path; give "
                            "relative paths without '.', '..' or empty parts")
        if name in seen:
            raise HlocError(f"{where}: image name {name!r} appears twice; names must be unique "
                            "(a query may not share a reference's name)")
        seen.add(name)
        clean.append(name)
    return clean


def write_global_features(path: str | os.PathLike[str], names: Sequence[str],
                          descriptors: np.ndarray, as_half: bool = False) -> Path:
    """Write hloc's global-feature file atomically: ``file[name]["global_descriptor"]``.

    Args:
        names: one per descriptor row; sub-folders become nested groups.
        descriptors: (N, D) descriptors.
        as_half: store float16, as hloc does when extracting ``as_half``.
    """
    import h5py

    descriptors = np.asarray(descriptors)
    names = check_names(names, str(path))
    if descriptors.ndim != 2 or len(descriptors) != len(names):
        raise HlocError(f"{path}: {len(names)} names but descriptors of shape "
                        f"{descriptors.shape}; give one (D,) descriptor per name")
    dtype = np.float16 if as_half else np.float32
    leaves = set(names)
    for name in names:  # a name that is also another's folder cannot be both group kinds
        parts = name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in leaves:
                raise HlocError(f"{path}: {'/'.join(parts[:depth])!r} is an image and the "
                                f"folder of {name!r}; rename one of them")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as fd:
            for name, row in zip(names, descriptors, strict=True):
                fd.require_group(name).create_dataset(DATASET, data=row.astype(dtype))

    return write_with(path, write)


def list_names(path: str | os.PathLike[str]) -> list[str]:
    """The image names of an hloc feature file: groups holding ``global_descriptor``, sorted."""
    import h5py

    names: list[str] = []
    with h5py.File(path, "r") as fd:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] == DATASET:
                names.append(obj.parent.name.strip("/"))
        fd.visititems(visit)
    return sorted(names)


def read_global_features(path: str | os.PathLike[str],
                         names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(names, (N, D) float32 descriptors) of an hloc global-feature file.

    Raises:
        HlocError: not an HDF5 file, no ``global_descriptor``, a missing name, or descriptors
            of different dimensions (the message names the file and the fix).
    """
    import h5py

    path = Path(path)
    try:
        names = list_names(path) if names is None else list(names)
        rows = []
        with h5py.File(path, "r") as fd:
            for name in names:
                if name not in fd or DATASET not in fd[name]:
                    raise HlocError(f"{path}: no {name}/{DATASET}; the file lists "
                                    f"{len(list_names(path))} images")
                rows.append(np.asarray(fd[name][DATASET], dtype=np.float32).reshape(-1))
    except OSError as error:
        raise HlocError(f"{path}: cannot read it as HDF5 ({error}); give an hloc global-"
                        "feature file (e.g. global-feats-netvlad.h5)") from None
    if not rows:
        raise HlocError(f"{path}: holds no '{DATASET}' dataset; give an hloc global-feature "
                        "file (local-feature files hold keypoints instead)")
    dims = sorted({len(r) for r in rows})
    if len(dims) > 1:
        raise HlocError(f"{path}: descriptors of dimensions {dims}; one extractor's file only")
    return names, np.stack(rows)


def query_images(source: str | os.PathLike[str]) -> tuple[list[str], list[Path]]:
    """(names, paths) of query images from a folder or a list file.

    A folder: every image under it (sub-folders included), named by its path relative to the
    folder, in name order. A list file: one image per line (blank lines and ``#`` comments
    skipped), named as written, relative to the list's folder unless absolute.
    """
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise HlocError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return [p.relative_to(source).as_posix() for p in paths], paths
    if not source.is_file():
        raise HlocError(f"{source}: no such folder or list file; give a folder of query "
                        "images or a text file with one image path per line")
    lines = [line.strip() for line in source.read_text(encoding="utf-8-sig").splitlines()]
    names = [line for line in lines if line and not line.startswith("#")]
    if not names:
        raise HlocError(f"{source}: the list names no image")
    paths = [Path(n) if Path(n).is_absolute() else source.parent / n for n in names]
    return names, paths


def write_pairs(path: str | os.PathLike[str], query_names: Sequence[str],
                matched: Sequence[Sequence[str]]) -> Path:
    """hloc's retrieval pairs: ``query db`` per line, each query's matches best first."""
    lines = [f"{q} {d}" for q, row in zip(query_names, matched, strict=True) for d in row]
    return write_text(path, "".join(line + "\n" for line in lines))


def export_features(map_dir: str | os.PathLike[str], out: str | os.PathLike[str],
                    queries: str | os.PathLike[str] | None = None,
                    as_half: bool = False) -> tuple[int, int]:
    """Write the map's reference descriptors (named by their stored paths) and, with
    ``queries``, those of the query images described by the map's model, into one hloc
    global-feature file. Returns (references, queries) written."""
    from softloc.localizer import Localizer

    localizer = Localizer(map_dir)
    the_map = localizer.map
    names = [str(p) for p in the_map.places.path]
    descriptors = np.asarray(the_map.descriptors, dtype=np.float32)
    query_count = 0
    if queries is not None:
        query_names, paths = query_images(queries)
        names += query_names
        descriptors = np.concatenate([descriptors, localizer.describe(paths)])
        query_count = len(query_names)
    write_global_features(out, names, descriptors, as_half=as_half)
    return len(the_map), query_count


def export_pairs(map_dir: str | os.PathLike[str], queries: str | os.PathLike[str],
                 num_matched: int, out: str | os.PathLike[str]) -> int:
    """Describe the queries with the map's model, retrieve ``num_matched`` references each
    from the map's index and write hloc's pairs file; returns the number of lines."""
    from softloc.localizer import Localizer

    if num_matched < 1:
        raise HlocError(f"--num-matched must be >= 1, got {num_matched}")
    localizer = Localizer(map_dir)
    the_map = localizer.map
    query_names, paths = query_images(queries)
    _, rows = the_map.search(localizer.describe(paths), num_matched)
    matched = [[str(the_map.places.path[r]) for r in row if r >= 0] for row in rows]
    write_pairs(out, query_names, matched)
    return sum(len(m) for m in matched)


def import_map(features: str | os.PathLike[str], places_csv: str | os.PathLike[str],
               out: str | os.PathLike[str], index_kind: str = "flat",
               overwrite: bool = False, index_options: dict[str, int] | None = None,
               dtype: str = "float32") -> Path:
    """A map of the references in ``places_csv`` with the descriptors another extractor wrote
    into an hloc global-feature file (each row's ``path`` is its image name there).

    Descriptors are L2-normalised (retrieval ranks by inner product). The map holds no model,
    so it cannot describe new queries: it is for comparing extractors' descriptors.
    """
    from softloc.data.places import read_places
    from softloc.map_import import save_imported
    from softloc.mapping import check_map_target
    from softloc.output_folders import claim_output_folder

    claim_output_folder(out, "map", allow=("dataset",))
    check_map_target(out, overwrite=overwrite)
    places = read_places(places_csv)
    names = [str(p) for p in places.path]
    available = set(list_names(features))
    missing = [n for n in names if n not in available]
    if missing:
        raise HlocError(f"{features}: {len(missing)} of the {len(names)} places of "
                        f"{places_csv} have no descriptor (first: {missing[:3]}); the places' "
                        "paths must be the image names of the feature file")
    _, descriptors = read_global_features(features, names)
    norms = np.linalg.norm(descriptors, axis=1, keepdims=True)
    if not np.all(np.isfinite(descriptors)) or (norms == 0).any():
        raise HlocError(f"{features}: NaN, infinite or all-zero descriptors; re-extract them")
    meta = {"name": f"hloc:{Path(features).stem}", "source": str(Path(features).resolve()),
            "imported_from": "hloc global features"}
    return save_imported(descriptors / norms, places, meta, out, features, index_kind,
                         index_options, dtype, overwrite)
