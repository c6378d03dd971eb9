"""benchmarks/losses/run.py: every loss is benchmarked; the table's means and spreads."""

from __future__ import annotations

import importlib.util
import json
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


# ------------------------------------------------------------ the decisive protocol's stats

STATS = SCRIPT.parent / "stats.py"


@pytest.fixture(scope="module")
def stats():
    spec = importlib.util.spec_from_file_location("bench_losses_stats_test", STATS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lr_choice_by_mean_over_conditions_ties_to_the_smaller_rate(stats) -> None:
    grid = {1e-4: {"a": 50.0, "b": 70.0},   # mean 60
            3e-4: {"a": 80.0, "b": 60.0},   # mean 70: best, though not best on "a"
            1e-3: {"a": 90.0, "b": 40.0}}   # mean 65
    assert stats.choose_lr(grid) == 3e-4
    assert stats.choose_lr({1e-3: {"a": 60.0}, 1e-4: {"a": 60.0}}) == 1e-4
    with pytest.raises(ValueError, match="empty"):
        stats.choose_lr({})


def test_mean_over_conditions_weighs_conditions_not_queries(stats) -> None:
    # 25 % of 4 queries and 100 % of 2: 62.5, not the pooled 3 / 6 = 50.
    assert stats.mean_over_conditions({"a": [1, 0, 0, 0], "b": [1, 1]}) == 62.5


LOSS_HITS = {0: {"a": [1, 1, 0, 0], "b": [1, 0]}, 1: {"a": [1, 0, 0, 0], "b": [1, 1]}}
SOFT_HITS = {0: {"a": [1, 0, 0, 0], "b": [0, 0]}, 1: {"a": [1, 0, 0, 0], "b": [1, 0]}}


def test_paired_difference_by_hand(stats) -> None:
    # seed 0: a 50 - 25 = 25, b 50 - 0 = 50 -> 37.5; seed 1: a 0, b 100 - 50 = 50 -> 25.
    assert stats.paired_difference(LOSS_HITS, SOFT_HITS) == pytest.approx(31.25)
    with pytest.raises(ValueError, match="same queries"):
        stats.paired_difference({0: {"a": [1, 0]}}, {0: {"a": [1]}})


def test_bootstrap_interval_over_queries_by_hand(stats) -> None:
    # One seed, one condition, differences (100, 0, 0, 0) points: a replicate's mean is 25 k
    # with k ~ Binomial(4, 1/4): P(k = 0) = 0.316, P(k <= 2) = 0.949, P(k <= 3) = 0.996, so
    # the 2.5 % quantile is 0 and the 97.5 % quantile 75.
    low, high = stats.bootstrap_difference_ci({0: {"a": [1, 0, 0, 0]}},
                                              {0: {"a": [0, 0, 0, 0]}}, replicates=4000)
    assert (low, high) == (0.0, 75.0)


def test_bootstrap_interval_over_seeds_by_hand(stats) -> None:
    # Two seeds of one query each, differences 0 and 100: replicate means 0, 50, 100 with
    # probabilities 1/4, 1/2, 1/4, so the interval is [0, 100].
    low, high = stats.bootstrap_difference_ci({0: {"a": [1]}, 1: {"a": [1]}},
                                              {0: {"a": [1]}, 1: {"a": [0]}}, replicates=4000)
    assert (low, high) == (0.0, 100.0)
    # Identical differences everywhere: no spread at all.
    same = {s: {"a": [1, 1], "b": [1]} for s in range(3)}
    none = {s: {"a": [0, 0], "b": [0]} for s in range(3)}
    assert stats.bootstrap_difference_ci(same, none, replicates=200) == (100.0, 100.0)


def test_bootstrap_interval_does_not_depend_on_the_order_of_conditions(stats) -> None:
    """Cached and fresh results list conditions in different orders; the same seed must give
    the same interval."""
    loss = {0: {"a": [1, 0, 1], "b": [1, 1]}, 1: {"a": [0, 0, 1], "b": [1, 0]}}
    soft = {0: {"a": [0, 0, 1], "b": [0, 1]}, 1: {"a": [0, 1, 1], "b": [1, 1]}}
    flipped = {s: dict(reversed(list(h.items()))) for s, h in loss.items()}
    assert stats.bootstrap_difference_ci(loss, soft, replicates=200) == (
        stats.bootstrap_difference_ci(flipped, soft, replicates=200))


def test_loss_summary_has_the_issue_schema(stats) -> None:
    entry = stats.loss_summary([1e-4, 3e-4], 3e-4, LOSS_HITS, SOFT_HITS, replicates=500)
    assert set(entry) >= {"lr_grid", "lr", "seeds", "per_seed", "mean_top1_10m",
                          "diff_to_soft_ci95", "per_condition"}
    assert entry["seeds"] == [0, 1]
    # seed 0: a 2/4 = 50, b 1/2 = 50 -> 50; seed 1: a 1/4 = 25, b 2/2 = 100 -> 62.5.
    assert entry["per_seed"] == [50.0, 62.5] and entry["mean_top1_10m"] == 56.25
    assert entry["per_condition"]["a"] == {"per_seed": [50.0, 25.0], "mean": 37.5}
    assert entry["per_condition"]["b"] == {"per_seed": [50.0, 100.0], "mean": 75.0}
    low, high = entry["diff_to_soft_ci95"]
    assert entry["diff_to_soft"] == pytest.approx(31.25)
    assert low <= entry["diff_to_soft"] <= high
    assert entry["ci_width_ok"] == (high - low <= 6.0)


def test_decisive_protocol_chooses_rates_then_pairs_every_loss_with_soft(bench, stats,
                                                                       tmp_path) -> None:
    """Orchestration with a stand-in for training: grid on val, chosen rate on test."""
    best = {"triplet": 1e-3, "soft_sigmoid": 3e-4}
    calls = []

    def fake_run(condition, seed, protocol, dataset, out, threads):
        calls.append((condition, seed, protocol.lr, protocol.split, protocol.mining, out))
        good = protocol.lr == best.get(condition)
        top1 = 0.8 if good else 0.5
        hits = {"overcast": [1, 1, 1, 0] if condition == "triplet" else [1, 1, 0, 0],
                "night": [1, 0] if seed % 2 else [0, 0]}
        metrics = {q: {"top1": {"10": top1}} for q in ("overcast", "night")}
        return {"condition": condition, "seed": seed, "lr": protocol.lr, "metrics": metrics,
                "hits": hits}

    outcome = bench.run_decisive(["off_the_shelf", "triplet"], [0, 1, 2],
                                 [1e-4, 3e-4, 1e-3], None, tmp_path, tmp_path, 1, 1,
                                 runner=fake_run, replicates=300)
    grid_calls = [c for c in calls if c[3] == "val"]
    assert len(grid_calls) == 2 * 3 and all(c[1] == 0 for c in grid_calls)  # off_the_shelf: none
    assert all(c[4] for c in calls), "hard mining is on for every run"
    assert outcome["chosen_lr"] == best
    final = [c for c in calls if c[3] == "test"]
    assert sorted((c[0], c[1]) for c in final) == sorted(
        (n, s) for n in ("off_the_shelf", "triplet", "soft_sigmoid") for s in (0, 1, 2))
    assert {c[2] for c in final if c[0] == "triplet"} == {1e-3}
    document = outcome["document"]
    assert document["soft_sigmoid"]["diff_to_soft_ci95"] == [0.0, 0.0]
    # triplet: overcast 75 % against the soft loss's 50 %, night equal, on every seed: the
    # difference is (25 + 0) / 2 = 12.5 points.
    assert document["triplet"]["diff_to_soft"] == pytest.approx(12.5)
    assert document["off_the_shelf"]["lr"] is None and document["off_the_shelf"]["lr_grid"] == []
    table = bench.decisive_table(document)
    assert "| triplet | 0.001 |" in table and "+12.5 [" in table
    plots = bench.plot_decisive(document, tmp_path, outcome["folders"])
    assert all(p.stat().st_size > 0 for p in plots)


def test_extra_seeds_run_only_for_the_named_losses_and_the_soft_loss(bench, tmp_path) -> None:
    """--extra-seeds: queued seed by seed after the base seeds, for --extra-for and the soft
    loss only; the paired difference uses the seeds both ran, and the report says which."""
    calls = []

    def fake_run(condition, seed, protocol, dataset, out, threads):
        calls.append((condition, seed, protocol.split))
        # triplet beats the soft loss by 50 points on seeds 0-1 and by 0 on seeds 2-3.
        good = condition == "triplet" and seed < 2
        hits = {"overcast": [1, 1] if good else [1, 0]}
        metrics = {"overcast": {"top1": {"10": 0.5}}}
        return {"condition": condition, "seed": seed, "lr": protocol.lr, "metrics": metrics,
                "hits": hits}

    outcome = bench.run_decisive(["triplet", "quadruplet"], [0, 1], [1e-4], None, tmp_path,
                                 tmp_path, 1, 1, runner=fake_run, replicates=50,
                                 extra=[([1, 2, 3], ["triplet"])])
    final = [(c, s) for c, s, split in calls if split == "test"]
    base = [(c, s) for c in ("triplet", "quadruplet", "soft_sigmoid") for s in (0, 1)]
    assert final[:6] == base
    # seed 1 is a base seed and is not run twice; the rest go seed by seed
    assert final[6:] == [("triplet", 2), ("soft_sigmoid", 2), ("triplet", 3), ("soft_sigmoid", 3)]
    document = outcome["document"]
    assert document["triplet"]["seeds"] == [0, 1, 2, 3]
    assert document["quadruplet"]["seeds"] == [0, 1]
    assert document["triplet"]["diff_to_soft"] == pytest.approx(25.0)  # (50 + 50 + 0 + 0) / 4
    assert bench._extra_seed_clause(document, [0, 1]) == (
        ", and seeds 2-3 as well for triplet, soft_sigmoid")


def test_rates_taken_from_a_results_file_skip_the_grid(bench, tmp_path) -> None:
    """--lr-from: no validation run, every trained loss at the file's rate, no grid recorded;
    a loss the file lacks, a file that is not a results.json, and a report folder that is
    the decisive table's (or none) are refused before anything runs."""
    import argparse

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"losses": {
        "soft_sigmoid": {"lr": 3e-4}, "triplet": {"lr": 1e-4}, "off_the_shelf": {"lr": None}}}))
    rates = bench.rates_from(results, ["triplet", "off_the_shelf"])
    assert rates == {"soft_sigmoid": 3e-4, "triplet": 1e-4}
    calls = []

    def fake_run(condition, seed, protocol, dataset, out, threads):
        calls.append((condition, seed, protocol.lr, protocol.split, protocol.steps))
        hits = {"overcast": [1, 1] if condition == "triplet" else [1, 0]}
        return {"condition": condition, "seed": seed, "lr": protocol.lr,
                "metrics": {"overcast": {"top1": {"10": 0.5}}}, "hits": hits}

    outcome = bench.run_decisive(["triplet"], [0, 1], [1e-4, 3e-4, 1e-3], 3600, tmp_path,
                                 tmp_path, 1, 1, runner=fake_run, replicates=50,
                                 chosen_lr=rates)
    assert {c[3] for c in calls} == {"test"}, "no grid run on validation"
    assert sorted((c[0], c[2]) for c in calls) == [
        ("soft_sigmoid", 3e-4), ("soft_sigmoid", 3e-4), ("triplet", 1e-4), ("triplet", 1e-4)]
    assert {c[4] for c in calls} == {3600} and outcome["steps"] == 3600
    assert outcome["document"]["triplet"]["lr_grid"] == []
    assert outcome["document"]["triplet"]["diff_to_soft"] == pytest.approx(50.0)
    (tmp_path / "discussion.md").write_text("a person's reading")
    bench.write_decisive_report(tmp_path / "R.md", outcome, [0, 1], [1e-4], 1, 1, 60.0, [],
                                lr_from=results, discussion=tmp_path / "discussion.md")
    report = (tmp_path / "R.md").read_text()
    assert "3,600 training steps" in report and f"taken from `{results}`" in report
    assert "chosen from" not in report and report.rstrip().endswith("a person's reading")
    with pytest.raises(ValueError, match="quadruplet"):
        bench.run_decisive(["quadruplet"], [0], [1e-4], None, tmp_path, tmp_path, 1, 1,
                           runner=fake_run, chosen_lr=rates)
    with pytest.raises(SystemExit, match="quadruplet"):
        bench.rates_from(results, ["quadruplet"])
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a decisive results.json"):
        bench.rates_from(tmp_path / "other.json", ["triplet"])

    def args(**given):
        base = {"report_dir": None, "lr_from": None, "quick": False, "out": None}
        return argparse.Namespace(**{**base, **given})

    assert bench.report_folder(args()) == bench.HERE
    assert bench.report_folder(args(report_dir=tmp_path / "long")) == tmp_path / "long"
    with pytest.raises(SystemExit, match="needs --report-dir"):
        bench.report_folder(args(lr_from=results))
    with pytest.raises(SystemExit, match="holds the decisive table"):
        bench.report_folder(args(lr_from=results, report_dir=bench.HERE))
    assert bench.report_folder(args(lr_from=results, report_dir=tmp_path)) == tmp_path


