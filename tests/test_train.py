from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softloc.checkpoints import list_checkpoints
from softloc.config import load_config
from softloc.train import Trainer, TrainingError, learning_rate
from tests.tiny_run import SMALL, run_killed_at, tiny_config


def _config(root: Path, *extra: str):
    return tiny_config(root, *extra)


def test_learning_rate_halves_every_epoch(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert [learning_rate(config, s) for s in (0, 2, 3, 6)] == [1e-3, 1e-3, 5e-4, 2.5e-4]


def test_training_writes_a_complete_run(street, tmp_path: Path) -> None:
    out = tmp_path / "run"
    model_path = Trainer(_config(tmp_path), out, progress=False).run()
    assert model_path == out / "model.safetensors" and model_path.with_suffix(".json").is_file()
    assert (out / "config.yaml").is_file()
    steps = [int(r["step"]) for r in csv.DictReader((out / "train_log.csv").open())]
    assert steps == [1, 2, 3, 4, 5, 6]
    val = list(csv.DictReader((out / "val_log.csv").open()))
    assert [int(r["step"]) for r in val] == [0, 3, 6]
    assert all(0.0 <= float(r["top1"]) <= 1.0 for r in val)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [
        f"step_{s:08d}.safetensors" for s in (2, 4, 6)
    ]
    assert not list(out.rglob("*.tmp"))


def test_training_changes_the_weights_and_is_repeatable(street, tmp_path: Path) -> None:
    a = Trainer(_config(tmp_path), tmp_path / "a", progress=False)
    initial = {k: v.clone() for k, v in a.initial_model().state_dict().items()}
    weights_a = load_file(str(a.run()))
    weights_b = load_file(str(Trainer(_config(tmp_path), tmp_path / "b", progress=False).run()))
    assert any(not torch.equal(initial[k], weights_a[k]) for k in initial)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_resume_after_a_kill_matches_an_uninterrupted_run(street, tmp_path: Path) -> None:
    reference = load_file(str(Trainer(_config(tmp_path), tmp_path / "full", progress=False).run()))

    run_killed_at(Trainer(_config(tmp_path), tmp_path / "killed", progress=False), step=5)
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    assert list_checkpoints(tmp_path / "killed" / "checkpoints")[-1].name.endswith("04.safetensors")

    resumed = Trainer(_config(tmp_path), tmp_path / "killed", progress=False).run(resume=True)
    weights = load_file(str(resumed))
    assert weights.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=0)
    steps = [int(r["step"]) for r in csv.DictReader((tmp_path / "killed" / "train_log.csv").open())]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_incomplete_checkpoint_is_ignored(street, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(_config(tmp_path, "train.steps=4"), out, progress=False).run()
    newest = list_checkpoints(out / "checkpoints")[-1]
    newest.with_suffix(".json").unlink()  # as if killed while writing the sidecar
    assert list_checkpoints(out / "checkpoints")[-1].name.endswith("02.safetensors")


def test_whitening_is_fitted_and_saved(street, tmp_path: Path) -> None:
    from softloc.models import load_model

    path = Trainer(_config(tmp_path, "model.whitening_dim=8", "train.steps=2"), tmp_path / "w",
                   progress=False).run()
    model, sidecar = load_model(path)
    assert model.out_dim == 8 and sidecar["extra"]["step"] == 2
    out = model(torch.randn(3, 3, 24, 32))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_no_training_split_is_a_clear_error(street, tmp_path: Path) -> None:
    from softloc.data.places import read_places

    places = read_places(tmp_path)
    only_test = places.subset(places.split == "test")
    with pytest.raises(TrainingError, match="no places with split 'train'"):
        Trainer(_config(tmp_path), tmp_path / "run", places=only_test, progress=False)


def test_non_finite_loss_stops_with_checkpoint_kept(street, tmp_path: Path) -> None:
    trainer = Trainer(_config(tmp_path), tmp_path / "nan", progress=False)

    def broken_loss(descriptors, distances):
        return descriptors.sum() * float("nan")

    trainer.loss_fn = broken_loss
    with pytest.raises(TrainingError, match="non-finite loss"):
        trainer.run()
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_cli_train_saves_the_resolved_config_and_resumes(street, tmp_path: Path, capsys) -> None:
    from softloc.cli import main

    out = tmp_path / "cli_run"
    args = ["-q", "train", "--config", "demo", "--data", str(tmp_path), "--out", str(out),
            "--steps", "2", "--loss", "triplet", "--seed", "3"]
    for override in SMALL:
        if not override.startswith("train.steps="):
            args += ["--set", override]
    assert main(args) == 0
    assert f"model: {out / 'model.safetensors'}" in capsys.readouterr().out
    saved = load_config(out / "config.yaml")
    assert saved.loss.name == "triplet" and saved.train.steps == 2 and saved.train.seed == 3
    assert saved.model.name == "small_gem" and saved.data.root == str(tmp_path)
    assert main([*args, "--resume"]) == 0  # nothing left to do: finishes from the checkpoint
