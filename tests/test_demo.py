"""The main job end to end, in its quick form (tiny town, a few steps per model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softloc.cli import main

MODELS = ["raw_pixels", "untrained", "soft_contrastive", "triplet"]
CONDITIONS = ["overcast", "sunny", "night", "snow"]


@pytest.mark.slow
def test_quick_demo_writes_every_result(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--quick", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert sorted(results) == sorted(MODELS)
    for model in MODELS:
        assert sorted(results[model]) == sorted(CONDITIONS)
        for condition in CONDITIONS:
            entry = results[model][condition]
            for key in ("top1", "top5", "upper_bound"):
                assert sorted(entry[key], key=float) == ["5", "10", "15", "25"]
            for t in ("5", "10", "15", "25"):
                assert 0.0 <= entry["top1"][t] <= entry["top5"][t] <= entry["upper_bound"][t]
    assert "| soft_contrastive | night |" in printed
    for name in ("results.md", "curves.png", "demo.yaml", "town/places.csv",
                 "report/index.html", "report/tsne.png", "report/gradcam/query_1.png"):
        assert (out / name).is_file(), name
    for run in ("soft_contrastive", "triplet"):
        assert (out / "runs" / run / "config.yaml").is_file()
        assert (out / "runs" / run / "model.safetensors").is_file()
    # a second run reuses the town and the trained models and gives the same table
    first = (out / "results.md").read_text()
    stamp = (out / "town" / "places.csv").stat().st_mtime_ns
    assert main(["-q", "demo", "--out", str(out), "--quick", "--seed", "3"]) == 0
    assert (out / "town" / "places.csv").stat().st_mtime_ns == stamp
    assert (out / "results.md").read_text() == first


def test_demo_takes_any_registered_loss_and_rejects_unknown_ones(tmp_path: Path) -> None:
    from softloc.demo import losses_by_name
    from softloc.losses import available_losses

    entries = losses_by_name(available_losses())
    assert entries["quadruplet"] == ("loss.name=quadruplet",) and len(entries) >= 11
    with pytest.raises(ValueError, match="unknown loss 'hinge'; known losses: contrastive"):
        losses_by_name(["triplet", "hinge"])
    assert main(["-q", "demo", "--out", str(tmp_path / "d"), "--quick", "--loss", "hinge"]) == 2
