"""The image pipeline: rows of a dataset in, normalised image batches on the device out.

Every reader of images goes through here (training tuples, mining refreshes, validation, map
build, evaluation, sweeps, the report's pictures via :func:`softloc.extract.extract_descriptors`):

1. rows are read as uint8 (H, W, 3) images, from the memory-mapped cache or decoded from their
   files, by ``workers`` threads (Pillow and the memory copies release the GIL);
2. batches are prepared up to ``prefetch`` ahead of the consumer;
3. on CUDA the uint8 batch is put in pinned memory and copied with ``non_blocking`` (4x fewer
   bytes than float32), then made float and normalised there (:func:`normalise`).

The values do not depend on the number of workers: each image is decoded the same way and
batches come back in order.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from softloc.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageStore, normalise

T = TypeVar("T")
K = TypeVar("K")

MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Worker threads when ``data.workers`` is not set: the cores, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


def resolve_workers(workers: int | None) -> int:
    """``data.workers`` as a thread count (None: :func:`default_workers`; 0: no threads)."""
    return default_workers() if workers is None else int(workers)


class Lookahead(Iterator[T]):
    """Results of jobs for ``keys`` in order, up to ``depth`` of them prepared ahead in a pool.

    ``make_job(key)`` runs in the consumer's thread when the key is scheduled (so it may read
    state that the consumer changes, e.g. an epoch's anchors) and returns the zero-argument
    function that a worker runs. Without a pool every job runs when its result is asked for.
    An error in a job comes out of ``next`` as it was raised, and later jobs are cancelled.
    """

    def __init__(
        self,
        make_job: Callable[[K], Callable[[], T]],
        keys: Iterable[K],
        pool: ThreadPoolExecutor | None,
        depth: int,
    ) -> None:
        self._make_job = make_job
        self._keys = iter(keys)
        self._pool = pool
        self._depth = max(1, int(depth))
        self._pending: deque[Future[T]] = deque()
        self._closed = False

    def _fill(self) -> None:
        assert self._pool is not None
        while len(self._pending) < self._depth:
            key = next(self._keys, _END)
            if key is _END:
                return
            self._pending.append(self._pool.submit(self._make_job(key)))

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        if self._pool is None:
            key = next(self._keys, _END)
            if key is _END:
                raise StopIteration
            return self._make_job(key)()
        self._fill()
        if not self._pending:
            raise StopIteration
        try:
            result = self._pending.popleft().result()
        except BaseException:
            self.close()
            raise
        self._fill()
        return result

    def close(self) -> None:
        """Cancel the jobs not yet started (running ones finish, their results are dropped)."""
        self._closed = True
        while self._pending:
            self._pending.popleft().cancel()


_END = object()


class ImagePipeline:
    """Batches of a store's images, read in parallel, normalised on ``device``.

    Args:
        store: the images (cache or files) by row.
        workers: reading threads (0: all in the calling thread, nothing ahead).
        prefetch: batches prepared ahead of the consumer (with workers).
        device: where batches go.
        mean, std: normalisation (the model's ``meta["preprocessing"]``).
        channels_last: hand batches over in channels-last memory format.
    """

    def __init__(
        self,
        store: ImageStore,
        workers: int = 0,
        prefetch: int = 2,
        device: torch.device | str = "cpu",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = False,
    ) -> None:
        if workers < 0 or prefetch < 0:
            raise ValueError(f"data.workers and data.prefetch must be >= 0, got {workers}, "
                             f"{prefetch}")
        self.store = store
        self.workers = int(workers)
        self.prefetch = int(prefetch)
        self.device = torch.device(device)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.channels_last = channels_last
        self._pool = ThreadPoolExecutor(self.workers, "softloc-images") if self.workers else None

    def __enter__(self) -> ImagePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @property
    def pool(self) -> ThreadPoolExecutor | None:
        """The worker threads (None with ``workers=0``), for jobs that read images."""
        return self._pool

    def _host_buffer(self, count: int) -> tuple[torch.Tensor, np.ndarray]:
        width, height = self.store.size
        pin = self.device.type == "cuda"
        tensor = torch.empty((count, height, width, 3), dtype=torch.uint8, pin_memory=pin)
        return tensor, tensor.numpy()

    def load(self, rows: Sequence[int] | np.ndarray, parallel: bool = True) -> torch.Tensor:
        """(B, H, W, 3) uint8 images of ``rows`` on the host (pinned when the device is CUDA),
        split across the workers when ``parallel``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        tensor, out = self._host_buffer(len(rows))
        if self._pool is None or not parallel or len(rows) < 2 or self.store.cache is not None:
            self.store.images(rows, out=out)
            return tensor
        chunks = np.array_split(np.arange(len(rows)), min(self.workers, len(rows)))
        jobs = [
            self._pool.submit(self.store.images, rows[chunk], out[chunk[0] : chunk[-1] + 1])
            for chunk in chunks
            if len(chunk)
        ]
        for job in jobs:
            job.result()
        return tensor

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) host images -> normalised float (B, 3, H, W) on the device."""
        moved = images.to(self.device, non_blocking=True)
        batch = normalise(moved, self.mean, self.std)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def tensor(self, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Normalised batch of ``rows`` on the device."""
        return self.to_device(self.load(rows))

    def batches(
        self, rows: Sequence[int] | np.ndarray, batch_size: int
    ) -> Iterator[torch.Tensor]:
        """Normalised batches of ``rows`` in order, ``batch_size`` at a time, read ahead."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        starts = range(0, len(rows), batch_size)

        def job(start: int) -> Callable[[], torch.Tensor]:
            return lambda: self.load(rows[start : start + batch_size], parallel=False)

        if self._pool is None:
            for start in starts:
                yield self.to_device(self.load(rows[start : start + batch_size]))
            return
        if len(starts) == 1:  # one batch: spread its images over the workers instead
            yield self.to_device(self.load(rows))
            return
        ahead = Lookahead(job, starts, self._pool, max(self.prefetch, self.workers))
        try:
            for images in ahead:
                yield self.to_device(images)
        finally:
            ahead.close()
