"""The street grid and the closed route every drive follows.

The town is a grid of streets. The route runs around the outline of a random snake of city
blocks (a tree-shaped polyomino), so it turns left and right at junctions, passes side streets
and never comes close to itself except across a block. Corners are rounded with a fixed radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Radius of the rounded corners of the route, metres.
CORNER_RADIUS = 12.0

#: Spacing of the dense samples that describe the route, metres.
SAMPLE_STEP = 0.25

#: Grid cells the snake of blocks may occupy (columns x rows).
_MAX_GRID = (7, 6)


@dataclass(frozen=True, eq=False)
class StreetGrid:
    """Streets along grid lines: ``xs`` (C+1,) and ``ys`` (R+1,) street centres, metres."""

    xs: np.ndarray
    ys: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """Number of blocks (columns, rows)."""
        return len(self.xs) - 1, len(self.ys) - 1


@dataclass(frozen=True, eq=False)
class Route:
    """A closed curve sampled every :data:`SAMPLE_STEP` metres.

    Attributes:
        s: (M,) arc length of each sample, metres, from 0 to ``length`` (excluded).
        x, y: (M,) positions, metres.
        heading: (M,) direction of travel, radians counter-clockwise from +x, unwrapped.
        length: total length, metres.
        corners: (K, 2) the sharp corners the rounded curve follows, metres.
    """

    s: np.ndarray
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    length: float
    corners: np.ndarray

    def at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Position (x, y) and heading at arc lengths ``s`` (any shape, wraps around)."""
        s = np.mod(np.asarray(s, dtype=np.float64), self.length)
        ends = np.r_[self.s, self.length]
        x = np.interp(s, ends, np.r_[self.x, self.x[0]])
        y = np.interp(s, ends, np.r_[self.y, self.y[0]])
        # After one loop the heading has turned by +-2 pi; close the curve with that.
        turn = 2 * np.pi * np.round((self.heading[-1] - self.heading[0]) / (2 * np.pi))
        heading = np.interp(s, ends, np.r_[self.heading, self.heading[0] + turn])
        return x, y, heading


def random_grid(rng: np.random.Generator, block_size: float) -> StreetGrid:
    """Street lines with irregular spacing around ``block_size`` (0.75 to 1.25 times it)."""
    cols, rows = _MAX_GRID
    widths = block_size * rng.uniform(0.75, 1.25, size=cols + 2)
    heights = block_size * rng.uniform(0.75, 1.25, size=rows + 2)
    return StreetGrid(xs=np.r_[0.0, np.cumsum(widths)], ys=np.r_[0.0, np.cumsum(heights)])


def snake_of_blocks(
    rng: np.random.Generator, n_cells: int, bounds: tuple[int, int]
) -> set[tuple[int, int]]:
    """A random tree-shaped polyomino of ``n_cells`` cells whose outline is one simple loop.

    Each new cell touches exactly one cell of the shape along an edge and no other cell at a
    corner beyond it, so the outline never pinches and the perimeter is ``2 n + 2`` edges.
    Cells lie in ``[1, bounds[0]] x [1, bounds[1]]`` so that a ring of blocks surrounds them.
    """
    cols, rows = bounds
    n_cells = int(min(n_cells, cols * rows // 2 + 1))
    for _attempt in range(200):
        start = (int(rng.integers(1, cols + 1)), int(rng.integers(1, rows + 1)))
        cells = {start}
        while len(cells) < n_cells:
            options = _growth_options(cells, cols, rows)
            if not options:
                break
            cells.add(options[int(rng.integers(len(options)))])
        if len(cells) == n_cells:
            return cells
    raise RuntimeError(f"could not grow a snake of {n_cells} blocks in a {bounds} grid")


def _growth_options(
    cells: set[tuple[int, int]], cols: int, rows: int
) -> list[tuple[int, int]]:
    options = []
    steps = ((1, 0), (-1, 0), (0, 1), (0, -1))
    for cx, cy in sorted(cells):
        for dx, dy in steps:
            nx, ny = cx + dx, cy + dy
            if not (1 <= nx <= cols and 1 <= ny <= rows) or (nx, ny) in cells:
                continue
            touching = sum((nx + ex, ny + ey) in cells for ex, ey in steps)
            # Corners beyond the new cell, seen from its one neighbour, must be empty.
            far = [(nx + dx + dy, ny + dy + dx), (nx + dx - dy, ny + dy - dx)]
            if touching == 1 and not any(f in cells for f in far):
                options.append((nx, ny))
    return sorted(set(options))


def outline_corners(cells: set[tuple[int, int]], grid: StreetGrid) -> np.ndarray:
    """Corners (K, 2) of the counter-clockwise outline of ``cells`` on ``grid``, metres."""
    edges: dict[tuple[int, int], tuple[int, int]] = {}
    all_edges = set()
    for i, j in cells:
        loop = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)]
        for a, b in zip(loop, loop[1:] + loop[:1], strict=True):
            all_edges.add((a, b))
    for a, b in all_edges:
        if (b, a) not in all_edges:
            edges[a] = b
    start = min(edges)
    nodes = [start]
    while True:
        nxt = edges[nodes[-1]]
        if nxt == start:
            break
        nodes.append(nxt)
    corners = []
    n = len(nodes)
    for k in range(n):
        prev, here, nxt = nodes[k - 1], nodes[k], nodes[(k + 1) % n]
        d_in = (here[0] - prev[0], here[1] - prev[1])
        d_out = (nxt[0] - here[0], nxt[1] - here[1])
        if d_in != d_out:
            corners.append((grid.xs[here[0]], grid.ys[here[1]]))
    return np.asarray(corners, dtype=np.float64)


