"""Descriptor extraction: images in, L2-normalised descriptors out, in batches."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from softloc.data.images import ImageStore


def image_store(
    model: torch.nn.Module, paths: Sequence[str | os.PathLike[str]], cache: bool = False
) -> ImageStore:
    """An image store that feeds ``paths`` at the model's input size (from its ``meta``)."""
    width, height = model.meta["preprocessing"]["image_size"]
    return ImageStore(paths, (int(width), int(height)), cache=cache)


@torch.no_grad()
def extract_descriptors(
    model: torch.nn.Module,
    store: ImageStore,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "extract",
) -> np.ndarray:
    """Descriptors of the store's images (all, or the rows in ``indices``).

    The model is put in eval mode for the extraction and returned to its previous mode; images
    go to the device of the model's parameters (CPU for a model without any).

    Returns:
        (N, D) float32 array, one row per requested image.
    """
    rows = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    model.eval()
    try:
        outputs = []
        starts = range(0, len(rows), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, unit="batch", leave=False):
            batch = store.batch(rows[start : start + batch_size]).to(device)
            outputs.append(model(batch).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not outputs:
        out_dim = int(getattr(model, "out_dim", 0))
        return np.zeros((0, out_dim), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32, copy=False)
