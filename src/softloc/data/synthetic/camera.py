"""Camera pose, pinhole camera and the G-buffer a rendered view is described by."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pose:
    """Camera position (metres) and heading (radians, counter-clockwise from +x)."""

    x: float
    y: float
    yaw: float


@dataclass(frozen=True)
class Camera:
    """A forward-looking pinhole camera with square pixels, no pitch or roll.

    Attributes:
        width, height: image size, pixels.
        fov_deg: horizontal field of view, degrees.
        height_m: height above the ground, metres.
        view_distance: farthest wall drawn, metres.
    """

    width: int = 120
    height: int = 90
    fov_deg: float = 66.0
    height_m: float = 1.5
    view_distance: float = 220.0

    @property
    def focal(self) -> float:
        """Focal length in pixels."""
        return 0.5 * self.width / math.tan(math.radians(self.fov_deg) / 2)

    def column_slopes(self) -> np.ndarray:
        """(W,) lateral offset per metre of depth of each column's ray (positive right)."""
        return (np.arange(self.width) + 0.5 - 0.5 * self.width) / self.focal

    def row_slopes(self) -> np.ndarray:
        """(H,) drop per metre of depth of each row's ray (positive below the horizon)."""
        return (np.arange(self.height) + 0.5 - 0.5 * self.height) / self.focal


@dataclass(eq=False)
class GBuffer:
    """Per-pixel surface attributes of one view, flattened to P = H * W pixels (row-major).

    Attributes:
        albedo: (P, 3) float32 surface colour before lighting.
        material: (P,) int8 material code (:mod:`.materials`).
        depth: (P,) float32 forward distance, metres (inf for sky).
        x, y, z: (P,) float32 world position of the surface, metres.
        nx, ny: (P,) float32 horizontal unit normal (0, 0 for the ground).
        key: (P,) float32 random number in [0, 1) per window, shop front or sign, or the
            leaf pattern of tree crowns (0 elsewhere).
        light: (P, 3) float32 light colour of lamp heads (0 elsewhere).
        lateral: (P,) float32 signed distance from the street centre line (ground only).
    """

    albedo: np.ndarray
    material: np.ndarray
    depth: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    nx: np.ndarray
    ny: np.ndarray
    key: np.ndarray
    light: np.ndarray
    lateral: np.ndarray
