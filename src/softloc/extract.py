"""Descriptor extraction: images in, L2-normalised descriptors out, in batches.

Images come through the image pipeline (:mod:`softloc.data.pipeline`): read by worker threads
ahead of the network, normalised on the model's device.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from softloc.data.images import ImageStore
from softloc.data.pipeline import ImagePipeline, resolve_workers
from softloc.precision import autocast, check_amp


def image_store(model: torch.nn.Module, paths: Sequence[str | os.PathLike[str]]) -> ImageStore:
    """An image store that decodes ``paths`` at the model's input size (from its ``meta``)."""
    width, height = model.meta["preprocessing"]["image_size"]
    return ImageStore(paths, (int(width), int(height)))


def model_pipeline(
    model: torch.nn.Module,
    store: ImageStore,
    workers: int | None = None,
    prefetch: int = 2,
    channels_last: bool = False,
) -> ImagePipeline:
    """A pipeline feeding ``store`` to ``model``: its device, its normalisation."""
    device = next(model.parameters(), torch.empty(0)).device
    meta = getattr(model, "meta", None)
    pre = meta["preprocessing"] if isinstance(meta, dict) and "preprocessing" in meta else {}
    kwargs = {k: pre[k] for k in ("mean", "std") if k in pre}
    return ImagePipeline(
        store, resolve_workers(workers), prefetch, device, channels_last=channels_last, **kwargs
    )


def iter_descriptor_batches(
    model: torch.nn.Module,
    store: ImageStore | ImagePipeline,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "extract",
    amp: str = "off",
) -> Iterator[np.ndarray]:
    """The descriptors of :func:`extract_descriptors`, one (B, D) float32 batch at a time, so
    that a caller can write them out (a streamed map build) instead of holding them all."""
    check_amp(amp)
    pipeline = store if isinstance(store, ImagePipeline) else model_pipeline(model, store)
    rows = (
        np.arange(len(pipeline.store)) if indices is None else np.asarray(indices, dtype=np.int64)
    )
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    model.eval()
    try:
        batches = pipeline.batches(rows, batch_size)
        total = (len(rows) + batch_size - 1) // batch_size
        for batch in tqdm(batches, total=total, desc=desc, disable=not progress, unit="batch",
                          leave=False):
            with torch.no_grad():
                with autocast(device, amp):
                    described = model(batch)
                rows_out = described.detach().float().cpu().numpy().astype(np.float32,
                                                                            copy=False)
            yield rows_out
    finally:
        model.train(was_training)
        if pipeline is not store:
            pipeline.close()


def extract_descriptors(
    model: torch.nn.Module,
    store: ImageStore | ImagePipeline,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "extract",
    amp: str = "off",
) -> np.ndarray:
    """Descriptors of the store's images (all, or the rows in ``indices``).

    The model is put in eval mode for the extraction and returned to its previous mode; images
    go to the device of the model's parameters (CPU for a model without any). Given a bare
    store, a pipeline with the default workers is made for the call.

    Args:
        amp: ``"off"`` (float32), ``"bf16"`` or ``"fp16"``: autocast of the forward pass;
            descriptors come back as float32 either way.

    Returns:
        (N, D) float32 array, one row per requested image.
    """
    outputs = list(iter_descriptor_batches(model, store, indices, batch_size, progress, desc,
                                           amp))
    if not outputs:
        out_dim = int(getattr(model, "out_dim", 0))
        return np.zeros((0, out_dim), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32, copy=False)


def extract_over_ranks(
    model: torch.nn.Module,
    store: ImageStore | ImagePipeline,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "extract",
    amp: str = "off",
    main_only: bool = False,
) -> np.ndarray | None:
    """:func:`extract_descriptors` split over the processes of a torchrun launch.

    Each rank describes its block of whole batches (:func:`softloc.distributed.shard_rows`)
    and the blocks are gathered in row order (:func:`softloc.distributed.gather_rows`) before
    the caller computes any metric or index, so the result equals a single process's bit for
    bit. In a single process this is :func:`extract_descriptors` itself.

    Args:
        main_only: gather on rank 0 only; the other ranks get None (a map build).
    """
    from softloc import distributed

    if distributed.world_size() == 1:
        return extract_descriptors(model, store, indices, batch_size, progress, desc, amp)
    size = len(store.store if isinstance(store, ImagePipeline) else store)
    rows = np.arange(size) if indices is None else np.asarray(indices, dtype=np.int64)
    device = next(model.parameters(), torch.empty(0)).device
    distributed.init_process_group(device)
    mine = distributed.shard_rows(rows, batch_size)
    local = extract_descriptors(model, store, mine, batch_size, progress and distributed.is_main(),
                                desc, amp)
    return distributed.gather_rows(local, step=desc, device=device, main_only=main_only)