def test_extra_seed_tiers_queue_in_order_without_repeats(bench, tmp_path) -> None:
    """Two tiers: seeds 2-3 for both losses, then 2-5 for triplet only; each (loss, seed) runs
    once, the second tier after the first, and the report names each group's seeds."""
    calls = []

    def fake_run(condition, seed, protocol, dataset, out, threads):
        calls.append((condition, seed, protocol.split))
        return {"condition": condition, "seed": seed, "lr": protocol.lr,
                "metrics": {"overcast": {"top1": {"10": 0.5}}}, "hits": {"overcast": [1, 0]}}

    outcome = bench.run_decisive(["triplet", "quadruplet"], [0, 1], [1e-4], None, tmp_path,
                                 tmp_path, 1, 1, runner=fake_run, replicates=50,
                                 extra=[([2, 3], ["triplet", "quadruplet"]),
                                        ([2, 3, 4, 5], ["triplet"])])
    final = [(c, s) for c, s, split in calls if split == "test"]
    assert len(final) == len(set(final))
    assert final[6:] == [(c, s) for s in (2, 3) for c in ("triplet", "quadruplet", "soft_sigmoid")
                         ] + [(c, s) for s in (4, 5) for c in ("triplet", "soft_sigmoid")]
    document = outcome["document"]
    assert document["quadruplet"]["seeds"] == [0, 1, 2, 3]
    assert document["triplet"]["seeds"] == [0, 1, 2, 3, 4, 5]
    assert bench._extra_seed_clause(document, [0, 1]) == (
        ", and seeds 2-3 as well for quadruplet; seeds 2-5 for triplet, soft_sigmoid")


