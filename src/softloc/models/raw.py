"""Raw pixels as a descriptor: the sanity baseline every results table keeps.

The ``raw`` backbone passes the normalised image through unchanged (so ``forward_features`` is
the image itself); the ``thumbnail`` pooling shrinks it to a small grid, removes each
descriptor's mean and L2-normalises (nearest neighbour by normalised cross-correlation of
thumbnails). No parameters: nothing to train.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from softloc.models.backbones import register_backbone
from softloc.models.pooling import register_pooling


class RawImage(nn.Module):
    """Identity backbone with three output channels."""

    out_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register_backbone("raw")
def _raw() -> nn.Module:
    return RawImage()


def thumbnail(x: torch.Tensor, grid: Sequence[int] = (24, 32)) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * gh * gw): area-downsampled, mean-removed, L2-normalised."""
    small = F.adaptive_avg_pool2d(x, tuple(int(g) for g in grid)).flatten(1)
    small = small - small.mean(dim=1, keepdim=True)
    return F.normalize(small, dim=1)


@register_pooling("thumbnail")
class Thumbnail(nn.Module):
    """Module form of :func:`thumbnail`; ``out_dim = dim * gh * gw``.

    Args:
        grid: (height, width) of the thumbnail.
        dim: channel count of the input.
    """

    def __init__(self, grid: Sequence[int] = (24, 32), dim: int = 3) -> None:
        super().__init__()
        if len(grid) != 2 or min(int(g) for g in grid) < 1:
            raise ValueError(f"thumbnail grid must be two positive integers, got {grid}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.out_dim = int(dim) * self.grid[0] * self.grid[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return thumbnail(x, self.grid)
