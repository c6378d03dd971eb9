"""A 2-D colour code for positions: every place of the test region gets its own colour.

The t-SNE pictures colour each query descriptor by where the query was taken; the colour key
is a map of the reference positions drawn with the same function, so a point's colour can be
looked up on the map. Hue follows the normalised easting ``u`` (red -> violet, stopping short
of red again so the two ends never share a colour) and saturation / brightness follow the
normalised northing ``v`` (deep and saturated in the south, pale and bright in the north).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.colors import hsv_to_rgb

#: Largest hue used (0 = red, 0.8 = violet), so u = 0 and u = 1 differ in colour.
MAX_HUE = 0.8


@dataclass(frozen=True)
class RegionBounds:
    """Bounding box of a region in metres; spans of zero are treated as 1 m."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @classmethod
    def around(cls, *positions: np.ndarray) -> RegionBounds:
        """The smallest box holding every (N, 2) array of positions given.

        Raises:
            ValueError: no positions, or NaN / infinite ones.
        """
        stacked = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in positions]
        xy = np.concatenate(stacked) if stacked else np.zeros((0, 2))
        if len(xy) == 0:
            raise ValueError("no positions to bound: give at least one (x, y) in metres")
        if not np.all(np.isfinite(xy)):
            raise ValueError("positions hold NaN or infinite values; drop or fix those rows")
        (xmin, ymin), (xmax, ymax) = xy.min(axis=0), xy.max(axis=0)
        return cls(float(xmin), float(ymin), float(xmax), float(ymax))

    def normalise(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) positions -> (N, 2) ``(u, v)`` in [0, 1] (outside the box: clipped)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        span = np.array([self.xmax - self.xmin, self.ymax - self.ymin])
        span = np.where(span > 0, span, 1.0)
        return np.clip((xy - [self.xmin, self.ymin]) / span, 0.0, 1.0)


def position_colors(xy: np.ndarray, bounds: RegionBounds) -> np.ndarray:
    """(N, 2) positions in metres -> (N, 3) RGB colours in [0, 1] (the 2-D colour code)."""
    uv = bounds.normalise(xy)
    hue = MAX_HUE * uv[:, 0]
    saturation = 1.0 - 0.65 * uv[:, 1]
    value = 0.7 + 0.3 * uv[:, 1]
    return hsv_to_rgb(np.stack([hue, saturation, value], axis=1))


def draw_color_key(ax, ref_xy: np.ndarray, bounds: RegionBounds, size: float = 14.0) -> None:
    """Draw the colour key on ``ax``: the reference positions, each in its own colour."""
    ref_xy = np.asarray(ref_xy, dtype=np.float64).reshape(-1, 2)
    ax.scatter(ref_xy[:, 0], ref_xy[:, 1], c=position_colors(ref_xy, bounds), s=size,
               linewidths=0)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title("colour key: reference positions")
