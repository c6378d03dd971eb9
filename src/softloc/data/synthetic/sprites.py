"""Upright objects drawn as camera-facing billboards: trees, lamps, signs, people, bins."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

#: Sprite kinds.
TREE = 0  # trunk and round crown; ``size`` is the crown radius
LAMP = 1  # street lamp; ``top`` is the lamp head height, ``colour_b`` its light colour
SIGN = 2  # traffic sign on a post; ``colour_a`` plate colour, ``colour_b`` symbol colour
PERSON = 3  # pedestrian; ``colour_a`` coat, ``colour_b`` trousers
BIN = 4  # wheelie bin; ``colour_a`` body


@dataclass(frozen=True, eq=False)
class Sprites:
    """N billboards standing on the ground.

    Attributes:
        x, y: (N,) ground position, metres.
        kind: (N,) :data:`TREE`, :data:`LAMP`, :data:`SIGN`, :data:`PERSON` or :data:`BIN`.
        width: (N,) width of the body (trunk, post, person), metres.
        top: (N,) height of the top above the ground, metres.
        size: (N,) kind-specific size (crown radius, plate size), metres.
        colour_a, colour_b: (N, 3) kind-specific albedo (see the kinds).
        key: (N,) an id for per-object random numbers.
    """

    x: np.ndarray
    y: np.ndarray
    kind: np.ndarray
    width: np.ndarray
    top: np.ndarray
    size: np.ndarray
    colour_a: np.ndarray
    colour_b: np.ndarray
    key: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Sprites:
        """Sprites from one dict per object (keys: the field names)."""
        if not rows:
            return cls.empty()
        return cls(
            x=np.asarray([r["x"] for r in rows], dtype=np.float64),
            y=np.asarray([r["y"] for r in rows], dtype=np.float64),
            kind=np.asarray([r["kind"] for r in rows], dtype=np.int32),
            width=np.asarray([r["width"] for r in rows], dtype=np.float32),
            top=np.asarray([r["top"] for r in rows], dtype=np.float32),
            size=np.asarray([r.get("size", 0.0) for r in rows], dtype=np.float32),
            colour_a=np.asarray([r["colour_a"] for r in rows], dtype=np.float32).reshape(-1, 3),
            colour_b=np.asarray(
                [r.get("colour_b", (0.0, 0.0, 0.0)) for r in rows], dtype=np.float32
            ).reshape(-1, 3),
            key=np.asarray([r.get("key", 0) for r in rows], dtype=np.int64),
        )

    @classmethod
    def empty(cls) -> Sprites:
        """No sprites."""
        z = np.zeros(0)
        c = np.zeros((0, 3), dtype=np.float32)
        return cls(x=z, y=z, kind=z.astype(np.int32), width=z.astype(np.float32),
                   top=z.astype(np.float32), size=z.astype(np.float32), colour_a=c,
                   colour_b=c, key=z.astype(np.int64))

    @classmethod
    def concat(cls, parts: list[Sprites]) -> Sprites:
        """All sprites of ``parts``, in order."""
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})
