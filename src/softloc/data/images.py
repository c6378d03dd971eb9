"""Decode, resize and normalise images; a bad file gives an error that names it.

Images enter the network as float tensors (B, 3, H, W) normalised with the ImageNet mean and
standard deviation, the convention of every backbone we build. Until then they travel as
uint8 (H, W, 3) arrays: decoded here, or read from the memory-mapped cache
(:mod:`softloc.data.image_cache`); :mod:`softloc.data.pipeline` batches them in parallel and
normalises them on the device.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An image is missing or cannot be decoded."""


class ImageTooLargeError(ImageError):
    """An image is over Pillow's decompression-bomb limit (it is not decoded)."""


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
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(
            f"{path}: image too large: {error}; it is over Pillow's limit of "
            f"{Image.MAX_IMAGE_PIXELS} pixels against decompression bombs: shrink the file, "
            "or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from error
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
    return normalise(torch.from_numpy(np.ascontiguousarray(array)), mean, std)


def normalise(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """(B, H, W, 3) uint8 tensor -> (B, 3, H, W) float32, normalised, on the tensor's device.

    The one place the network's input values are made: on a GPU the uint8 images travel (4x
    fewer bytes than float32) and become floats there; on the CPU the values are the same
    bit for bit whichever path the images came by.
    """
    tensor = images.permute(0, 3, 1, 2).float() / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (tensor - mean_t) / std_t


class ImageStore:
    """Images of one dataset by row index, at one size: read from a memory-mapped cache when
    one is given (:class:`softloc.data.image_cache.ImageCache`), decoded from the files
    otherwise. Nothing is kept in memory, so the store's memory does not grow with the
    images read.

    Args:
        paths: absolute image paths, one per row of the place table.
        size: (width, height) every image is resized to.
        cache: the dataset's image cache at ``size`` (same rows), or None to decode.
        where: optional label per row naming its source row, e.g. ``"places.csv, line 7"``;
            errors about an image then name it too.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        size: tuple[int, int],
        cache: ImageCacheLike | None = None,
        where: Sequence[str] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.size = (int(size[0]), int(size[1]))
        if cache is not None and (len(cache) != len(self.paths) or cache.size != self.size):
            raise ValueError(
                f"the image cache holds {len(cache)} images at {cache.size}, the store "
                f"{len(self.paths)} at {self.size}"
            )
        self.cache = cache
        self.where = list(where) if where is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 image of row ``index``."""
        if self.cache is not None:
            return self.cache.read([index])[0]
        return self.decode(index)

    def decode(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 image of row ``index``, decoded from its file.

        Raises:
            ImageError: the file is missing or bad; the message names it and its row.
        """
        try:
            return load_image(self.paths[index], self.size)
        except ImageError as error:
            if self.where is None:
                raise
            raise ImageError(f"{self.where[index]}: {error}") from error

    def images(
        self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """(B, H, W, 3) uint8 images of the given rows (into ``out`` if given)."""
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if out is None:
            out = np.empty((len(rows), self.size[1], self.size[0], 3), dtype=np.uint8)
        if self.cache is not None:
            return self.cache.read(rows, out=out)
        for i, row in enumerate(rows):
            out[i] = self.decode(int(row))
        return out

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """(B, 3, H, W) normalised tensor of the given rows."""
        return to_tensor(self.images(indices))

    def check(self) -> list[str]:
        """Try to decode every image; return one message per bad file (nothing is raised)."""
        problems = []
        for index in range(len(self)):
            try:
                self.decode(index)
            except ImageError as error:
                problems.append(str(error))
        return problems


class ImageCacheLike(Protocol):
    """What :class:`ImageStore` needs of a cache: its row count, its size and row reads."""

    size: tuple[int, int]

    def __len__(self) -> int: ...

    def read(
        self, rows: Sequence[int] | np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray: ...
