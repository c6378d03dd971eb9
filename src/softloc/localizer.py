"""The localization API: a map and its own model turn images into fixes with a confidence.

```python
import softloc
the_map = softloc.Map.open("runs/demo/maps/soft_contrastive")
localizer = softloc.Localizer(the_map)
for fix in localizer.localize(["q1.png", "q2.png"]):
    print(fix.x, fix.y, fix.confidence, fix.top_k[0].path)
```

A :class:`Fix` is what `softloc localize --format json` prints for one image. Images may be
paths, (H, W, 3) uint8 arrays or PIL images; they are resized to the model's input size as the
map's references were. :meth:`Localizer.localize_sequence` runs the hidden Markov filter of
:mod:`softloc.sequence` over ordered images (a drive, a video).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from softloc.confidence import DEFAULT_RADIUS_M, fix_confidence
from softloc.data.images import ImageError, to_tensor
from softloc.extract import extract_descriptors, image_store
from softloc.localize import QueryFailure, QueryResult, load_map_model
from softloc.mapping import Map, MapError
from softloc.sequence import SequenceConfig, filter_sequence

ESTIMATES: tuple[str, ...] = ("top1", "weighted")
SEQUENCE_CANDIDATES = 20  # top-K lattice of the sequence filter

ImageLike = str | os.PathLike[str] | np.ndarray | Image.Image


@dataclass(frozen=True)
class Reference:
    """One retrieved reference: its image (relative to the map's image root), position and
    squared descriptor distance to the query."""

    path: str
    x: float
    y: float
    distance: float


@dataclass(frozen=True)
class Fix:
    """Where one image was taken, according to the map.

    Attributes:
        image: the query (its path, or ``"<array i>"`` for an in-memory image).
        x, y, yaw: the estimated pose (metres, radians).
        confidence: in [0, 1], see :mod:`softloc.confidence`; calibrate it with
            ``softloc evaluate`` (the precision it buys per condition).
        top_k: the retrieved references, best first.
    """

    image: str
    x: float
    y: float
    yaw: float
    confidence: float
    top_k: list[Reference] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain types, the JSON layout of `softloc localize --format json`."""
        return asdict(self)


def estimate_position(
    positions: np.ndarray,
    distances: np.ndarray,
    estimate: str = "top1",
    radius: float = DEFAULT_RADIUS_M,
) -> tuple[float, float]:
    """The position of a fix from its top-k: the top-1's, or (``weighted``) the mean of the
    references within ``radius`` metres of the top-1, weighted by similarity (inner product
    ``1 - d / 2``, clipped at 0; the top-1 always counts)."""
    if estimate not in ESTIMATES:
        raise ValueError(f"estimate must be one of {ESTIMATES}, got {estimate!r}")
    positions = np.asarray(positions, dtype=np.float64)
    if estimate == "top1":
        return float(positions[0, 0]), float(positions[0, 1])
    near = np.linalg.norm(positions - positions[0], axis=1) <= radius
    weights = np.clip(1.0 - np.asarray(distances, dtype=np.float64) / 2.0, 0.0, None) * near
    if weights.sum() <= 0:
        return float(positions[0, 0]), float(positions[0, 1])
    x, y = (weights[:, None] * positions).sum(axis=0) / weights.sum()
    return float(x), float(y)


def make_fix(
    image: str,
    rows: np.ndarray,
    distances: np.ndarray,
    the_map: Map,
    estimate: str = "top1",
    radius: float = DEFAULT_RADIUS_M,
    best: int | None = None,
    k: int | None = None,
) -> Fix:
    """A :class:`Fix` from retrieved reference rows (best first) and their distances.

    ``best`` overrides the chosen reference (the sequence filter's choice, which must be one
    of ``rows``); it is then listed first. By default the top-1 is chosen. The list is cut to
    ``k`` references after that. The confidence is that of the listed references
    (:func:`fix_confidence`).
    """
    rows = np.asarray(rows, dtype=np.int64)
    distances = np.asarray(distances, dtype=np.float64)
    keep = rows >= 0
    rows, distances = rows[keep], distances[keep]
    positions = the_map.places.xy[rows]
    chosen = int(rows[0] if best is None else best)
    if best is not None and chosen != rows[0]:
        if chosen not in rows:
            raise ValueError(f"the chosen reference {chosen} is not among the retrieved rows")
        order = np.r_[np.flatnonzero(rows == chosen), np.flatnonzero(rows != chosen)]
        rows, distances, positions = rows[order], distances[order], positions[order]
    rows, distances, positions = rows[:k], distances[:k], positions[:k]
    x, y = estimate_position(positions, distances, estimate, radius)
    references = [
        Reference(str(the_map.places.path[r]), float(p[0]), float(p[1]), float(d))
        for r, p, d in zip(rows, positions, distances, strict=True)
    ]
    return Fix(
        image=image,
        x=x,
        y=y,
        yaw=float(the_map.places.yaw[chosen]),
        confidence=fix_confidence(distances, positions, radius),
        top_k=references,
    )


def fixes_from_results(
    outcomes: Sequence[QueryResult | QueryFailure],
    the_map: Map,
    k: int,
    estimate: str = "top1",
    radius: float = DEFAULT_RADIUS_M,
    sequence: SequenceConfig | None = None,
    timestamps: np.ndarray | None = None,
) -> list[Fix | tuple[str, str]]:
    """Fixes of `softloc.localize.localize_all` outcomes (failures as ``(image, reason)``).

    With ``sequence``, the readable frames are filtered in order as one sequence (their
    retrieval lists are the filter's lattice; a failed frame is left out of it, and its
    timestamp with it) and each fix is the filter's causal choice.
    """
    good = [i for i, o in enumerate(outcomes) if isinstance(o, QueryResult)]
    chosen: dict[int, int] = {}
    if sequence is not None and good:
        width = min(len(outcomes[i].rows) for i in good)
        rows = np.stack([outcomes[i].rows[:width] for i in good])
        dists = np.stack([outcomes[i].distances[:width] for i in good])
        stamps = None if timestamps is None else np.asarray(timestamps)[good]
        picked = filter_sequence(rows, dists, the_map.places.xy, sequence, stamps).rows
        chosen = dict(zip(good, picked.tolist(), strict=True))
    fixes: list[Fix | tuple[str, str]] = []
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, QueryFailure):
            fixes.append((str(outcome.image), outcome.reason))
            continue
        fixes.append(make_fix(str(outcome.image), outcome.rows, outcome.distances, the_map,
                              estimate, radius, best=chosen.get(i), k=k))
    return fixes


