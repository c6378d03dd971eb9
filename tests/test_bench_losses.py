"""benchmarks/losses/run.py: every loss is benchmarked; the table's means and spreads."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

from softloc.losses import available_influences, available_losses

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "losses" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_losses", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_losses"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_losses", None)


def test_every_registered_loss_and_influence_is_a_condition(bench) -> None:
    names = {o.split("=", 1)[1] for c in bench.CONDITIONS.values() for o in c
             if o.startswith("loss.name=")}
    influences = {o.split("=", 1)[1] for c in bench.CONDITIONS.values() for o in c
                  if o.startswith("loss.influence=")}
    assert names == set(available_losses())
    assert influences == set(available_influences())


def _result(condition: str, seed: int, top1: float) -> dict:
    metrics = {
        q: {"top1": {"5": top1 / 2, "10": top1, "15": top1}, "num_queries": 10,
            "upper_bound": {"5": 0.9, "10": 1.0, "15": 1.0}}
        for q in ("overcast", "night")
    }
    return {"condition": condition, "seed": seed, "train_seconds": 1.0, "total_seconds": 2.0,
            "metrics": metrics}


def test_table_reports_mean_and_sample_spread_over_seeds(bench) -> None:
    results = [_result("triplet", s, v) for s, v in enumerate([0.5, 0.6, 0.7])]
    results += [_result("soft_sigmoid", 0, 0.8)]
    table = bench.markdown_table(results, ["triplet", "soft_sigmoid", "missing"])
    lines = table.splitlines()
    assert lines[0].startswith("| loss | overcast @5 m | overcast @10 m")
    spread = statistics.stdev([50.0, 60.0, 70.0])
    assert f"| triplet | 30.0 ± {spread / 2:.1f} | 60.0 ± {spread:.1f} |" in table
    assert "| soft_sigmoid | 40.0 | 80.0 | 80.0 |" in table  # one seed: no spread
    assert "missing" not in table
    assert lines[-1].startswith("| upper bound | 90.0 | 100.0 | 100.0 |")


def test_runs_share_everything_but_the_loss(bench, tmp_path: Path) -> None:
    protocol = bench.full_protocol(None, 3e-4, False)
    from softloc.config import load_config

    configs = {
        name: load_config("demo", protocol.overrides(tmp_path, 1, 1) + list(overrides))
        for name, overrides in bench.CONDITIONS.items()
    }
    first = next(iter(configs.values()))
    for config in configs.values():
        assert config.train == first.train and config.tuples == first.tuples
        assert config.model == first.model and config.mining == first.mining
    assert first.train.steps == 1200 and first.train.seed == 1 and first.tuples.n_near == 6


def test_a_failed_run_is_reported_not_fatal(bench) -> None:
    results = [_result("triplet", 0, 0.5), {"condition": "log_ratio", "seed": 1,
                                            "error": "non-finite loss nan at step 3"}]
    table = bench.markdown_table(results, ["triplet", "log_ratio"])
    assert "| triplet |" in table and "| log_ratio |" not in table
    assert "log_ratio seed 1 failed: non-finite loss nan at step 3" in table
