"""Decode, resize and normalise images; a bad file gives an error that names it.

Images enter the network as float tensors (B, 3, H, W) normalised with the ImageNet mean and
standard deviation, the convention of every backbone we build.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An image is missing or cannot be decoded."""


def load_image(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, resized to ``size`` = (width, height) if given.

    Raises:
        ImageError: the file is missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(
            f"{path}: image not found; check the path (for a dataset: its root folder), or "
            "regenerate the dataset"
        )
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None and image.size != tuple(size):
                image = image.resize(tuple(size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageError(
            f"{path}: cannot decode image ({error}); replace the file or drop its row"
        ) from error


def to_tensor(
    images: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """(B, H, W, 3) or (H, W, 3) uint8 -> (B, 3, H, W) float32, normalised."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) images, got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (tensor - mean_t) / std_t


class ImageStore:
    """Images of one dataset by row index, resized to one size, optionally kept in memory.

    Args:
        paths: absolute image paths, one per row of the place table.
        size: (width, height) every image is resized to.
        cache: keep decoded images in memory after the first read.
    """

    def __init__(
        self, paths: Sequence[str | os.PathLike[str]], size: tuple[int, int], cache: bool = True
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.size = (int(size[0]), int(size[1]))
        self.cache = cache
        self._images: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 image of row ``index``."""
        image = self._images.get(index)
        if image is None:
            image = load_image(self.paths[index], self.size)
            if self.cache:
                self._images[index] = image
        return image

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """(B, 3, H, W) normalised tensor of the given rows."""
        return to_tensor(np.stack([self.get(int(i)) for i in indices]))

    def check(self) -> list[str]:
        """Try to decode every image; return one message per bad file (nothing is raised)."""
        problems = []
        for index in range(len(self)):
            try:
                self.get(index)
            except ImageError as error:
                problems.append(str(error))
        return problems
