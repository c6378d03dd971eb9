"""The margin-ambiguity check: margins worked by hand on six images, and the CLI sweep."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from softloc.cli import main
from softloc.models import create_model, save_model
from softloc.sweeps.margin import (
    anchor_margins,
    margin_rows,
    parse_model_arguments,
    summarise_margins,
)

# Six images on a line (metres) with 1-D descriptors; descriptor distance = |f_i - f_j|.
X = np.array([0.0, 5.0, 14.0, 16.0, 30.0, 60.0])
F = np.array([0.0, 0.5, 1.4, 1.2, 3.0, 6.0])[:, None]
POSITIONS = np.stack([X, np.zeros_like(X)], axis=1)


def test_margins_by_hand_with_no_gap() -> None:
    # tau1 = tau2 = 15 m: positives d <= 15, negatives d > 15.
    # anchor 0: pos {1 (5 m), 2 (14 m)}, farthest D = 1.4; neg {3, 4, 5}, nearest D = 1.2 -> -0.2
    # anchor 1: pos {0, 2, 3} max 0.9; neg {4, 5} min 2.5 -> 1.6
    # anchor 2: pos {0, 1, 3} max 1.4; neg {4 (16 m), 5} min 1.6 -> 0.2
    # anchor 3: pos {1, 2, 4 (14 m)} max 1.8; neg {0 (16 m), 5} min 1.2 -> -0.6
    # anchor 4: pos {3} max 1.8; neg {0, 1, 2, 5} min 1.6 -> -0.2
    # anchor 5: no image within 15 m -> no margin
    margins = anchor_margins(F, POSITIONS, range(6), 15.0, 15.0)
    assert margins[:5] == pytest.approx([-0.2, 1.6, 0.2, -0.6, -0.2])
    assert math.isnan(margins[5])
    summary = summarise_margins(margins)
    assert summary["achieved_margin"] == pytest.approx(-0.6)
    assert summary["median_margin"] == pytest.approx(-0.2)
    assert summary["violating_share"] == pytest.approx(3 / 5)
    assert (summary["anchors_used"], summary["anchors_skipped"]) == (5, 1)


def test_margins_by_hand_with_a_ten_metre_gap() -> None:
    # tau1 = 10, tau2 = 20: images 10-20 m away are neither.
    # anchor 0: pos {1} 0.5; neg {4, 5} 3.0 -> 2.5.  anchor 1: pos {0, 2} 0.9; neg {4, 5} 2.5 -> 1.6
    # anchor 2: pos {1, 3} 0.9; neg {5} 4.6 -> 3.7.  anchor 3: pos {2} 0.2; neg {5} 4.8 -> 4.6
    # anchors 4 and 5: no image within 10 m.
    margins = anchor_margins(F, POSITIONS, range(6), 10.0, 20.0)
    assert margins[:4] == pytest.approx([2.5, 1.6, 3.7, 4.6])
    assert np.isnan(margins[4:]).all()
    summary = summarise_margins(margins)
    assert summary["achieved_margin"] == pytest.approx(1.6)
    assert summary["violating_share"] == 0.0


def test_margins_within_groups_by_hand() -> None:
    # Two drives: "r" holds images 0, 2, 4 (x = 0, 14, 30), "n" images 1, 3, 5 (5, 16, 60).
    # tau1 = tau2 = 15 m, candidates from the anchor's own drive only:
    # anchor 0: pos {2} 1.4; neg {4} 3.0 -> 1.6.   anchor 2: pos {0} 1.4; neg {4} 1.6 -> 0.2
    # anchor 1: pos {3} 0.7; neg {5} 5.5 -> 4.8.   anchor 3: pos {1} 0.7; neg {5} 4.8 -> 4.1
    # anchors 4 and 5: nothing of their drive within 15 m.
    groups = ["r", "n", "r", "n", "r", "n"]
    margins = anchor_margins(F, POSITIONS, range(6), 15.0, 15.0, groups)
    assert margins[:4] == pytest.approx([1.6, 4.8, 0.2, 4.1])
    assert np.isnan(margins[4:]).all()
    assert summarise_margins(margins)["violating_share"] == 0.0
    with pytest.raises(ValueError, match="one label per image"):
        anchor_margins(F, POSITIONS, [0], 15.0, 15.0, groups[:5])


def test_rows_use_radii_around_the_centre() -> None:
    rows = margin_rows({"m": F}, POSITIONS, np.arange(6), [0.0, 10.0], centre=15.0)
    assert [(r["tau1_m"], r["tau2_m"]) for r in rows] == [(15.0, 15.0), (10.0, 20.0)]
    assert [r["achieved_margin"] for r in rows] == pytest.approx([-0.6, 1.6])


def test_no_usable_anchor_and_bad_radii() -> None:
    summary = summarise_margins(anchor_margins(F, POSITIONS, [5], 15.0, 15.0))
    assert summary["achieved_margin"] is None and summary["anchors_used"] == 0
    with pytest.raises(ValueError, match="tau1 <= tau2"):
        anchor_margins(F, POSITIONS, [0], 20.0, 10.0)
    with pytest.raises(ValueError, match="one row per image"):
        anchor_margins(F[:5], POSITIONS, [0], 10.0, 20.0)


def test_model_arguments() -> None:
    assert parse_model_arguments(["soft=a/m.safetensors", "runs/triplet/model.safetensors"]) == {
        "soft": Path("a/m.safetensors"), "triplet": Path("runs/triplet/model.safetensors")}
    with pytest.raises(ValueError, match="twice"):
        parse_model_arguments(["a=x", "a=y"])


def test_cli_sweep_margin_writes_table_and_plot(street, tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = save_model(create_model("small_gem", image_size=(32, 24)),
                       tmp_path / "a" / "m.safetensors")
    torch.manual_seed(1)
    second = save_model(create_model("small_gem", image_size=(32, 24)),
                        tmp_path / "b" / "m.safetensors")
    out = tmp_path / "sweep"
    common = ["--data", str(street.root), "--out", str(out), "--split", "train",
              "--gaps", "0", "4", "--anchors", "20"]
    assert main(["-q", "sweep", "margin", "--model", f"untrained={first}", str(second),
                 *common]) == 0
    with open(out / "sweep_margin.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["gap_m"]) for r in rows] == [
        ("untrained", "0.0000"), ("untrained", "4.0000"), ("b", "0.0000"), ("b", "4.0000")]
    document = json.loads((out / "sweep_margin.json").read_text())
    assert document["config"]["num_anchors"] == 20
    assert document["config"]["within"] == "traversal"
    assert all(r["anchors_used"] == 20 for r in document["rows"])
    # A wider gap drops the hardest positives and negatives: the margin cannot shrink.
    for name in ("untrained", "b"):
        mine = [r for r in document["rows"] if r["model"] == name]
        assert mine[1]["achieved_margin"] >= mine[0]["achieved_margin"]
    assert (out / "sweep_margin.png").stat().st_size > 0
    # A missing model: exit 2, and the folder it already holds is kept.
    assert main(["-q", "sweep", "margin", "--model", str(tmp_path / "none.safetensors"),
                 *common]) == 2
    assert (out / "sweep_margin.csv").is_file()
    assert main(["-q", "sweep", "margin", "--model", str(first), *common[:6],
                 "--gaps=-1"]) == 2
