"""Build a map from a trained model, and localize query images against it.

A map folder (see :mod:`softloc.mapping`) also holds a copy of the model that described its
references (``model.safetensors`` + ``model.json``), so localizing needs nothing but the map
folder and the query images.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from softloc.atomic import atomic_path
from softloc.data.places import PlaceTable
from softloc.data.tuples import subsample_by_spacing
from softloc.extract import extract_descriptors, image_store
from softloc.mapping import Map, MapError
from softloc.models import load_model

MAP_MODEL = "model.safetensors"


def select_references(
    places: PlaceTable, split: str, traversal: str, spacing: float = 0.0
) -> PlaceTable:
    """Reference rows of one split and traversal, at least ``spacing`` metres apart."""
    refs = places.where(split=split, traversal=traversal)
    if len(refs) == 0:
        raise MapError(
            f"{places.root}: no images with split '{split}' and traversal '{traversal}'; "
            f"traversals here: {places.traversals()}"
        )
    order = np.argsort(refs.timestamp, kind="stable")
    refs = refs.subset(order)
    if spacing > 0:
        refs = refs.subset(subsample_by_spacing(refs.xy, spacing))
    return refs


def build_map(
    model_path: str | os.PathLike[str],
    places: PlaceTable,
    out: str | os.PathLike[str],
    split: str = "test",
    traversal: str = "reference",
    spacing: float = 0.0,
    index_kind: str = "flat",
    batch_size: int = 64,
    progress: bool = True,
    overwrite: bool = True,
) -> Path:
    """Describe the reference images with a model and save them as a map folder.

    Args:
        model_path: a model file written by ``softloc train`` (``.safetensors``).
        places: the dataset's places.
        out: the map folder.
        split, traversal: which images are references.
        spacing: keep references at least this many metres apart along the drive.
        index_kind: FAISS index kind (``flat``, ``ivf``, ``ivfpq``).
    """
    model, _ = load_model(model_path)
    refs = select_references(places, split, traversal, spacing)
    store = image_store(model, [refs.image_path(i) for i in range(len(refs))])
    descriptors = extract_descriptors(
        model, store, batch_size=batch_size, progress=progress, desc="map"
    )
    meta = {**model.meta, "source": str(model_path)}
    out = Map.build(descriptors, refs, meta, index_kind=index_kind).save(out, overwrite=overwrite)
    for suffix in (".safetensors", ".json"):
        source = Path(model_path).with_suffix(suffix)
        with atomic_path(out / Path(MAP_MODEL).with_suffix(suffix)) as tmp:
            shutil.copyfile(source, tmp)
    return out


def load_map_model(map_dir: str | os.PathLike[str]) -> torch.nn.Module:
    """The model stored in a map folder."""
    path = Path(map_dir) / MAP_MODEL
    if not path.is_file():
        raise MapError(f"{path}: the map holds no model; rebuild it with `softloc map build`")
    model, _ = load_model(path)
    return model.eval()


@dataclass(frozen=True)
class QueryResult:
    """Where one query image is, with the top-k references behind the estimate."""

    image: Path
    x: float
    y: float
    yaw: float
    paths: list[str]
    positions: np.ndarray
    distances: np.ndarray

    def describe(self) -> str:
        """Human-readable lines: the estimate, then one line per retrieved reference."""
        lines = [f"{self.image}: x={self.x:.2f} y={self.y:.2f} yaw={np.rad2deg(self.yaw):.1f}deg"]
        for rank, (path, xy, dist) in enumerate(
            zip(self.paths, self.positions, self.distances, strict=True), start=1
        ):
            lines.append(
                f"  {rank}. {path}  x={xy[0]:.2f} y={xy[1]:.2f}  descriptor distance={dist:.4f}"
            )
        return "\n".join(lines)


def localize_images(
    map_dir: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]], k: int = 5
) -> list[QueryResult]:
    """Estimate the position of each image: the position of its top-1 reference."""
    if k < 1:
        raise ValueError("k must be >= 1")
    the_map = Map.load(map_dir)
    model = load_map_model(map_dir)
    store = image_store(model, images)
    descriptors = extract_descriptors(model, store)
    results = []
    for image, found in zip(images, the_map.localize(descriptors, k=k), strict=True):
        xy = the_map.places.xy[found.indices]
        results.append(
            QueryResult(
                image=Path(image),
                x=found.x,
                y=found.y,
                yaw=found.yaw,
                paths=[str(p) for p in found.paths],
                positions=xy,
                distances=np.asarray(found.distances),
            )
        )
    return results
