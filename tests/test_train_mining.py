"""Hard-example mining, per-epoch anchors, loss options from the config, off-the-shelf, device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from softloc.checkpoints import list_checkpoints, load_state
from softloc.config import ConfigError, TupleConfig
from softloc.data.tuples import MiningCache, TupleSampler
from softloc.losses import available_losses
from softloc.train import Trainer, TrainingError, build_loss
from tests.tiny_run import MINING, run_killed_at, tiny_config
from tests.tiny_run import SMALL as BASE

SMALL = [*BASE, "tuples.anchor_spacing=3", "train.val_every=0"]


def _config(root: Path, *extra: str):
    return tiny_config(root, *extra, base=SMALL)


# ------------------------------------------------------------------------------ sampler


def test_epoch_anchors_are_spaced_along_the_drive_with_a_fresh_offset(street) -> None:
    train = street.where(split="train", traversal="reference")
    sampler = TupleSampler(train, TupleConfig(n_near=2, n_far=2, near_radius=4, far_radius=8,
                                              far_spacing=4, anchor_spacing=5.0))
    first = sampler.epoch_anchors(np.random.default_rng(0))
    second = sampler.epoch_anchors(np.random.default_rng(1))
    x_first = np.sort(train.xy[sampler.anchors[first], 0])
    x_second = np.sort(train.xy[sampler.anchors[second], 0])
    # The street has a frame every metre: anchors lie exactly 5 m apart.
    assert np.allclose(np.diff(x_first), 5.0) and np.allclose(np.diff(x_second), 5.0)
    offsets = {
        float(train.xy[sampler.anchors[sampler.epoch_anchors(np.random.default_rng(e))], 0].min()
              % 5)
        for e in range(12)
    }
    assert len(offsets) >= 3, "epochs start from other offsets"
    tup = sampler.sample(np.random.default_rng(2), anchors=first)
    assert tup.indices[0] in sampler.anchors[first]


def test_mining_picks_the_hardest_cached_near_and_far_images(street) -> None:
    train = street.where(split="train")
    config = TupleConfig(n_near=2, n_far=2, near_radius=4, far_radius=8, far_spacing=4,
                         anchor_spacing=0.0)
    sampler = TupleSampler(train, config)
    x = train.xy[:, 0]
    # Descriptor = (x, 0) except two planted rows: a near image that looks far away and a far
    # image that looks like the anchor's place.
    anchor_row = int(np.flatnonzero((train.traversal == "reference") & (x == 30.0))[0])
    hard_near = int(np.flatnonzero((train.traversal == "night") & (x == 32.0))[0])
    hard_far = int(np.flatnonzero((train.traversal == "night") & (x == 60.0))[0])
    descriptors = np.stack([x, np.zeros_like(x)], axis=1).astype(np.float32)
    descriptors[hard_near] = [90.0, 0.0]
    descriptors[hard_far] = [30.0, 0.0]
    rows = np.arange(len(train))
    cache = MiningCache(rows, descriptors[rows], lambda row: descriptors[row], hard_fraction=0.5)
    position = np.flatnonzero(sampler.anchors == anchor_row)
    tup = sampler.sample(np.random.default_rng(0), anchors=position, mining=cache)
    assert tup.indices[0] == anchor_row
    assert tup.indices[2] == hard_near  # random near first, then the hard one
    assert tup.indices[3] == hard_far  # hard far first, then the random one
    assert np.all(tup.distances[0, 1:3] < 4) and np.all(tup.distances[0, 3:] >= 8)


# ------------------------------------------------------------------------------ trainer


def test_resume_with_mining_matches_an_uninterrupted_run(street, tmp_path: Path) -> None:
    config = _config(tmp_path, *MINING)
    reference = load_file(str(Trainer(config, tmp_path / "full", progress=False).run()))

    run_killed_at(Trainer(config, tmp_path / "killed", progress=False), step=5)
    checkpoint = list_checkpoints(tmp_path / "killed" / "checkpoints")[-1]
    state = load_state(checkpoint)
    assert int(state["mining.step"][0]) == 3 and len(state["mining.rows"]) == 40

    resumed = Trainer(config, tmp_path / "killed", progress=False).run(resume=True)
    weights = load_file(str(resumed))
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=0)


def test_mining_changes_the_tuples(street, tmp_path: Path) -> None:
    plain = Trainer(_config(tmp_path), tmp_path / "a", progress=False)
    mined = Trainer(_config(tmp_path, *MINING, "mining.hard_fraction=1.0"), tmp_path / "b",
                    progress=False)
    model = mined.initial_model()
    rng = [np.random.default_rng([0, 2, s]) for s in range(2)]
    a = [plain.sampler.sample(r, plain.anchors_for(s)) for s, r in enumerate(rng)]
    rng = [np.random.default_rng([0, 2, s]) for s in range(2)]
    b = [mined.sampler.sample(r, mined.anchors_for(s), mined.mining_cache(model, s))
         for s, r in enumerate(rng)]
    assert any(not np.array_equal(x.indices, y.indices) for x, y in zip(a, b, strict=True))
    cached = set(mined.mining_cache(model, 0).rows.tolist())
    assert all(set(t.indices[1:].tolist()) <= cached for t in b), "all hard: all from the cache"


def test_corrupt_mining_state_is_a_clear_error(street, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(_config(tmp_path, *MINING, "train.steps=2"), out, progress=False).run()
    checkpoint = list_checkpoints(out / "checkpoints")[-1]
    state_file = checkpoint.with_name(checkpoint.name.replace(".safetensors", ".state.safetensors"))
    state_file.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable checkpoint state.*delete this checkpoint"):
        Trainer(_config(tmp_path, *MINING, "train.steps=4"), out, progress=False).run(resume=True)


def test_off_the_shelf_keeps_the_initial_weights(street, tmp_path: Path) -> None:
    trainer = Trainer(_config(tmp_path, "loss.name=off_the_shelf"), tmp_path / "o", progress=False)
    initial = {k: v.clone() for k, v in trainer.initial_model().state_dict().items()}
    weights = load_file(str(trainer.run()))
    assert all(torch.equal(initial[k], weights[k]) for k in initial)
    assert not list_checkpoints(tmp_path / "o" / "checkpoints")


@pytest.mark.parametrize("name", available_losses())
def test_every_loss_gets_the_radii_from_the_config(tmp_path: Path, name: str) -> None:
    config = _config(tmp_path, f"loss.name={name}", "loss.influence=linear",
                     "loss.influence_options={radius: 9.0}")
    loss = build_loss(config)
    options = getattr(loss, "options", vars(loss))
    if "near_radius" in options:
        assert options["near_radius"] == 4.0 and options["far_radius"] == 8.0
    if name == "generalized_contrastive":
        assert options["radius"] == 8.0
    if name == "soft_contrastive":
        assert loss.influence.radius == 9.0


def test_loss_options_override_the_config(tmp_path: Path) -> None:
    loss = build_loss(_config(tmp_path, "loss.name=triplet", "loss.options={near_radius: 2.0}"))
    assert loss.near_radius == 2.0 and loss.far_radius == 8.0


def test_bad_mining_and_device_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hard_fraction"):
        _config(tmp_path, "mining.hard_fraction=1.5")
    with pytest.raises(ConfigError, match="train.device must be one of cpu, cuda, auto"):
        _config(tmp_path, "train.device=tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error(street, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no GPU.*train.device=cpu or auto"):
        Trainer(_config(tmp_path, "train.device=cuda"), tmp_path / "c", progress=False)
    auto = Trainer(_config(tmp_path, "train.device=auto"), tmp_path / "c", progress=False)
    assert auto.device.type == "cpu"