def rounded_loop(corners: np.ndarray, radius: float = CORNER_RADIUS) -> Route:
    """Sample the closed polygon ``corners`` (K, 2) with its corners rounded by ``radius``."""
    k = len(corners)
    pieces_x: list[np.ndarray] = []
    pieces_y: list[np.ndarray] = []
    for i in range(k):
        prev, here, nxt = corners[i - 1], corners[i], corners[(i + 1) % k]
        after = corners[(i + 2) % k]
        d_in = _unit(here - prev)
        d_out = _unit(nxt - here)
        r_here = min(radius, 0.4 * np.linalg.norm(here - prev), 0.4 * np.linalg.norm(nxt - here))
        r_next = min(radius, 0.4 * np.linalg.norm(nxt - here), 0.4 * np.linalg.norm(after - nxt))
        # Arc around corner ``here``.
        turn = np.sign(d_in[0] * d_out[1] - d_in[1] * d_out[0])
        left = np.array([-d_in[1], d_in[0]])
        centre = here - d_in * r_here + turn * left * r_here
        a0 = np.arctan2(*(here - d_in * r_here - centre)[::-1])
        n_arc = max(int(np.ceil(0.5 * np.pi * r_here / SAMPLE_STEP)), 2)
        angles = a0 + turn * np.linspace(0, 0.5 * np.pi, n_arc, endpoint=False)
        pieces_x.append(centre[0] + r_here * np.cos(angles))
        pieces_y.append(centre[1] + r_here * np.sin(angles))
        # Straight from the end of this arc to the start of the next one.
        p0 = here + d_out * r_here
        p1 = nxt - d_out * r_next
        n_line = max(int(np.ceil(np.linalg.norm(p1 - p0) / SAMPLE_STEP)), 1)
        t = np.linspace(0, 1, n_line, endpoint=False)
        pieces_x.append(p0[0] + t * (p1[0] - p0[0]))
        pieces_y.append(p0[1] + t * (p1[1] - p0[1]))
    x = np.concatenate(pieces_x)
    y = np.concatenate(pieces_y)
    step = np.hypot(np.diff(x, append=x[0]), np.diff(y, append=y[0]))
    s = np.r_[0.0, np.cumsum(step)[:-1]]
    dx = np.roll(x, -1) - np.roll(x, 1)
    dy = np.roll(y, -1) - np.roll(y, 1)
    heading = np.unwrap(np.arctan2(dy, dx))
    return Route(s=s, x=x, y=y, heading=heading, length=float(step.sum()), corners=corners)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def start_route(route: Route, start_s: float) -> Route:
    """The same loop with arc length 0 moved to ``start_s``."""
    i0 = int(np.searchsorted(route.s, np.mod(start_s, route.length)))
    order = np.r_[np.arange(i0, len(route.s)), np.arange(0, i0)]
    x, y = route.x[order], route.y[order]
    step = np.hypot(np.diff(x, append=x[0]), np.diff(y, append=y[0]))
    s = np.r_[0.0, np.cumsum(step)[:-1]]
    heading = np.unwrap(route.heading[order])
    return Route(s=s, x=x, y=y, heading=heading, length=float(step.sum()),
                 corners=route.corners)


