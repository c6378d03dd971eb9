"""The image pipeline: same values whatever the workers, training and resume unchanged by it,
a bad image met in a worker stops training with the file named and the checkpoint kept."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from softloc.checkpoints import list_checkpoints
from softloc.data.images import ImageError, ImageStore, to_tensor
from softloc.data.pipeline import ImagePipeline, Lookahead
from softloc.extract import extract_descriptors, image_store
from softloc.models import create_model
from softloc.train import Trainer
from tests.tiny_run import MINING, run_killed_at, tiny_config
from tests.tiny_run import SMALL as BASE

SMALL = [*BASE, "model.name=small_netvlad",
         "model.options={pooling_kwargs: {num_clusters: 4}}", "tuples.anchor_spacing=3"]


def _config(root: Path, *extra: str):
    return tiny_config(root, *extra, base=SMALL)


def _weights(config, out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Trainer(config, out, progress=False).run()))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_batches_equal_the_plain_decoding_whatever_the_workers(street) -> None:
    paths = [street.image_path(i) for i in range(len(street))]
    store = ImageStore(paths, (24, 16))
    rows = np.random.default_rng(0).permutation(len(street))[:70]
    expected = [to_tensor(np.stack([store.decode(int(r)) for r in rows[i : i + 16]]))
                for i in range(0, 70, 16)]
    for workers, prefetch in [(0, 1), (1, 1), (3, 2), (4, 8)]:
        with ImagePipeline(store, workers, prefetch) as pipeline:
            got = list(pipeline.batches(rows, 16))
            single = pipeline.tensor(rows[:9])
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(single, to_tensor(store.images(rows[:9])), rtol=0, atol=0)


def test_descriptors_equal_with_zero_and_several_workers(street) -> None:
    torch.manual_seed(0)
    model = create_model("small_netvlad", image_size=(32, 24), pooling_kwargs={"num_clusters": 4})
    store = image_store(model, [street.image_path(i) for i in range(len(street))])
    rows = np.arange(0, len(street), 3)
    plain = extract_descriptors(model, ImagePipeline(store, 0), rows, batch_size=8)
    for workers in (1, 3):
        with ImagePipeline(store, workers, prefetch=2) as pipeline:
            parallel = extract_descriptors(model, pipeline, rows, batch_size=8)
        np.testing.assert_array_equal(plain, parallel)
    np.testing.assert_array_equal(plain, extract_descriptors(model, store, rows, batch_size=8))


def test_lookahead_keeps_order_runs_ahead_and_passes_errors() -> None:
    from concurrent.futures import ThreadPoolExecutor

    scheduled: list[int] = []
    ran_in: set[str] = set()

    def job(key: int):
        scheduled.append(key)

        def work() -> int:
            ran_in.add(threading.current_thread().name)
            if key == 7:
                raise ImageError("row 7: cannot decode image")
            return key * key

        return work

    with ThreadPoolExecutor(3, "test-workers") as pool:
        ahead = Lookahead(job, range(10), pool, depth=3)
        assert [next(ahead) for _ in range(2)] == [0, 1]
        assert scheduled == [0, 1, 2, 3, 4]  # three ahead of the consumer
        assert [next(ahead) for _ in range(5)] == [4, 9, 16, 25, 36]
        with pytest.raises(ImageError, match="row 7"):
            next(ahead)
        with pytest.raises(StopIteration):
            next(ahead)
    assert all(name.startswith("test-workers") for name in ran_in)
    assert list(Lookahead(job, range(3), None, depth=3)) == [0, 1, 4]


@pytest.mark.parametrize("mining", [False, True], ids=["random", "mining"])
def test_trained_weights_do_not_depend_on_workers_or_cache(street, tmp_path: Path,
                                                           mining: bool) -> None:
    extra = MINING if mining else []
    plain = _weights(_config(tmp_path, "data.workers=0", "data.cache_images=false", *extra),
                     tmp_path / "plain")
    parallel = _weights(_config(tmp_path, "data.workers=3", "data.prefetch=2",
                                "data.cache_images=false", *extra), tmp_path / "parallel")
    cached = _weights(_config(tmp_path, "data.workers=2", "data.cache_images=true", *extra),
                      tmp_path / "cached")
    _assert_same(plain, parallel)
    _assert_same(plain, cached)


@pytest.mark.parametrize("mining", [False, True], ids=["random", "mining"])
def test_resume_with_workers_is_bit_identical(street, tmp_path: Path, mining: bool) -> None:
    config = _config(tmp_path, "data.workers=3", "data.prefetch=3", *(MINING if mining else []))
    reference = _weights(config, tmp_path / "full")
    run_killed_at(Trainer(config, tmp_path / "killed", progress=False), step=5)
    resumed = Trainer(config, tmp_path / "killed", progress=False).run(resume=True)
    _assert_same(load_file(str(resumed)), reference)


def test_corrupt_image_in_a_worker_names_file_and_line_and_keeps_checkpoint(
    street, tmp_path: Path
) -> None:
    config = _config(tmp_path, "data.workers=3", "data.prefetch=1", "data.cache_images=false",
                     "train.val_every=0", "train.steps=10")
    trainer = Trainer(config, tmp_path / "run", progress=False)
    original_step = trainer.train_step
    night = np.flatnonzero((street.traversal == "night") & (street.split == "train"))

    def corrupting_step(model, optimizer, step):
        if step == 2:  # after the checkpoint of step 2, every night training image is broken
            for row in night:
                street.image_path(int(row)).write_bytes(b"\x89PNG\r\n\x1a\n broken")
        return original_step(model, optimizer, step)

    trainer.train_step = corrupting_step
    with pytest.raises(ImageError) as error:
        trainer.run()
    message = str(error.value)
    line = int(message.split(", line ")[1].split(":")[0])
    assert message.startswith(f"{tmp_path / 'places.csv'}, line {line}: ")
    assert f"{street.path[line - 2]}: cannot decode image" in message
    assert line - 2 in set(night.tolist())
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert checkpoints and int(checkpoints[-1].stem.split("_")[-1]) >= 2
    assert not (tmp_path / "run" / "model.safetensors").exists()
