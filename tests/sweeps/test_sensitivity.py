"""The sensitivity sweep: one training run per point, cached, resumed, never mixed up."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from softloc.config import load_config
from softloc.evaluation.whitening import WhiteningProtocol
from softloc.sweeps.sensitivity import parse_tuple_size, run_sensitivity_sweep
from softloc.train import Trainer

SMALL = [
    "model.name=small_gem", "data.image_width=32", "data.image_height=24",
    "tuples.near_radius=4", "tuples.far_radius=8", "tuples.far_spacing=4",
    "train.steps_per_epoch=3", "train.checkpoint_every=2", "train.val_every=0",
    "train.log_every=1", "model.whitening_dim=8",
]


def test_sensitivity_sweep_trains_each_point_once_and_resumes(
    street, tmp_path: Path, monkeypatch
) -> None:
    config = load_config(None, [f"data.root={tmp_path}", *SMALL])
    out = tmp_path / "sens"
    kwargs = dict(influences=["sigmoid", "linear"], tuple_sizes=[(2, 2)], steps=2,
                  protocol=WhiteningProtocol(dim=8), progress=False)
    table = run_sensitivity_sweep(config, street, out, **kwargs)
    for name in ("sigmoid_2x2", "linear_2x2"):
        assert (out / "runs" / name / "model.safetensors").is_file()
        saved = load_config(out / "runs" / name / "config.yaml")
        assert saved.tuples.n_near == 2 and saved.train.steps == 2
        assert saved.model.whitening_dim is None  # the sweep refits its own
    assert load_config(out / "runs" / "linear_2x2" / "config.yaml").loss.influence_options == {}
    rows = list(csv.DictReader((out / "sweep_sensitivity.csv").open()))
    assert [(r["influence"], r["n_near"]) for r in rows] == [("sigmoid", "2"), ("linear", "2")]
    assert "| sigmoid | 2 | 2 |" in table
    document = json.loads((out / "sweep_sensitivity.json").read_text())
    assert len(document["curves"]["linear_2x2"]["mean_top1"]) == 51

    trained: list[str] = []
    monkeypatch.setattr(Trainer, "run", lambda self, resume=False: trained.append(self.out.name))
    run_sensitivity_sweep(config, street, out, **kwargs)
    assert trained == []  # both finished: nothing trained
    assert list(csv.DictReader((out / "sweep_sensitivity.csv").open())) == rows
    # a killed run (no evaluation, no final model) trains again, resumed; a run with a model
    # but no evaluation is only evaluated
    (out / "runs" / "sigmoid_2x2" / "evaluation.json").unlink()
    (out / "runs" / "linear_2x2" / "evaluation.json").unlink()
    (out / "runs" / "linear_2x2" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no such model file"):
        run_sensitivity_sweep(config, street, out, **kwargs)  # the stub wrote no model
    assert trained == ["linear_2x2"]
    assert (out / "runs" / "sigmoid_2x2" / "evaluation.json").is_file()


def test_sensitivity_refuses_a_folder_of_another_configuration(street, tmp_path: Path) -> None:
    config = load_config(None, [f"data.root={tmp_path}", *SMALL])
    kwargs = dict(influences=["tanh"], tuple_sizes=[(2, 2)], progress=False,
                  protocol=WhiteningProtocol(dim=8))
    run_sensitivity_sweep(config, street, tmp_path / "sens", steps=1, **kwargs)
    with pytest.raises(ValueError, match="another configuration"):
        run_sensitivity_sweep(config, street, tmp_path / "sens", steps=2, **kwargs)


def test_parse_tuple_size() -> None:
    assert parse_tuple_size("12/8") == (12, 8)
    for bad in ("8", "a/b", "0/4"):
        with pytest.raises(ValueError, match="tuple size"):
            parse_tuple_size(bad)