def build_route(
    rng: np.random.Generator, route_length: float, block_size: float
) -> tuple[StreetGrid, Route, set[tuple[int, int]]]:
    """A street grid and a closed route of about ``route_length`` metres around some blocks.

    The snake has as many blocks as makes its outline closest to ``route_length`` at the
    nominal block size; then the grid is scaled so that the rounded route has that length.
    """
    edges = max(4, 2 * int(round(route_length / block_size / 2)))
    cells = snake_of_blocks(rng, edges // 2 - 1, _MAX_GRID)
    grid = random_grid(rng, block_size)
    # Keep the blocks of the snake and one ring of blocks around it.
    i0 = min(i for i, _ in cells) - 1
    j0 = min(j for _, j in cells) - 1
    i1 = max(i for i, _ in cells) + 1
    j1 = max(j for _, j in cells) + 1
    grid = StreetGrid(xs=grid.xs[i0 : i1 + 2] - grid.xs[i0], ys=grid.ys[j0 : j1 + 2] - grid.ys[j0])
    cells = {(i - i0, j - j0) for i, j in cells}
    corners = outline_corners(cells, grid)
    # Scale the grid so that the rounded route is route_length long (two passes converge
    # because rounding removes a nearly fixed length per corner).
    for _ in range(3):
        length = rounded_loop(corners).length
        scale = route_length / length
        grid = StreetGrid(xs=grid.xs * scale, ys=grid.ys * scale)
        corners = outline_corners(cells, grid)
    route = rounded_loop(corners)
    longest = _longest_side_middle(corners, route)
    route = start_route(route, longest)
    return grid, route, cells


def _longest_side_middle(corners: np.ndarray, route: Route) -> float:
    """Arc length of the middle of the route's longest straight side."""
    sides = np.roll(corners, -1, axis=0) - corners
    i = int(np.argmax(np.hypot(sides[:, 0], sides[:, 1])))
    middle = corners[i] + 0.5 * sides[i]
    nearest = int(np.argmin(np.hypot(route.x - middle[0], route.y - middle[1])))
    return float(route.s[nearest])


def region_labels(
    route: Route,
    fractions: tuple[float, float, float],
    gap: float,
    margin: float,
    step: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Region of each stretch of the route: 0 train, 1 val, 2 test, -1 gap.

    Regions follow each other along the route by ``fractions`` of its length. Around each
    boundary (and the start, where test meets train) a gap is cut, and then any sample closer
    than ``gap + margin`` to a sample of another region is dropped as well, so that frames
    up to ``margin / 2`` beside the route stay ``gap`` apart even across corners and blocks.

    Returns:
        s: (M,) arc lengths of samples every ``step`` metres.
        label: (M,) int8 region index or -1.
    """
    s = np.arange(0.0, route.length, step)
    bounds = np.cumsum((0.0,) + tuple(fractions)) * route.length
    label = (np.searchsorted(bounds, s, side="right") - 1).clip(0, 2).astype(np.int8)
    for b in bounds[:-1]:
        along = np.abs(s - b)
        along = np.minimum(along, route.length - along)
        label[along < gap / 2] = -1
    x, y, _ = route.at(s)
    keep = label.copy()
    reach = gap + margin
    for region in range(3):
        mine = np.flatnonzero(label == region)
        other = np.flatnonzero((label >= 0) & (label != region))
        if len(mine) == 0 or len(other) == 0:
            continue
        for chunk in np.array_split(mine, max(1, len(mine) // 512)):
            d = np.hypot(x[chunk, None] - x[None, other], y[chunk, None] - y[None, other])
            keep[chunk[d.min(axis=1) < reach]] = -1
    return s, keep
