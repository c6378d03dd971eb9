"""Wall segments of boxes (buildings, parked cars) and the parameters that texture them.

Every box is a counter-clockwise polygon, so the outward normal of a wall from ``a`` to ``b``
points to the right of ``b - a``: a ray sees a wall only from outside (back faces are culled).
Texture parameters are per wall so that one vectorised function draws every facade.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

#: Wall kinds.
FACADE = 0  # street front of a building: windows, doors, shop signs
PLAIN = 1  # side or back of a building: few windows
CAR = 2  # side of a parked car

_VECTOR_FIELDS = ("base", "trim", "glass", "door_colour", "sign_a", "sign_b")


@dataclass(frozen=True)
class Walls:
    """N wall segments with their texture parameters (lengths in metres, colours RGB 0-1).

    Attributes:
        ax, ay, bx, by: (N,) end points; the outward normal is to the right of a -> b.
        height: (N,) top of the wall above the ground.
        kind: (N,) :data:`FACADE`, :data:`PLAIN` or :data:`CAR`.
        owner: (N,) id of the building or car (keys the per-window random numbers).
        base, trim, glass, door_colour: (N, 3) albedo of wall, ledges, windows, door.
        floor_h: (N,) storey height; ground_h: (N,) top of the ground floor.
        bay, bay_offset: (N,) window spacing along the wall and margin at both ends.
        win_w, win_h: (N,) window width (fraction of a bay) and height (fraction of a storey).
        window_keep: (N,) share of window places that hold a window.
        ledges: (N,) 1 where a string course runs under every storey.
        pilasters: (N,) 1 where trim-coloured pillars separate the bays.
        door_u, door_w, door_h: (N,) door centre along the wall, width (0: none), height.
        shop: (N,) 1 where the ground floor is a shop front with a sign.
        sign_u0, sign_u1, sign_z0, sign_z1: (N,) extent of the shop sign.
        sign_a, sign_b: (N, 3) colours of the sign's alternating panels.
        sign_panels: (N,) number of panels the sign is divided into.
    """

    ax: np.ndarray
    ay: np.ndarray
    bx: np.ndarray
    by: np.ndarray
    height: np.ndarray
    kind: np.ndarray
    owner: np.ndarray
    base: np.ndarray
    trim: np.ndarray
    glass: np.ndarray
    door_colour: np.ndarray
    floor_h: np.ndarray
    ground_h: np.ndarray
    bay: np.ndarray
    bay_offset: np.ndarray
    win_w: np.ndarray
    win_h: np.ndarray
    window_keep: np.ndarray
    ledges: np.ndarray
    pilasters: np.ndarray
    door_u: np.ndarray
    door_w: np.ndarray
    door_h: np.ndarray
    shop: np.ndarray
    sign_u0: np.ndarray
    sign_u1: np.ndarray
    sign_z0: np.ndarray
    sign_z1: np.ndarray
    sign_a: np.ndarray
    sign_b: np.ndarray
    sign_panels: np.ndarray

    def __len__(self) -> int:
        return len(self.ax)

    @property
    def length(self) -> np.ndarray:
        """(N,) wall lengths, metres."""
        return np.hypot(self.bx - self.ax, self.by - self.ay)

    @property
    def normal(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,) x and y of the unit outward normals."""
        ex, ey = self.bx - self.ax, self.by - self.ay
        n = np.maximum(np.hypot(ex, ey), 1e-9)
        return ey / n, -ex / n

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Walls:
        """Walls from one dict per wall (keys: the field names; missing scalars are 0)."""
        columns = {}
        for f in fields(cls):
            if f.name in _VECTOR_FIELDS:
                columns[f.name] = np.asarray(
                    [r.get(f.name, (0.0, 0.0, 0.0)) for r in rows], dtype=np.float32
                ).reshape(-1, 3)
            elif f.name in ("kind", "owner", "ledges", "pilasters", "shop", "sign_panels"):
                columns[f.name] = np.asarray([r.get(f.name, 0) for r in rows], dtype=np.int32)
            elif f.name in ("ax", "ay", "bx", "by"):
                columns[f.name] = np.asarray([r[f.name] for r in rows], dtype=np.float64)
            else:
                columns[f.name] = np.asarray([r.get(f.name, 0.0) for r in rows], dtype=np.float32)
        return cls(**columns)

    @classmethod
    def concat(cls, parts: list[Walls]) -> Walls:
        """All walls of ``parts``, in order."""
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})


def box_walls(corners: np.ndarray, kinds: tuple[int, int, int, int], **params: object) -> list[dict]:
    """Four wall rows for a box whose ``corners`` (4, 2) run counter-clockwise.

    Wall ``k`` runs from corner ``k`` to corner ``k + 1`` and gets kind ``kinds[k]``; every
    wall shares ``params`` (height, colours, window grid, ...).
    """
    rows = []
    for k in range(4):
        a, b = corners[k], corners[(k + 1) % 4]
        row = dict(params)
        row.update(ax=float(a[0]), ay=float(a[1]), bx=float(b[0]), by=float(b[1]), kind=kinds[k])
        rows.append(row)
    return rows
