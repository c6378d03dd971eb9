"""benchmarks/demo_towns.py: its statistics over towns, on a tiny fake set of demo folders."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_towns.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_demo_towns", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_demo_towns"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_demo_towns", None)


def _fake_demo(folder: Path, soft: float, triplet: float, collapsed: bool) -> None:
    """A demo folder as far as the benchmark reads it: results.json and the runs' model.json."""
    def metrics(value: float) -> dict:
        return {"top1": {"5": value / 2, "10": value}, "upper_bound": {"10": 1.0}}

    name = "triplet (collapsed at step 300)" if collapsed else "triplet"
    results = {
        "raw_pixels": {"night": metrics(0.05), "snow": metrics(0.1)},
        "soft_contrastive": {"night": metrics(soft), "snow": metrics(soft + 0.1)},
        name: {"night": metrics(triplet), "snow": metrics(triplet)},
    }
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    for run, flag in (("soft_contrastive", False), ("triplet", collapsed)):
        (folder / "runs" / run).mkdir(parents=True)
        (folder / "runs" / run / "model.json").write_text(
            json.dumps({"extra": {"collapsed": flag}})
        )


def test_mean_spread_and_collapsed_towns(bench, tmp_path: Path) -> None:
    fake = {0: (0.9, 0.6, False), 1: (0.7, 0.2, True), 2: (0.8, 0.1, True)}
    for seed, (soft, triplet, collapsed) in fake.items():
        _fake_demo(tmp_path / f"town_{seed}", soft, triplet, collapsed)
    towns = {seed: bench.town_result(tmp_path / f"town_{seed}") for seed in fake}
    summary = bench.summarize(towns)

    soft = summary["soft_contrastive"]["top1_at_10m"]
    assert soft["night"]["mean"] == pytest.approx(0.8)
    # sample std of 0.9, 0.7, 0.8: sqrt((0.01 + 0.01 + 0) / 2) = 0.1
    assert soft["night"]["std"] == pytest.approx(0.1) and soft["night"]["n"] == 3
    assert soft["snow"]["mean"] == pytest.approx(0.9)
    triplet = summary["triplet"]  # the collapse note is stripped from the name
    assert triplet["top1_at_10m"]["night"]["mean"] == pytest.approx(0.3)
    assert triplet["top1_at_10m"]["night"]["std"] == pytest.approx(math.sqrt(0.07))
    assert (triplet["collapsed"], triplet["collapsed_towns"], triplet["towns"]) == (2, [1, 2], 3)
    assert summary["raw_pixels"]["collapsed"] == 0
    assert summary["raw_pixels"]["top1_at_10m"]["snow"]["std"] == pytest.approx(0.0)

    table = bench.markdown(summary, list(fake))
    assert "| soft_contrastive | 80.0 +- 10.0 | 90.0 +- 10.0 | 0 / 3 |" in table
    assert "| triplet | 30.0 +- 26.5 | 30.0 +- 26.5 | 2 / 3 |" in table


def test_one_town_has_no_spread(bench, tmp_path: Path) -> None:
    _fake_demo(tmp_path / "town_5", 0.5, 0.4, False)
    summary = bench.summarize({5: bench.town_result(tmp_path / "town_5")})
    assert summary["triplet"]["top1_at_10m"]["night"] == {"mean": 0.4, "std": 0.0, "n": 1}


def test_table_columns_follow_the_town_conditions_order(bench) -> None:
    one = {"mean": 0.5, "std": 0.0, "n": 1}
    summary = {"m": {"top1_at_10m": {"snow": one, "fog": one, "overcast": one, "night": one},
                     "towns": 1, "collapsed": 0, "collapsed_towns": []}}
    header = bench.markdown(summary, [0]).splitlines()[2]
    assert header == "| model | overcast | night | snow | fog | collapsed |"
