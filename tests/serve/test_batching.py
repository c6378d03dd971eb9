"""The request batcher: requests waiting together share one forward, each gets its rows."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from softloc.serve.batching import Batcher


def test_waiting_requests_share_one_forward_and_get_their_own_rows() -> None:
    calls: list[list[int]] = []
    release = threading.Event()

    def describe(images: list[int]) -> np.ndarray:
        calls.append(list(images))
        if len(calls) == 1:
            release.wait(10)  # hold the worker while the others queue up
        return np.array([[i, -i] for i in images], dtype=np.float32)

    batcher = Batcher(describe, wait_ms=50, max_batch=7)
    results: dict[int, np.ndarray] = {}

    def ask(first: int, count: int) -> None:
        with batcher.request():
            results[first] = batcher.describe(list(range(first, first + count)))

    threads = [threading.Thread(target=ask, args=(0, 1))]
    threads[0].start()
    while not calls:
        threading.Event().wait(0.001)
    for first in (10, 20, 30, 40):  # 2 + 2 + 2 + 2 images: over max_batch 7 in one
        thread = threading.Thread(target=ask, args=(first, 2))
        thread.start()
        threads.append(thread)
    while batcher._queue.qsize() < 4:
        threading.Event().wait(0.001)
    release.set()
    for thread in threads:
        thread.join(10)
    batcher.close()
    for first, rows in results.items():
        count = 1 if first == 0 else 2
        np.testing.assert_array_equal(rows[:, 0], np.arange(first, first + count))
    assert len(results) == 5
    assert [len(c) for c in calls] == [1, 6, 2]  # the queued four: 3 fit in 7, then 1
    assert batcher.batches == 3


def test_a_failed_forward_reaches_every_waiting_request() -> None:
    def describe(images: list[int]) -> np.ndarray:
        raise ValueError("image 3 cannot be read")

    batcher = Batcher(describe, wait_ms=0)
    with pytest.raises(ValueError, match="image 3"):
        batcher.describe([1, 2, 3])
    with pytest.raises(ValueError, match="image 3"):  # and the worker lives on
        batcher.describe([4])
    batcher.close()


def test_a_lone_request_does_not_wait_for_company() -> None:
    batcher = Batcher(lambda images: np.zeros((len(images), 1)), wait_ms=60_000)
    with batcher.request():
        assert batcher.describe([1, 2]).shape == (2, 1)  # would hang a minute if it waited
    batcher.close()


def test_a_lone_request_runs_the_model_in_its_own_thread_and_company_goes_to_the_worker() -> None:
    threads_seen: list[str] = []
    release = threading.Event()

    def describe(images: list[int]) -> np.ndarray:
        threads_seen.append(threading.current_thread().name)
        if len(threads_seen) == 1:
            release.wait(10)  # the model is busy while the second request comes
        return np.array([[i] for i in images], dtype=np.float32)

    batcher = Batcher(describe, wait_ms=0)
    results: dict[str, np.ndarray] = {}

    def ask(name: str, images: list[int]) -> None:
        with batcher.request():
            results[name] = batcher.describe(images)

    lone = threading.Thread(target=ask, args=("lone", [1]), name="lone")
    lone.start()
    while not threads_seen:
        threading.Event().wait(0.001)
    second = threading.Thread(target=ask, args=("second", [2, 3]), name="second")
    second.start()
    while batcher._queue.qsize() < 1:  # it queues: the model is in use
        threading.Event().wait(0.001)
    release.set()
    lone.join(10)
    second.join(10)
    batcher.close()
    assert threads_seen == ["lone", "softloc-batcher"]
    np.testing.assert_array_equal(results["lone"][:, 0], [1])
    np.testing.assert_array_equal(results["second"][:, 0], [2, 3])
    assert (batcher.batches, batcher.direct) == (2, 1)


def test_a_failed_batched_forward_reaches_every_queued_request() -> None:
    release = threading.Event()
    calls: list[list[int]] = []

    def describe(images: list[int]) -> np.ndarray:
        calls.append(list(images))
        if len(calls) == 1:
            release.wait(10)
            return np.zeros((len(images), 1), dtype=np.float32)
        if len(calls) == 2:
            raise ValueError(f"image {images[-1]} cannot be read")
        return np.ones((len(images), 1), dtype=np.float32)

    batcher = Batcher(describe, wait_ms=0)
    errors: dict[int, BaseException] = {}

    def ask(first: int) -> None:
        with batcher.request():
            try:
                batcher.describe([first])
            except ValueError as error:
                errors[first] = error

    threads = [threading.Thread(target=ask, args=(0,))]
    threads[0].start()
    while not calls:
        threading.Event().wait(0.001)
    for first in (1, 2):
        threads.append(threading.Thread(target=ask, args=(first,)))
        threads[-1].start()
    while batcher._queue.qsize() < 2:
        threading.Event().wait(0.001)
    release.set()
    for thread in threads:
        thread.join(10)
    assert calls[1] == [1, 2] and sorted(errors) == [1, 2]  # one batch, both told
    assert all("image 2" in str(e) for e in errors.values())
    with batcher.request():  # the model and the worker live on
        assert batcher.describe([5]).shape == (1, 1)
    batcher.close()
