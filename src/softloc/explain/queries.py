"""The queries of a map and what the map retrieves for them, shared by every picture.

A map (a folder made by ``softloc map build``) holds its model and its references; the
queries are the images of a split that are not on the map's reference traversals (the
evaluation protocol's choice, :func:`softloc.evaluation.protocol.query_places`), optionally
of one condition only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from softloc.data.images import load_image, to_tensor
from softloc.data.places import PlaceTable
from softloc.evaluation.metrics import DEFAULT_THRESHOLDS, position_errors
from softloc.evaluation.protocol import order_ties, query_places, warn_if_unrelated
from softloc.extract import extract_descriptors, image_store
from softloc.localize import load_map_model
from softloc.mapping import Map


def select_queries(
    places: PlaceTable, the_map: Map, split: str = "test", condition: str | None = None
) -> PlaceTable:
    """Query rows of ``split`` for ``the_map``, of one ``condition`` if given, by time.

    Raises:
        ValueError: no queries, or no query of that condition (the message lists those there).
    """
    queries = query_places(places, the_map, split)
    if condition is not None:
        available = queries.conditions()
        if condition not in available:
            raise ValueError(
                f"{places.root}: no query of condition '{condition}' in split '{split}'; "
                f"conditions there: {available}"
            )
        queries = queries.subset(queries.condition == condition)
    order = np.lexsort((queries.timestamp, queries.traversal))
    return queries.subset(order)


def input_size(model: torch.nn.Module) -> tuple[int, int]:
    """(width, height) the model's images are resized to (from its ``meta``)."""
    width, height = model.meta["preprocessing"]["image_size"]
    return int(width), int(height)


def model_input(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 images -> the normalised (B, 3, H, W) tensor the model expects."""
    pre = model.meta["preprocessing"]
    return to_tensor(images, pre["mean"], pre["std"])


@dataclass
class MapRetrieval:
    """One map, its model, its queries, their descriptors and what the map retrieves.

    Attributes:
        name: the label of the model in pictures and tables.
        map_dir: the map folder.
        the_map: the loaded map.
        model: the map's model (eval mode).
        queries: the query rows, sorted by traversal then time.
        descriptors: (Q, D) query descriptors.
        retrieved: (Q, K) reference rows, best first.
        scores: (Q, K) their similarities (inner products), or None.
    """

    name: str
    map_dir: Path
    the_map: Map
    model: torch.nn.Module
    queries: PlaceTable
    descriptors: np.ndarray
    retrieved: np.ndarray
    scores: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the model's input images."""
        return input_size(self.model)

    @cached_property
    def errors(self) -> np.ndarray:
        """(Q,) metres from each query to its top-1 reference."""
        return position_errors(self.queries.xy, self.the_map.places.xy, self.retrieved)

    @cached_property
    def nearest(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, metres)``: each query's nearest reference (by position) and its distance."""
        tree = NearestNeighbors(n_neighbors=1).fit(self.the_map.places.xy)
        distances, rows = tree.kneighbors(self.queries.xy)
        return rows[:, 0], distances[:, 0]

    def query_image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 query ``i`` at the model's input size."""
        return load_image(self.queries.image_path(int(i)), self.size)

    def reference_image(self, j: int) -> np.ndarray:
        """(H, W, 3) uint8 reference row ``j`` at the model's input size."""
        return load_image(self.the_map.places.image_path(int(j)), self.size)


def retrieve(
    map_dir: str | os.PathLike[str],
    places: PlaceTable,
    split: str = "test",
    condition: str | None = None,
    name: str | None = None,
    top_k: int = 1,
    progress: bool = False,
) -> MapRetrieval:
    """Describe the map's queries with its model and search the map (top ``top_k``, ties in
    the evaluation's order, so pictures show what the tables count)."""
    map_dir = Path(map_dir)
    the_map = Map.load(map_dir)
    model = load_map_model(map_dir)
    queries = select_queries(places, the_map, split, condition)
    warn_if_unrelated(the_map, places, queries, max(DEFAULT_THRESHOLDS), label=str(map_dir))
    store = image_store(model, [queries.image_path(i) for i in range(len(queries))])
    descriptors = extract_descriptors(model, store, progress=progress, desc=f"{map_dir.name}")
    scores, retrieved = order_ties(*the_map.search(descriptors, top_k))
    return MapRetrieval(
        name=name or map_dir.name,
        map_dir=map_dir,
        the_map=the_map,
        model=model,
        queries=queries,
        descriptors=descriptors,
        retrieved=retrieved,
        scores=scores,
    )