def test_per_query_hits_agree_with_the_evaluation(bench, street, tmp_path) -> None:
    from softloc.evaluation.protocol import evaluate_map
    from softloc.localize import build_map
    from softloc.models import create_model, save_model

    model = save_model(create_model("small_gem", image_size=(32, 24)), tmp_path / "m.safetensors")
    map_dir = build_map(model, street, tmp_path / "map", split="test", progress=False)
    metrics, hits = bench.evaluate_with_hits(map_dir, street, "test")
    assert metrics == evaluate_map(map_dir, street, split="test", progress=False)
    for condition, values in hits.items():
        assert len(values) == metrics[condition]["num_queries"]
        assert statistics.mean(values) == pytest.approx(metrics[condition]["top1"]["10"])


def test_records_carry_finished_runs_to_a_fresh_folder_and_nothing_else(bench,
                                                                        tmp_path) -> None:
    """Exported records seed another --out: finished runs are not trained again there, a
    run still training is not exported, and a result the new folder holds is never replaced."""
    old, records, new = tmp_path / "old", tmp_path / "records", tmp_path / "new"
    done = old / "final" / "lr0.0003" / "runs" / "triplet" / "seed1"
    done.mkdir(parents=True)
    (done / "result.json").write_text(json.dumps({
        "condition": "triplet", "seed": 1, "hits": {"night": [1, 0]},
        "metrics": {"night": {"top1": {"10": 0.5}, "curves": {"recall": [0.1] * 500}}}}))
    (done / "val_log.csv").write_text("step,top1\n150,0.5\n")
    (done / "model.safetensors").write_bytes(b"weights stay out of the records")
    training = old / "grid" / "lr0.001" / "runs" / "triplet" / "seed0"
    training.mkdir(parents=True)
    (training / "config.yaml").write_text("train: {}\n")
    assert bench.export_records(old, records) == 1
    kept = sorted(p.relative_to(records).as_posix() for p in records.rglob("*") if p.is_file())
    assert kept == ["final/lr0.0003/runs/triplet/seed1/result.json",
                    "final/lr0.0003/runs/triplet/seed1/val_log.csv"]
    mine = new / "final" / "lr0.0003" / "runs" / "soft_sigmoid" / "seed1"
    mine.mkdir(parents=True)
    (mine / "result.json").write_text("{}")
    assert bench.import_records(records, new) == 1
    assert bench.import_records(records, new) == 0  # already there: taken once
    protocol = bench.decisive_protocol(None, 3e-4, "test")
    cached = bench.run_one("triplet", 1, protocol, str(tmp_path / "no-town"),
                           str(new / "final" / "lr0.0003"), 1)
    # read back, nothing trained; the record keeps hits and numbers, not the long curves
    assert cached == {"condition": "triplet", "seed": 1, "hits": {"night": [1, 0]},
                      "metrics": {"night": {"top1": {"10": 0.5}}}}
    assert (mine / "result.json").read_text() == "{}"
