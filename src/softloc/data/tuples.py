"""Training tuples: an anchor, images near it and images far from it, with their distances.

The tuple convention every loss relies on: row 0 is the anchor, rows ``1 .. n_near`` are the
near images, the remaining rows are the far images. The full matrix of metric distances between
the tuple's camera positions travels with it, so soft losses can weight every pair.
"""

from __future__ import annotations

from collections.abc import Callable
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


def _grid_points_near(arc: np.ndarray, offset: float, spacing: float) -> np.ndarray:
    """The points of the grid ``offset + k * spacing`` (``0 <= offset + k * spacing <=
    arc[-1]``) that can be the grid point nearest to some value of ``arc`` from either side.

    Every frame's nearest grid points below and above it, and their neighbours, are kept: a
    grid point whose nearest frame is frame i lies in frame i's interval of the arc, so the
    grid point of that interval closest to frame i (one of those kept) picks frame i too. The
    values are computed as ``np.arange(offset, arc[-1] + 1e-9, spacing)`` computes them.
    """
    count = int(np.ceil((arc[-1] + 1e-9 - offset) / spacing))
    if count <= 0:
        return np.zeros(0)
    below = np.floor((arc - offset) / spacing).astype(np.int64)
    ks = np.unique((below[:, None] + np.arange(-1, 3)[None, :]).ravel())
    ks = ks[(ks >= 0) & (ks < count)]
    delta = (offset + spacing) - offset  # the step np.arange fills with after its 2nd value
    return np.where(ks == 1, offset + spacing, offset + ks * delta)


@dataclass(frozen=True)
class MiningCache:
    """Descriptors of a random sample of the sampler's places, for hard-example mining.

    Attributes:
        rows: (N,) rows of the sampler's place table, sorted.
        descriptors: (N, D) float32 descriptors of those rows (memory: N * D * 4 bytes).
        describe: the descriptor (D,) of any row (used for the tuple's anchor).
        hard_fraction: share of the near and of the far images that are mined.
    """

    rows: np.ndarray
    descriptors: np.ndarray
    describe: Callable[[int], np.ndarray]
    hard_fraction: float = 0.5


