"""Describe the images of requests that arrive together in one forward pass.

Each request hands its images to :meth:`Batcher.describe` and waits. One worker thread takes
the first waiting request, gathers whatever else arrives within ``wait_ms`` (up to
``max_batch`` images), runs the model once over all of them and hands each request its rows.
The wait happens only while other requests are under way (:meth:`Batcher.request`), so a lone
request does not wait; under load the model sees larger batches, which is where a GPU (and,
less so, a CPU) gets its throughput.

A lone request (no other request under way, nothing queued, the model idle) skips the queue
and runs the model in its own thread: handing it to the worker and back would cost two thread
switches and gain nothing. The model still runs in one thread at a time: a request that comes
while it is busy queues, and the worker gathers the queue once the model is free.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np


class Batcher:
    """Batches calls of ``describe(images) -> (len(images), D)`` from many threads.

    Args:
        describe: the model's forward over a list of images (called by one thread at a time).
        wait_ms: how long the first request of a batch waits for company.
        max_batch: the most images in one forward (a request is never split).
    """

    def __init__(self, describe: Callable[[list[Any]], np.ndarray], wait_ms: float = 5.0,
                 max_batch: int = 64) -> None:
        if wait_ms < 0 or max_batch < 1:
            raise ValueError("wait_ms must be >= 0 and max_batch >= 1")
        self._describe, self.wait_s, self.max_batch = describe, wait_ms / 1000.0, max_batch
        self._queue: queue.Queue[tuple[list[Any], Future] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0  # forwards run, for the benchmark and tests
        self.direct = 0  # of which a lone request ran itself, without the queue
        self._active = 0  # requests being received that will call describe
        self._busy = False  # the model is running (a batch, or a lone request's own call)
        self._state = threading.Condition()  # guards _active, _busy and the queue's filling

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Mark a request as under way (its upload still arriving): a batch waits for it only
        while such requests exist, so a lone request does not wait at all."""
        with self._state:
            self._active += 1
        try:
            yield
        finally:
            with self._state:
                self._active -= 1

    def describe(self, images: Sequence[Any]) -> np.ndarray:
        """The images' descriptors, computed in a batch with other waiting requests (or at
        once in this thread when no other request is under way and the model is idle)."""
        images = list(images)
        with self._state:
            alone = not self._busy and self._active <= 1 and self._queue.empty()
            if alone:
                self._busy = True
        if alone:
            try:
                rows = self._describe(images)
                self.batches += 1
                self.direct += 1
                return rows
            finally:
                self._release()
        self._ensure_started()
        done: Future = Future()
        with self._state:
            self._queue.put((images, done))
            self._state.notify_all()
        return done.result()

    def close(self) -> None:
        """Stop the worker (waiting requests are still answered first)."""
        if self._thread is not None:
            with self._state:
                self._queue.put(None)
                self._state.notify_all()
            self._thread.join(timeout=10)
            self._thread = None

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="softloc-batcher",
                                                daemon=True)
                self._thread.start()

    def _release(self) -> None:
        with self._state:
            self._busy = False
            self._state.notify_all()

    def _work(self) -> None:
        while True:
            with self._state:  # wait for a queued request and for the model to be free
                while self._busy or self._queue.empty():
                    self._state.wait()
                self._busy = True
            try:
                if not self._gather_and_run():
                    return
            finally:
                self._release()

    def _gather_and_run(self) -> bool:
        """Run the first queued request with what arrives within the wait; False: stop."""
        first = self._queue.get_nowait()
        if first is None:
            return False
        batch, go_on = [first], True
        count = len(first[0])
        deadline = time.monotonic() + self.wait_s
        while count < self.max_batch:
            left = deadline - time.monotonic()
            if self._active <= len(batch):  # nobody else is coming: take what is queued
                left = 0.0
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                go_on = False
                break
            if count + len(item[0]) > self.max_batch:
                self._run(batch)
                batch, count = [], 0
            batch.append(item)
            count += len(item[0])
        self._run(batch)
        return go_on

    def _run(self, batch: list[tuple[list[Any], Future]]) -> None:
        if not batch:
            return
        images = [image for request, _ in batch for image in request]
        try:
            rows = self._describe(images)
            self.batches += 1
        except BaseException as error:  # noqa: B036 - every waiting request must hear of it
            for _, done in batch:
                done.set_exception(error)
            return
        start = 0
        for request, done in batch:
            done.set_result(rows[start : start + len(request)])
            start += len(request)
