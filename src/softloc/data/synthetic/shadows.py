"""Hard sun shadows from a height map.

For a sun at elevation ``e`` in horizontal direction ``s``, a point p at height z is in shadow
when some blocker at p + k s (k > 0 metres towards the sun) is taller than z + k tan(e). So the
*shadow top* ``S(p) = max_k (height(p + k s) - k tan e)`` answers every query: ground points are
shaded where S > 0, wall points where z < S. S is computed once per sunny drive on a grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ShadowMap:
    """Shadow top heights on a grid.

    Attributes:
        origin: (2,) world position (metres) of cell [0, 0]'s corner.
        cell: cell size, metres.
        top: (Nx, Ny) float32 height (metres) below which a point is in shadow.
    """

    origin: np.ndarray
    cell: float
    top: np.ndarray

    def lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Shadow top height at world points (x, y), 0 outside the grid."""
        i = np.floor((x - self.origin[0]) / self.cell).astype(np.int64)
        j = np.floor((y - self.origin[1]) / self.cell).astype(np.int64)
        inside = (i >= 0) & (i < self.top.shape[0]) & (j >= 0) & (j < self.top.shape[1])
        out = np.zeros(np.shape(x), dtype=np.float32)
        out[inside] = self.top[i[inside], j[inside]]
        return out


def height_map(
    boxes: np.ndarray, heights: np.ndarray, extent: tuple[float, float, float, float],
    cell: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise axis-aligned boxes (B, 4) = (x0, y0, x1, y1) with ``heights`` (B,) metres.

    Returns:
        origin (2,) and the (Nx, Ny) float32 map of the tallest box over each cell centre.
    """
    x0, y0, x1, y1 = extent
    nx = int(np.ceil((x1 - x0) / cell))
    ny = int(np.ceil((y1 - y0) / cell))
    grid = np.zeros((nx, ny), dtype=np.float32)
    i0 = np.clip(np.ceil((boxes[:, 0] - x0) / cell - 0.5).astype(int), 0, nx)
    i1 = np.clip(np.floor((boxes[:, 2] - x0) / cell - 0.5).astype(int) + 1, 0, nx)
    j0 = np.clip(np.ceil((boxes[:, 1] - y0) / cell - 0.5).astype(int), 0, ny)
    j1 = np.clip(np.floor((boxes[:, 3] - y0) / cell - 0.5).astype(int) + 1, 0, ny)
    for a, b, c, d, h in zip(i0, i1, j0, j1, heights, strict=True):
        if b > a and d > c:
            np.maximum(grid[a:b, c:d], h, out=grid[a:b, c:d])
    return np.array([x0, y0], dtype=np.float64), grid


def shadow_map(
    boxes: np.ndarray,
    heights: np.ndarray,
    extent: tuple[float, float, float, float],
    azimuth: float,
    elevation: float,
    cell: float = 0.5,
) -> ShadowMap:
    """Shadow tops of ``boxes`` (B, 4) for a sun at ``azimuth``, ``elevation`` (radians).

    ``azimuth`` is the direction towards the sun, counter-clockwise from +x.
    """
    origin, heights_grid = height_map(boxes, heights, extent, cell)
    tallest = float(heights_grid.max()) if heights_grid.size else 0.0
    top = np.zeros_like(heights_grid)
    drop = cell * np.tan(elevation)  # height lost per step towards the sun
    steps = int(np.ceil(tallest / max(drop, 1e-6)))
    nx, ny = heights_grid.shape
    sx, sy = np.cos(azimuth), np.sin(azimuth)
    for k in range(1, steps + 1):
        di = int(round(k * sx))
        dj = int(round(k * sy))
        if abs(di) >= nx or abs(dj) >= ny:
            break
        target = top[max(0, -di) : nx - max(0, di), max(0, -dj) : ny - max(0, dj)]
        source = heights_grid[max(0, di) : nx - max(0, -di), max(0, dj) : ny - max(0, -dj)]
        np.maximum(target, source - k * drop, out=target)
    return ShadowMap(origin=origin, cell=cell, top=top)