class Localizer:
    """Turns images into fixes with a map and the model that described its references.

    Args:
        the_map: a :class:`Map` opened from a folder, or the folder itself.
        k: references listed per fix.
        estimate: ``top1`` or ``weighted`` (see :func:`estimate_position`).
        radius: metres: the confidence's "another place", and the weighted estimate's reach.
        batch_size: images described at a time.
    """

    def __init__(
        self,
        the_map: Map | str | os.PathLike[str],
        k: int = 5,
        estimate: str = "top1",
        radius: float = DEFAULT_RADIUS_M,
        batch_size: int = 64,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if estimate not in ESTIMATES:
            raise ValueError(f"estimate must be one of {ESTIMATES}, got {estimate!r}")
        self.map = the_map if isinstance(the_map, Map) else Map.open(the_map)
        if self.map.folder is None:
            raise MapError("the map was built in memory and has no model: open a saved map "
                           "folder (softloc.Map.open) instead")
        self.model = load_map_model(self.map.folder)
        self.k, self.estimate, self.radius, self.batch_size = k, estimate, radius, batch_size

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) the model reads."""
        width, height = self.model.meta["preprocessing"]["image_size"]
        return int(width), int(height)

    def describe(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(len(images), D) descriptors of the images with the map's model.

        Raises:
            ImageError: an image cannot be read (the message names it).
        """
        images = list(images)
        out: list[np.ndarray | None] = [None] * len(images)
        path_rows = [i for i, im in enumerate(images) if isinstance(im, (str, os.PathLike))]
        if path_rows:
            store = image_store(self.model, [Path(images[i]) for i in path_rows])
            described = extract_descriptors(self.model, store, batch_size=self.batch_size)
            for i, row in zip(path_rows, described, strict=True):
                out[i] = row
        arrays = [i for i in range(len(images)) if out[i] is None]
        for start in range(0, len(arrays), self.batch_size):
            rows = arrays[start : start + self.batch_size]
            batch = np.stack([self._resized(images[i], i) for i in rows])
            for i, row in zip(rows, self._forward(batch), strict=True):
                out[i] = row
        if not images:
            return np.zeros((0, self.map.dim), dtype=np.float32)
        return np.stack(out).astype(np.float32, copy=False)

    def localize(self, images: Sequence[ImageLike]) -> list[Fix]:
        """One :class:`Fix` per image, in order, each from its own retrieval."""
        images = list(images)
        if not images:
            return []
        scores, rows = self.map.search(self.describe(images), self.k)
        return [
            make_fix(_name(im, i), r, np.maximum(2.0 - 2.0 * s.astype(np.float64), 0.0),
                     self.map, self.estimate, self.radius, k=self.k)
            for i, (im, s, r) in enumerate(zip(images, scores, rows, strict=True))
        ]

    def localize_sequence(
        self,
        images: Sequence[ImageLike],
        timestamps: Sequence[float] | np.ndarray | None = None,
        config: SequenceConfig | None = None,
        smooth: bool = False,
    ) -> list[Fix]:
        """Fixes of ordered images from the sequence filter (causal unless ``smooth``).

        Args:
            images: in the order taken.
            timestamps: seconds (any unit matching the config's speeds); None: the order.
            config: the filter's parameters (default: :class:`SequenceConfig`).
            smooth: use the Viterbi path over the whole sequence instead of the causal fixes.
        """
        images = list(images)
        if not images:
            return []
        config = config or SequenceConfig()
        k = max(self.k, SEQUENCE_CANDIDATES)
        scores, rows = self.map.search(self.describe(images), k)
        distances = np.maximum(2.0 - 2.0 * scores.astype(np.float64), 0.0)
        stamps = None if timestamps is None else np.asarray(timestamps, dtype=np.float64)
        fixes = filter_sequence(rows, distances, self.map.places.xy, config, stamps, smooth)
        chosen = fixes.smoothed_rows if smooth else fixes.rows
        return [
            make_fix(_name(im, i), r, d, self.map, self.estimate, self.radius, best=int(c),
                     k=self.k)
            for i, (im, r, d, c) in enumerate(zip(images, rows, distances, chosen, strict=True))
        ]

    def _resized(self, image: np.ndarray | Image.Image, position: int) -> np.ndarray:
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise ImageError(
                    f"image {position}: expected an (H, W, 3) uint8 RGB array, got "
                    f"{image.dtype} {image.shape}"
                )
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise ImageError(f"image {position}: expected a path, an array or a PIL image, got "
                             f"{type(image).__name__}")
        image = image.convert("RGB")
        if image.size != self.image_size:
            image = image.resize(self.image_size, Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)

    @torch.no_grad()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        device = next(self.model.parameters(), torch.empty(0)).device
        return self.model(to_tensor(batch).to(device)).float().cpu().numpy()


def _name(image: ImageLike, position: int) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"<array {position}>"
