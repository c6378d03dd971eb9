"""Wall segments of boxes (buildings, parked cars) and the parameters that texture them.

Every box is a counter-clockwise polygon, so the outward normal of a wall from ``a`` to ``b``
points to the right of ``b - a``: a ray sees a wall only from outside (back faces are culled).
Texture parameters are per wall so that one vectorised function draws every facade.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

#: Wall kinds.
FACADE = 0  # street front of a building: windows, doors, shop signs
PLAIN = 1  # side or back of a building: few windows
CAR = 2  # side of a parked car

_VECTOR_FIELDS = ("base", "trim", "glass", "door_colour", "sign_a", "sign_b")

#: Colours per wall, looked up by slot: houses use base, plinth, trim, glass, door, sign
#: colour a, sign colour b, shop glass; cars use body, bumper, tail light, glass, tyre.
PALETTE_SLOTS = 8
(BASE, PLINTH, TRIM, GLASS, DOOR_SLOT, SIGN_A, SIGN_B, SHOP_GLASS_SLOT) = range(8)
(BODY, BUMPER, TAIL_LIGHT, CAR_GLASS_SLOT, TYRE) = range(5)


@dataclass(frozen=True, eq=False)
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

    def __post_init__(self) -> None:
        ex, ey = self.bx - self.ax, self.by - self.ay
        length = np.hypot(ex, ey)
        safe = np.maximum(length, 1e-9)
        # Derived once: read on every frame.
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "normal", ((ey / safe).astype(np.float32),
                                            (-ex / safe).astype(np.float32)))
        object.__setattr__(self, "palette", _palette(self))

    #: (N,) wall lengths, metres (derived from the end points).
    length: np.ndarray = field(init=False, repr=False, compare=False)
    #: x and y (N,) of the unit outward normals (derived from the end points).
    normal: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)

    #: (N * PALETTE_SLOTS, 3) the colours each wall uses, see :data:`PALETTE_SLOTS`.
    palette: np.ndarray = field(init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ax)

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Walls:
        """Walls from one dict per wall (keys: the field names; missing scalars are 0)."""
        columns = {}
        for f in fields(cls):
            if not f.init:
                continue
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
                      for f in fields(cls) if f.init})


def box_walls(
    corners: np.ndarray, kinds: tuple[int, int, int, int], **params: object
) -> list[dict]:
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


def _palette(walls: Walls) -> np.ndarray:
    """Colours of every wall's slots, flattened to (N * PALETTE_SLOTS, 3) float32."""
    n = len(walls.ax)
    palette = np.zeros((n, PALETTE_SLOTS, 3), dtype=np.float32)
    palette[:, BASE] = walls.base
    palette[:, PLINTH] = walls.base * 0.7
    palette[:, TRIM] = walls.trim
    palette[:, GLASS] = walls.glass
    palette[:, DOOR_SLOT] = walls.door_colour
    palette[:, SIGN_A] = walls.sign_a
    palette[:, SIGN_B] = walls.sign_b
    palette[:, SHOP_GLASS_SLOT] = np.minimum(walls.glass * 1.1, 1.0)
    car = walls.kind == CAR
    palette[car, BUMPER] = walls.base[car] * 0.45
    palette[car, TAIL_LIGHT] = (0.75, 0.12, 0.08)
    palette[car, CAR_GLASS_SLOT] = (0.12, 0.14, 0.17)
    palette[car, TYRE] = (0.06, 0.06, 0.06)
    return palette.reshape(-1, 3)
