"""Collapse detection: collapse values by hand, the detector's window, the Trainer's record and
early stop, and the marks in tables and reports."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from softloc.collapse import (
    LOSS_AT_COLLAPSE,
    LOW_SPREAD,
    CollapseDetector,
    collapse_note,
    collapse_value,
    effective_rank,
    marked_name,
    mean_pairwise_distance,
    probe_rows,
)
from softloc.config import ConfigError, load_config
from softloc.losses import create_loss, soft_contrastive_loss
from softloc.train import Trainer
from tests.tiny_run import SMALL, tiny_config


def _line(positions: list[float]) -> np.ndarray:
    """Distances (B, B) between cameras on a line at ``positions`` metres."""
    x = np.asarray(positions, dtype=np.float64)
    return np.abs(x[:, None] - x[None, :])


# 1 anchor, 2 near (< 10 m), 1 in between, 3 far (>= 15 m)
POSITIONS = [0.0, 2.0, 5.0, 12.0, 30.0, 50.0, 80.0]


# ------------------------------------------------------------------------ collapse values


def test_triplet_collapse_value_is_n_far_times_margin() -> None:
    loss = create_loss("triplet", margin=0.1, near_radius=10.0, far_radius=15.0)
    assert collapse_value(loss, _line(POSITIONS)) == pytest.approx(3 * 0.1)
    six_far = [0.0, 1.0, 2.0] + [20.0 + 10 * k for k in range(6)]
    assert collapse_value(loss, _line(six_far)) == pytest.approx(0.6)  # the 0.600


def test_lazy_triplet_collapse_value_is_the_margin() -> None:
    loss = create_loss("lazy_triplet", margin=0.25, near_radius=10.0, far_radius=15.0)
    assert collapse_value(loss, _line(POSITIONS)) == pytest.approx(0.25)


def test_contrastive_collapse_value_is_half_the_squared_margin_per_far_image() -> None:
    # near terms 0.5 [0 - 0]+^2 = 0; far terms 0.5 [margin - 0]+^2 (D = sqrt(e + eps): rel)
    loss = create_loss("contrastive", margin=0.7, near_radius=10.0, far_radius=15.0)
    assert collapse_value(loss, _line(POSITIONS)) == pytest.approx(3 * 0.5 * 0.7**2, rel=1e-5)
    mean = create_loss(
        "contrastive", margin=0.7, near_radius=10.0, far_radius=15.0, reduction="mean"
    )
    assert collapse_value(mean, _line(POSITIONS)) == pytest.approx(3 * 0.5 * 0.7**2 / 5, rel=1e-5)


def test_soft_contrastive_ms_collapse_value_by_hand() -> None:
    # every similarity is 1, so s+ = w_near and s- = w_far; with 0/1 weights, lamb = 1 and no
    # mining a row with n near and m far pairs gives log(1 + n) / alpha + log(1 + m) / beta
    def influence(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (d < 10).float(), (d >= 10).float()

    alpha, beta = 2.0, 50.0
    distances = _line([0.0, 1.0, 20.0, 40.0])
    # rows 0 and 1: 1 near, 2 far; rows 2 and 3: 0 near, 3 far
    expected = (
        2 * (math.log(2) / alpha + math.log(3) / beta) + 2 * (math.log(4) / beta)
    ) / 4

    def loss(descriptors: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        return soft_contrastive_loss(
            descriptors, dist, influence, alpha=alpha, beta=beta, lamb=1.0, mining=False
        )

    assert collapse_value(loss, distances) == pytest.approx(expected, rel=1e-6)


def test_a_loss_undefined_at_collapse_has_no_value() -> None:
    def raising(descriptors: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        raise ValueError("needs spread")

    def nan(descriptors: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        return torch.tensor(float("nan"))

    assert collapse_value(raising, _line(POSITIONS)) is None
    assert collapse_value(nan, _line(POSITIONS)) is None


# ---------------------------------------------------------------------------- measures


def test_spread_measures_against_hand_values() -> None:
    square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # 4 sides of length sqrt(2) and 2 diagonals of length 2
    assert mean_pairwise_distance(square) == pytest.approx((4 * math.sqrt(2) + 2 * 2) / 6)
    assert effective_rank(square) == pytest.approx(2.0)  # two equal eigenvalues
    line = np.array([[1.0, 0.0], [-1.0, 0.0], [0.5, 0.0]])
    assert effective_rank(line) == pytest.approx(1.0)
    same = np.tile([[0.6, 0.8]], (5, 1))
    assert mean_pairwise_distance(same) == 0.0 and effective_rank(same) == 0.0


def test_probe_rows_come_from_the_seed() -> None:
    rows = np.arange(100, 400)
    a, b = probe_rows(rows, 3), probe_rows(rows, 3)
    assert np.array_equal(a, b) and len(a) == 48 and set(a) <= set(rows)
    assert not np.array_equal(a, probe_rows(rows, 4))
    assert len(probe_rows(rows[:10], 3)) == 10


# ---------------------------------------------------------------------------- detector


def test_detector_fires_once_after_the_window_and_remembers_the_onset() -> None:
    detector = CollapseDetector(window=3, spread_threshold=0.01)
    spreads = {0: 0.5, 10: 0.4, 20: 0.001, 30: 0.3, 40: 0.002, 50: 0.001, 60: 0.0, 70: 0.0}
    fired = []
    for step, spread in spreads.items():
        probe = detector.update(step, spread, 1.0, detector.signals(spread))
        fired.append(probe.collapsed)
    # the streak at 20 is broken at 30; 40, 50, 60 make 3 in a row
    assert fired == [False] * 6 + [True, True]
    assert detector.collapse is not None
    assert (detector.collapse.onset, detector.collapse.detected) == (40, 60)
    assert detector.collapse.last_healthy == 30 and detector.collapse.signals == (LOW_SPREAD,)


def test_detector_loss_signal_needs_the_median_step_at_its_collapse_value() -> None:
    detector = CollapseDetector(window=1, spread_threshold=0.0, loss_tolerance=1e-3)
    for loss in (0.6, 0.6, 0.45):  # two of three steps sit at 0.6
        detector.observe_loss(loss, 0.6)
    assert detector.signals(0.5) == (LOSS_AT_COLLAPSE,)
    for loss in (0.6, 0.45, 0.3):
        detector.observe_loss(loss, 0.6)
    assert detector.signals(0.5) == ()
    detector.observe_loss(0.5, None)  # no collapse value: no signal
    assert detector.signals(0.5) == ()


def test_collapse_config_keys_are_checked(tmp_path: Path) -> None:
    config = load_config(None, [f"data.root={tmp_path}", "train.stop_on_collapse=true"])
    assert config.train.stop_on_collapse is True and config.train.collapse_window == 2
    with pytest.raises(ConfigError, match="collapse_window"):
        load_config(None, [f"data.root={tmp_path}", "train.collapse_window=-1"])


# ----------------------------------------------------------------------------- trainer


class ConstantModel(torch.nn.Module):
    """Outputs one and the same unit vector for every image."""

    def __init__(self) -> None:
        super().__init__()
        self.direction = torch.nn.Parameter(torch.ones(16) / 4.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.direction.expand(images.shape[0], -1)


def _config(root: Path, *extra: str):
    return tiny_config(root, *extra, base=SMALL)


def test_the_detector_fires_on_a_constant_model_and_not_on_the_real_one(
    street, tmp_path: Path
) -> None:
    trainer = Trainer(_config(tmp_path), tmp_path / "run", progress=False)
    real = trainer.initial_model()
    watch = trainer.collapse
    assert not any(watch.probe(real, step).collapsed for step in (0, 3))
    constant = ConstantModel()
    first, second = watch.probe(constant, 6), watch.probe(constant, 9)
    assert first.spread == pytest.approx(0.0, abs=1e-6) and first.signals == (LOW_SPREAD,)
    assert not first.collapsed and second.collapsed  # window 2
    found = watch.detector.collapse
    assert found is not None and (found.onset, found.detected, found.last_healthy) == (6, 9, 3)
    assert "step 6" in watch.message() and "train.lr" in watch.message()


def test_the_training_loss_of_a_constant_model_is_its_collapse_value(
    street, tmp_path: Path
) -> None:
    trainer = Trainer(_config(tmp_path, "loss.name=triplet"), tmp_path / "run", progress=False)
    tup = trainer.sampler.sample(np.random.default_rng(0))
    loss = trainer.loss_fn(ConstantModel()(torch.zeros(len(tup.indices), 3, 24, 32)),
                           torch.from_numpy(tup.distances).float())
    n_far = int((tup.distances[0, 1:] >= 8).sum())  # tuples.far_radius=8, margin 0.1
    assert float(loss.detach()) == pytest.approx(0.1 * n_far)
    assert trainer.loss_fn.last_collapse_value == pytest.approx(float(loss.detach()))


def test_window_zero_turns_detection_off(street, tmp_path: Path) -> None:
    trainer = Trainer(_config(tmp_path, "train.collapse_window=0"), tmp_path / "r",
                      progress=False)
    assert not trainer.collapse.enabled and trainer.collapse.model_extra() == {}
    assert not hasattr(trainer.loss_fn, "last_collapse_value")
    assert trainer.collapse.after_step(ConstantModel(), 3, 0.2) is None


def test_a_healthy_tiny_run_is_not_marked(street, tmp_path: Path) -> None:
    out = tmp_path / "run"
    path = Trainer(_config(tmp_path), out, progress=False).run()
    rows = list(csv.DictReader((out / "val_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 3, 6]
    assert all(float(r["spread"]) > 0.05 and r["collapsed"] == "0" for r in rows)
    extra = json.loads(path.with_suffix(".json").read_text())["extra"]
    assert extra["collapsed"] is False and extra["step"] == 6
    assert marked_name("soft", out) == "soft"


def _collapse_after(trainer: Trainer, last_healthy_step: int) -> None:
    """Make the model output one constant vector from the step after ``last_healthy_step``."""
    original = trainer.train_step

    def step(model, optimizer, index):
        loss = original(model, optimizer, index)
        if index == last_healthy_step:  # 0-based: done = index + 1
            norm = model.backbone.features[13]
            with torch.no_grad():
                norm.weight.zero_()
                norm.bias.fill_(1.0)
        return loss

    trainer.train_step = step


STOPPING = [
    "train.steps=12",
    "train.val_every=2",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=10",
    "train.lr=0.0000001",
    "train.stop_on_collapse=true",
]


def test_stop_on_collapse_keeps_the_last_healthy_checkpoint(street, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer = Trainer(_config(tmp_path, *STOPPING), out, progress=False)
    _collapse_after(trainer, 4)  # steps 1-5 healthy: probes at 0, 2, 4 fine, 6 and 8 collapsed
    path = trainer.run()
    rows = list(csv.DictReader((out / "val_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6, 8]
    assert [r["collapsed"] for r in rows] == ["0", "0", "0", "0", "1"]
    assert rows[3]["collapse_signal"].startswith(LOW_SPREAD)
    steps = [int(r["step"]) for r in csv.DictReader((out / "train_log.csv").open())]
    assert steps[-1] == 8  # stopped early, before the checkpoint of step 8
    kept = load_file(str(path))
    at_4 = load_file(str(out / "checkpoints" / "step_00000004.safetensors"))
    at_6 = load_file(str(out / "checkpoints" / "step_00000006.safetensors"))
    assert all(torch.equal(kept[k], at_4[k]) for k in at_4)
    assert not all(torch.equal(kept[k], at_6[k]) for k in at_6)
    extra = json.loads(path.with_suffix(".json").read_text())["extra"]
    assert extra["collapsed"] is True and extra["collapse_step"] == 6
    assert extra["collapse_detected_step"] == 8 and extra["step"] == 4
    assert extra["stopped_on_collapse"] is True
    assert collapse_note(extra) == "(collapsed at step 6; kept step 4)"

    # a resumed run reads the verdict back from val_log.csv and keeps the same weights
    again = Trainer(_config(tmp_path, *STOPPING), out, progress=False).run(resume=True)
    resumed = load_file(str(again))
    assert all(torch.equal(resumed[k], at_4[k]) for k in at_4)
    assert json.loads(again.with_suffix(".json").read_text())["extra"]["collapse_step"] == 6


def test_without_stopping_the_run_goes_on_and_is_marked(street, tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = [s for s in STOPPING if "stop_on_collapse" not in s]
    trainer = Trainer(_config(tmp_path, *overrides), out, progress=False)
    _collapse_after(trainer, 4)
    path = trainer.run()
    extra = json.loads(path.with_suffix(".json").read_text())["extra"]
    assert extra["collapsed"] is True and extra["collapse_step"] == 6 and extra["step"] == 12
    assert "stopped_on_collapse" not in extra
    assert marked_name("triplet", path) == "triplet (collapsed at step 6)"


# ------------------------------------------------------------------------------- marks


def test_tables_and_report_mark_a_collapsed_model(street, tmp_path: Path) -> None:
    from softloc.evaluation.protocol import evaluate_maps
    from softloc.localize import build_map
    from softloc.models import create_model, save_model
    from softloc.report import build_report

    collapsed = save_model(
        create_model("small_gem", image_size=(32, 24)),
        tmp_path / "runs" / "triplet" / "model.safetensors",
        extra={"step": 3000, "collapsed": True, "collapse_step": 300},
    )
    healthy = save_model(create_model("raw_pixels", image_size=(32, 24)),
                         tmp_path / "raw.safetensors", extra={"collapsed": False})
    maps = {
        "triplet": build_map(collapsed, street, tmp_path / "maps" / "triplet", progress=False),
        "raw_pixels": build_map(healthy, street, tmp_path / "maps" / "raw", progress=False),
    }
    copied = json.loads((maps["triplet"] / "model.json").read_text())["extra"]
    assert copied["collapsed"] is True and copied["collapse_step"] == 300  # the map's copy

    table = evaluate_maps(maps, street, tmp_path / "eval", progress=False)
    assert "| triplet (collapsed at step 300) |" in table and "| raw_pixels |" in table
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results) == {"triplet (collapsed at step 300)", "raw_pixels"}

    out = tmp_path / "report"
    build_report(list(maps.values()), street, out, tsne_points=30, gradcam_count=1,
                 failure_count=1, progress=False)
    assert "triplet (collapsed at step 300)" in (out / "results.md").read_text()
    assert "triplet (collapsed at step 300)" in (out / "index.html").read_text()
    tables = list((out / "tables").glob("*.csv"))
    assert tables and all("triplet (collapsed at step 300)" in t.read_text() for t in tables)
    models = {m["name"]: m["collapse"] for m in json.loads((out / "report.json").read_text())
              ["models"]}
    assert models == {"triplet": "(collapsed at step 300)", "raw": ""}


@pytest.mark.slow
def test_the_demo_says_when_a_model_collapsed(tmp_path: Path, capsys) -> None:
    from softloc.demo import run_demo

    out = tmp_path / "demo"
    run_demo(out, seed=3, quick=True, progress=False, losses=["triplet"])
    assert "collapsed" not in capsys.readouterr().out
    assert "triplet" in json.loads((out / "results.json").read_text())

    # as if the probes of steps 2 and 4 had found no spread: the rerun (which resumes the
    # finished run) reads the verdict back from val_log.csv and marks the model
    log = out / "runs" / "triplet" / "val_log.csv"
    rows = list(csv.DictReader(log.open()))
    assert [r["step"] for r in rows] == ["0", "2", "4"]
    for row in rows[1:]:
        row["spread"], row["collapse_signal"] = "0", LOW_SPREAD
    with log.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = run_demo(out, seed=3, quick=True, progress=False, losses=["triplet"])
    printed = capsys.readouterr().out
    assert "WARNING: triplet (collapsed at step 2)" in printed
    assert "| triplet (collapsed at step 2) |" in table
    assert "triplet (collapsed at step 2)" in json.loads((out / "results.json").read_text())
    assert "triplet (collapsed at step 2)" in (out / "report" / "index.html").read_text()
