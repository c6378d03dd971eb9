"""Sequence evaluation: drives in time order, exact lattices, L = 1 equals single images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from softloc.data.places import PlaceTable
from softloc.evaluation.metrics import topn_accuracy
from softloc.evaluation.sequences import accuracy_by_length, drive_orders, lattice
from softloc.sequence import SequenceConfig


def table(xs: np.ndarray, traversal: list[str], condition: list[str], stamps: np.ndarray):
    n = len(xs)
    return PlaceTable(
        path=np.array([f"q{i}.png" for i in range(n)]), x=np.asarray(xs, float),
        y=np.zeros(n), yaw=np.zeros(n), timestamp=np.asarray(stamps, float),
        traversal=np.array(traversal), condition=np.array(condition),
        split=np.array(["test"] * n), root=Path("."),
    )


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_drive_orders_sort_each_traversal_by_time() -> None:
    q = table(np.arange(5.0), ["a", "b", "a", "b", "a"], ["night"] * 5, [3, 1, 1, 0, 2])
    assert [d.tolist() for d in drive_orders(q)] == [[2, 4, 0], [3, 1]]


def test_lattice_matches_a_brute_force_ranking_with_ties() -> None:
    rng = np.random.default_rng(0)
    refs = unit(rng.normal(size=(30, 8)))
    refs[7] = refs[3]  # a tie: row 3 must rank before row 7
    queries = unit(refs[[3, 10, 20]] + 0.01 * rng.normal(size=(3, 8)))
    queries[0] = refs[3]
    rows, dists = lattice(refs, queries, k=5)
    scores = queries @ refs.T
    for q in range(3):
        expected = sorted(range(30), key=lambda r: (-round(float(scores[q, r]), 6), r))[:5]
        assert rows[q].tolist() == expected
    np.testing.assert_allclose(dists, 2 - 2 * np.take_along_axis(scores, rows, 1), atol=1e-5)
    assert rows[0, :2].tolist() == [3, 7]


def test_length_one_is_single_image_top1_and_sequences_help() -> None:
    rng = np.random.default_rng(1)
    ref_xy = np.stack([np.arange(60) * 3.0, np.zeros(60)], axis=1)
    refs = unit(rng.normal(size=(60, 16)))
    true = np.r_[np.arange(5, 45), np.arange(10, 50)]
    q = table(ref_xy[true, 0] + 0.5, ["night"] * 40 + ["snow"] * 40,
              ["night"] * 40 + ["snow"] * 40, np.r_[np.arange(40.0), np.arange(40.0)])
    noise = np.where(np.arange(80)[:, None] % 3 == 0, 1.2, 0.3)  # every third frame is hard
    query_desc = unit(refs[true] + noise * rng.normal(size=(80, 16)))
    cands, dists = lattice(refs, query_desc, k=10)
    config = SequenceConfig(temperature=0.05, max_speed=6.0)
    result = accuracy_by_length(q, cands, dists, ref_xy, config, lengths=(1, 10),
                                thresholds=(5.0,))
    for condition in ("night", "snow"):
        mask = q.condition == condition
        single = topn_accuracy(q.xy[mask], ref_xy, cands[mask, :1], (5.0,))[0, 0]
        assert result["1"][condition]["5"] == single
        assert result["10"][condition]["5"] >= single
    assert np.mean([result["10"][c]["5"] for c in ("night", "snow")]) > np.mean(
        [result["1"][c]["5"] for c in ("night", "snow")]
    )


def test_evaluate_and_sweep_sequence_from_the_cli(street, tmp_path: Path) -> None:
    import json

    from softloc.cli import main
    from softloc.localize import build_map
    from softloc.models import create_model, save_model

    model = save_model(create_model("small_gem", image_size=(32, 24)), tmp_path / "m.safetensors")
    map_dir = build_map(model, street, tmp_path / "map", progress=False)
    assert main(["-q", "evaluate", "--map", str(map_dir), "--data", str(street.root),
                 "--out", str(tmp_path / "eval"), "--sequence", "1", "--sequence", "3"]) == 0
    night = json.loads((tmp_path / "eval" / "results.json").read_text())["map"]["night"]
    # L = 1 is single-image retrieval: the same numbers as the top-1 table
    assert night["top1_seq1"] == night["top1"]
    assert set(night["top1_seq3"]) == set(night["top1"])
    # the confidence calibration is there and consistent
    curve = night["precision_coverage_10m"]
    assert curve["coverage"][-1] == 1.0 and len(curve["thresholds"]) == len(curve["precision"])
    assert 0.0 <= night["coverage_p95_10m"] <= 1.0
    assert (tmp_path / "eval" / "precision_coverage.png").stat().st_size > 1000
    assert main(["-q", "sweep", "sequence", "--map", str(map_dir), "--data", str(street.root),
                 "--out", str(tmp_path / "sweep"), "--lengths", "1", "2"]) == 0
    sweep = json.loads((tmp_path / "sweep" / "sweep_sequence.json").read_text())
    assert [r["length"] for r in sweep["rows"]] == [1, 2]
    assert sweep["rows"][0]["top1_10m"] == night["top1"]["10"]
