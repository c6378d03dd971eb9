"""Small geometric utilities shared by tuples, maps and evaluation."""

from __future__ import annotations

import numpy as np


def pairwise_distances(xy: np.ndarray) -> np.ndarray:
    """(N, N) Euclidean distances (metres) between (N, 2) positions."""
    xy = np.asarray(xy, dtype=np.float64)
    diff = xy[:, None, :] - xy[None, :, :]
    return np.sqrt((diff**2).sum(axis=-1))


def heading_difference(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Absolute difference between headings in radians, wrapped to [0, pi]."""
    diff = np.mod(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), 2 * np.pi)
    return np.minimum(diff, 2 * np.pi - diff)