class TupleSampler:
    """Draws training tuples from a table of places (usually the train split).

    Anchors are frames of ``reference_traversal`` that have enough near images, taken every
    ``anchor_spacing`` metres along the drive from an offset drawn per epoch
    (:meth:`epoch_anchors`); near images come from every traversal (so a tuple mixes
    conditions) within ``near_radius`` and ``max_heading_deg``; far images lie beyond
    ``far_radius``, a share of them in the band up to ``band_radius``, and are mutually at
    least ``far_spacing`` apart. With a :class:`MiningCache`, a share of the near and far
    images are the hardest cached ones instead.

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
        candidates = candidates[np.argsort(places.timestamp[candidates], kind="stable")]
        steps = np.linalg.norm(np.diff(self.xy[candidates], axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(steps)])
        distances, neighbours = self._tree.radius_neighbors(
            self.xy[candidates], radius=config.band_radius
        )
        max_heading = np.deg2rad(config.max_heading_deg)
        self._anchors: list[int] = []
        self._near: list[np.ndarray] = []
        self._band: list[np.ndarray] = []
        arcs: list[float] = []
        for anchor, dist, neigh, position in zip(
            candidates, distances, neighbours, arc, strict=True
        ):
            heading_ok = heading_difference(places.yaw[neigh], places.yaw[anchor]) <= max_heading
            near = neigh[(dist < config.near_radius) & heading_ok & (neigh != anchor)]
            if len(near) < config.n_near:
                continue
            self._anchors.append(int(anchor))
            arcs.append(float(position))
            self._near.append(np.sort(near))
            self._band.append(np.sort(neigh[dist >= config.far_radius]))
        if not self._anchors:
            raise TupleError(
                f"no anchor has {config.n_near} near images within {config.near_radius} m and "
                f"{config.max_heading_deg} deg among {len(places)} places; lower tuples.n_near "
                "or raise tuples.near_radius"
            )
        self._arc = np.asarray(arcs)
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

    def epoch_anchors(self, rng: np.random.Generator) -> np.ndarray:
        """Anchors of one epoch, as positions in :attr:`anchors`.

        One anchor every ``anchor_spacing`` metres along each continuous stretch of the
        reference drive: target distances lie on a grid of that spacing along the drive's arc,
        starting at an offset drawn uniformly from ``[0, anchor_spacing)`` with ``rng`` (so
        each epoch sees other frames), and each target takes the usable frame nearest along
        the drive. Only the grid points next to a usable frame are formed (at most four per
        frame), so a drive that jumps (several drives in one traversal, places kilometres
        apart) costs memory in proportion to its frames, not to the distance it spans; the
        result is the same as forming every grid point of the whole arc.
        """
        spacing = self.config.anchor_spacing
        if spacing <= 0:
            return np.arange(len(self._anchors))
        offset = rng.uniform(0.0, spacing)
        if len(self._arc) == 1:
            return np.zeros(1, dtype=np.int64)
        targets = _grid_points_near(self._arc, offset, spacing)
        if len(targets) == 0:  # a drive shorter than the offset: one anchor
            targets = np.array([min(offset, self._arc[-1])])
        right = np.clip(np.searchsorted(self._arc, targets), 1, len(self._arc) - 1)
        left = right - 1
        nearer_left = (targets - self._arc[left]) <= (self._arc[right] - targets)
        chosen = np.unique(np.where(nearer_left, left, right))
        return chosen.astype(np.int64)

    def sample(
        self,
        rng: np.random.Generator,
        anchors: np.ndarray | None = None,
        mining: MiningCache | None = None,
    ) -> TrainingTuple:
        """Draw one tuple using ``rng`` (the only source of randomness).

        Args:
            rng: the generator.
            anchors: positions in :attr:`anchors` to draw the anchor from (e.g.
                :meth:`epoch_anchors`); all usable anchors when omitted.
            mining: a descriptor cache: ``round(n * hard_fraction)`` of the near images are
                the cached near images farthest from the anchor in descriptor space, and as
                many far images the cached far ones closest to it; the rest are random.
        """
        cfg = self.config
        if anchors is None:
            k = int(rng.integers(len(self._anchors)))
        else:
            k = int(anchors[rng.integers(len(anchors))])
        anchor = self._anchors[k]
        hard_near: list[int] = []
        hard_far: list[int] = []
        if mining is not None:
            hard_near, hard_far = self._mine(anchor, self._near[k], mining)
        pool = np.setdiff1d(self._near[k], hard_near)
        near = rng.choice(pool, size=cfg.n_near - len(hard_near), replace=False)
        far = self._draw_far(anchor, self._band[k], rng, hard_far)
        indices = np.concatenate([[anchor], near, hard_near, far]).astype(np.int64)
        return TrainingTuple(
            indices=indices, distances=pairwise_distances(self.xy[indices]), n_near=cfg.n_near
        )

    def _mine(
        self, anchor: int, near: np.ndarray, mining: MiningCache
    ) -> tuple[list[int], list[int]]:
        """Hard near and far rows of ``anchor`` among the cached ones."""
        cfg = self.config
        n_near = int(round(cfg.n_near * mining.hard_fraction))
        n_far = int(round(cfg.n_far * mining.hard_fraction))
        if n_near == 0 and n_far == 0:
            return [], []
        query = np.asarray(mining.describe(anchor), dtype=np.float32)
        gaps = ((mining.descriptors - query[None, :]) ** 2).sum(axis=1)
        is_near = np.isin(mining.rows, near)
        near_order = np.flatnonzero(is_near)[np.argsort(-gaps[is_near], kind="stable")]
        hard_near = [int(mining.rows[i]) for i in near_order[:n_near]]
        metres = np.linalg.norm(self.xy[mining.rows] - self.xy[anchor], axis=1)
        is_far = metres >= cfg.far_radius
        far_order = np.flatnonzero(is_far)[np.argsort(gaps[is_far], kind="stable")]
        hard_far: list[int] = []
        for i in far_order:
            if len(hard_far) >= n_far:
                break
            candidate = int(mining.rows[i])
            if hard_far and np.linalg.norm(
                self.xy[hard_far] - self.xy[candidate], axis=1
            ).min() < cfg.far_spacing:
                continue
            hard_far.append(candidate)
        return hard_near, hard_far

    def _draw_far(
        self, anchor: int, band: np.ndarray, rng: np.random.Generator, hard: list[int]
    ) -> np.ndarray:
        """Far rows: ``hard`` first, then band and random ones (so the last row, the quadruplet
        losses' extra far image, is a random one unless every far image is hard)."""
        cfg = self.config
        chosen: list[int] = list(hard)

        def acceptable(candidate: int) -> bool:
            if np.hypot(*(self.xy[candidate] - self.xy[anchor])) < cfg.far_radius:
                return False
            if not chosen:
                return True
            gaps = np.linalg.norm(self.xy[chosen] - self.xy[candidate], axis=1)
            return bool(gaps.min() >= cfg.far_spacing)

        n_band = len(hard) + int(round((cfg.n_far - len(hard)) * cfg.band_fraction))
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
