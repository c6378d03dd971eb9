"""The shape most baseline loss modules share: validated keyword options and a function."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class OptionsLoss(nn.Module):
    """A loss module that stores its validated keyword options and calls ``function`` with
    them: the module form of a functional loss, with the options shown in its repr."""

    function: ClassVar[staticmethod]

    def __init__(self, **options: object) -> None:
        super().__init__()
        self.options = options

    def forward(self, descriptors: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """Loss of one tuple (anchor row 0)."""
        return type(self).function(descriptors, distances, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
