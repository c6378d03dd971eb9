"""Training tuples: an anchor, images near it and images far from it, with their distances.

The tuple convention every loss relies on: row 0 is the anchor, rows ``1 .. n_near`` are the
near images, the remaining rows are the far images. The full matrix of metric distances between
the tuple's camera positions travels with it, so soft losses can weight every pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from softloc.config import TupleConfig
from softloc.data.places import PlaceTable
from softloc.geometry import heading_difference, pairwise_distances


class TupleError(ValueError):
    """No valid tuple can be drawn from the given places with the given settings."""


@dataclass(frozen=True)
class TrainingTuple:
    """One tuple.

    Attributes:
        indices: (B,) rows of the place table: anchor, near images, far images.
        distances: (B, B) metric distances between the camera positions (metres).
        n_near: number of near images (rows 1 .. n_near).
    """

    indices: np.ndarray
    distances: np.ndarray
    n_near: int

    @property
    def n_far(self) -> int:
        return len(self.indices) - 1 - self.n_near


def subsample_by_spacing(xy: np.ndarray, spacing: float) -> np.ndarray:
    """Indices of a drive kept so consecutive kept frames lie at least ``spacing`` metres apart.

    Args:
        xy: (N, 2) positions in driving order.
    """
    if len(xy) == 0:
        return np.zeros(0, dtype=np.int64)
    keep = [0]
    for i in range(1, len(xy)):
        if np.hypot(*(xy[i] - xy[keep[-1]])) >= spacing:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


class TupleSampler:
    """Draws training tuples from a table of places (usually the train split).

    Anchors are frames of ``reference_traversal`` spaced ``anchor_spacing`` metres apart that
    have enough near images; near images come from every traversal (so a tuple mixes
    conditions) within ``near_radius`` and ``max_heading_deg``; far images lie beyond
    ``far_radius``, a share of them in the band up to ``band_radius``, and are mutually at
    least ``far_spacing`` apart.

    Args:
        places: the places to draw from.
        config: counts and radii.
        reference_traversal: traversal the anchors come from; every traversal if absent.
    """

    def __init__(
        self, places: PlaceTable, config: TupleConfig, reference_traversal: str = "reference"
    ) -> None:
        if len(places) == 0:
            raise TupleError("cannot draw tuples from an empty set of places (check the split)")
        self.places = places
        self.config = config
        self.xy = places.xy
        self._tree = NearestNeighbors().fit(self.xy)
        is_reference = places.traversal == reference_traversal
        if not is_reference.any():
            is_reference = np.ones(len(places), dtype=bool)
        candidates = np.flatnonzero(is_reference)
        order = candidates[np.argsort(places.timestamp[candidates], kind="stable")]
        candidates = order[subsample_by_spacing(self.xy[order], config.anchor_spacing)]
        distances, neighbours = self._tree.radius_neighbors(
            self.xy[candidates], radius=config.band_radius
        )
        max_heading = np.deg2rad(config.max_heading_deg)
        self._anchors: list[int] = []
        self._near: list[np.ndarray] = []
        self._band: list[np.ndarray] = []
        for anchor, dist, neigh in zip(candidates, distances, neighbours, strict=True):
            heading_ok = heading_difference(places.yaw[neigh], places.yaw[anchor]) <= max_heading
            near = neigh[(dist < config.near_radius) & heading_ok & (neigh != anchor)]
            if len(near) < config.n_near:
                continue
            self._anchors.append(int(anchor))
            self._near.append(np.sort(near))
            self._band.append(np.sort(neigh[dist >= config.far_radius]))
        if not self._anchors:
            raise TupleError(
                f"no anchor has {config.n_near} near images within {config.near_radius} m and "
                f"{config.max_heading_deg} deg among {len(places)} places; lower tuples.n_near "
                "or raise tuples.near_radius"
            )
        far_possible = np.linalg.norm(self.xy - self.xy.mean(axis=0), axis=1).max() * 2
        if far_possible < config.far_radius:
            raise TupleError(
                f"the places span at most {far_possible:.1f} m, less than tuples.far_radius "
                f"= {config.far_radius} m: no far images exist"
            )

    @property
    def anchors(self) -> np.ndarray:
        """Rows usable as anchors."""
        return np.asarray(self._anchors, dtype=np.int64)

    def sample(self, rng: np.random.Generator) -> TrainingTuple:
        """Draw one tuple using ``rng`` (the only source of randomness)."""
        cfg = self.config
        k = int(rng.integers(len(self._anchors)))
        anchor = self._anchors[k]
        near = rng.choice(self._near[k], size=cfg.n_near, replace=False)
        far = self._draw_far(anchor, self._band[k], rng)
        indices = np.concatenate([[anchor], near, far]).astype(np.int64)
        return TrainingTuple(
            indices=indices, distances=pairwise_distances(self.xy[indices]), n_near=cfg.n_near
        )

    def _draw_far(self, anchor: int, band: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        chosen: list[int] = []

        def acceptable(candidate: int) -> bool:
            if np.hypot(*(self.xy[candidate] - self.xy[anchor])) < cfg.far_radius:
                return False
            if not chosen:
                return True
            gaps = np.linalg.norm(self.xy[chosen] - self.xy[candidate], axis=1)
            return bool(gaps.min() >= cfg.far_spacing)

        n_band = int(round(cfg.n_far * cfg.band_fraction))
        for candidate in rng.permutation(band):
            if len(chosen) >= n_band:
                break
            if acceptable(int(candidate)):
                chosen.append(int(candidate))
        attempts = 0
        while len(chosen) < cfg.n_far:
            attempts += 1
            if attempts > 1000 * cfg.n_far:
                raise TupleError(
                    f"cannot find {cfg.n_far} far images at least {cfg.far_spacing} m apart "
                    f"and {cfg.far_radius} m from anchor row {anchor}; lower tuples.n_far or "
                    "tuples.far_spacing"
                )
            candidate = int(rng.integers(len(self.xy)))
            if acceptable(candidate):
                chosen.append(candidate)
        return np.asarray(chosen, dtype=np.int64)
