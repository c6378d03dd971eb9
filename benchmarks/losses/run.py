"""The paper's Table 1 on the procedural town: every loss, same network, budget and seeds.

Usage::

    python benchmarks/losses/run.py [--quick] [--seeds 0 1 2] [--workers N] [--out DIR]
                                    [--steps S] [--lr LR] [--mining] [--only NAME ...]
    python benchmarks/losses/run.py --decisive [--workers N] [--out DIR] [--only NAME ...]
                                    [--seeds 0 1 2 3 4] [--lr-grid 1e-4 3e-4 1e-3]
                                    [--records benchmarks/losses/decisive_runs]
                                    [--extra-seeds 5 6 ... --extra-for NAME ...] ...
    python benchmarks/losses/run.py --decisive --steps 3600 --only soft_sigmoid contrastive ...
                                    --lr-from benchmarks/losses/results.json
                                    --report-dir benchmarks/losses/length_3600
    python benchmarks/losses/run.py --out DIR --export-records benchmarks/losses/decisive_runs

``--decisive`` runs the protocol that can decide the paper's claim (issue 11): hard mining on
for every loss (the authors' configuration), each loss's learning rate chosen from
``--lr-grid`` on the validation region (one seed, the full step budget), then 5 seeds at that
rate on the test region, with validation curves, per-query hits and each loss's paired
difference to the soft loss (sigmoid) with a 95 % bootstrap interval over seeds and queries
(``benchmarks/losses/stats.py``). It writes ``benchmarks/losses/results.json`` and
``--results`` (default ``benchmarks/losses/RESULTS_decisive.md``) with two plots.
``--extra-seeds`` adds seeds for the losses of ``--extra-for`` (and the soft loss) only, where
an interval is near the 6-point bar; each difference uses the seeds both losses ran. The pair
may be repeated, one tier each (e.g. seeds 5-14 for every loss, then 15-24 for the losses
nearest the bar), the tiers queued in order.
``--lr-from`` takes each loss's rate from a decisive ``results.json`` instead of running the
grid (e.g. the same losses trained 3 times longer, to see whether the curves flatten and the
order holds); such a run writes into its own ``--report-dir``, never over the table.

Each condition (a loss, or the soft loss with one influence function) trains the small
NetVLAD network at the demo's image size (120 x 90) with the same tuples (anchor + 6 near +
6 far), steps, learning rate and seeds, builds a map of the test region's reference drive and
localizes every query drive (overcast, sunny, night, snow). The table gives top-1 accuracy
within 5, 10 and 15 m, mean and spread (sample standard deviation) over seeds, and the upper
bound (queries whose nearest reference lies that close at all).

Runs are cached per (condition, seed) in ``OUT/runs/<condition>/seed<k>/`` (training run
folder with its ``config.yaml`` + ``result.json``, ``result_val.json`` for ``--split val``), so
an interrupted benchmark resumes where it stopped (a half-trained run resumes from its last
checkpoint). ``--workers N`` trains N runs in parallel processes, each with ``cores // N``
torch threads. A finished run's result and validation log (a few kB, no weights) are its
*record*: ``--records DIR`` seeds a fresh ``--out`` with the records kept in DIR (the
repository keeps them in ``benchmarks/losses/decisive_runs/``) and adds the new ones at the end,
and ``--export-records DIR`` copies what has finished so far, so the decisive table can be
completed over several sessions on machines that keep nothing.

Writes ``OUT/results.json`` and the Markdown report (``--results``, default
``benchmarks/losses/RESULTS.md``, for a ``--quick`` run too) with the
command, the machine, the date and the table. The text of ``benchmarks/losses/discussion.md``
is appended when present (the interpretation, written by a person).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
QUERY_CONDITIONS = ("overcast", "sunny", "night", "snow")
THRESHOLDS = ("5", "10", "15")
HIT_THRESHOLD_M = 10.0

# The decisive protocol (issue 11): learning-rate grid, seeds, the seed of the grid runs.
DECISIVE_LR_GRID = (1e-4, 3e-4, 1e-3)
DECISIVE_SEEDS = (0, 1, 2, 3, 4)
GRID_SEED = 0
REFERENCE = "soft_sigmoid"

# Condition name -> overrides of the shared settings. The soft loss once per influence
# function (each with the parameters of the demo preset: transition around 15 m).
CONDITIONS: dict[str, tuple[str, ...]] = {
    "off_the_shelf": ("loss.name=off_the_shelf",),
    "triplet": ("loss.name=triplet",),
    "lazy_triplet": ("loss.name=lazy_triplet",),
    "quadruplet": ("loss.name=quadruplet",),
    "lazy_quadruplet": ("loss.name=lazy_quadruplet",),
    "huber_distance_triplet": ("loss.name=huber_distance_triplet",),
    "log_ratio": ("loss.name=log_ratio",),
    "contrastive": ("loss.name=contrastive",),
    "generalized_contrastive": ("loss.name=generalized_contrastive",),
    "multi_similarity": ("loss.name=multi_similarity",),
    "multi_similarity_no_miner": (
        "loss.name=multi_similarity",
        "loss.options={mining: false}",
    ),
    "soft_sigmoid": (
        "loss.name=soft_contrastive",
        "loss.influence=sigmoid",
        "loss.influence_options={steepness: 0.8, midpoint: 15.0}",
    ),
    "soft_linear": (
        "loss.name=soft_contrastive",
        "loss.influence=linear",
        "loss.influence_options={radius: 15.0}",
    ),
    "soft_tanh": (
        "loss.name=soft_contrastive",
        "loss.influence=tanh",
        "loss.influence_options={scale: 15.0}",
    ),
    "soft_step": (
        "loss.name=soft_contrastive",
        "loss.influence=step",
        "loss.influence_options={threshold: 15.0}",
    ),
}


@dataclass(frozen=True)
class Protocol:
    """What every run shares."""

    steps: int
    steps_per_epoch: int
    lr: float
    town: dict[str, Any]
    mining: bool
    whitening_dim: int | None = 128
    map_spacing: float = 3.0
    split: str = "test"
    val_every: int = 0

    def overrides(self, dataset: Path, seed: int, threads: int) -> list[str]:
        shared = [
            f"data.root={dataset}",
            "model.name=small_netvlad",
            f"model.whitening_dim={self.whitening_dim if self.whitening_dim else 'null'}",
            "tuples.n_near=6",
            "tuples.n_far=6",
            "tuples.near_radius=10.0",
            "tuples.far_radius=15.0",
            # Far images mutually >= the far radius apart (the authors' mutually exclusive
            # negatives), so the quadruplet losses' extra far image is far from all of them.
            "tuples.far_spacing=15.0",
            "tuples.anchor_spacing=5.0",
            f"train.steps={self.steps}",
            f"train.steps_per_epoch={self.steps_per_epoch}",
            f"train.lr={self.lr}",
            "train.lr_decay=0.5",
            f"train.seed={seed}",
            f"train.checkpoint_every={max(1, self.steps // 4)}",
            f"train.val_every={self.val_every}",
            f"train.num_threads={threads}",
            f"mining.enabled={'true' if self.mining else 'false'}",
        ]
        return shared


def full_protocol(steps: int | None, lr: float, mining: bool) -> Protocol:
    """The table: 1,200 steps, 3 seeds, the default town.

    Measured on 2 free cores with ``--workers 2``: 89 s per trained run (84 s training,
    whitening included), so 42 trained runs + 3 off-the-shelf + the town take about 35 min,
    leaving room for a shared machine within the hour (benchmarks/losses/RESULTS.md).
    """
    steps = steps or 1200
    return Protocol(
        steps=steps,
        steps_per_epoch=max(1, steps // 2),
        lr=lr,
        town={"seed": 0, "width": 120, "height": 90, "route_length": 2400.0},
        mining=mining,
    )


def quick_protocol(steps: int | None, lr: float, mining: bool) -> Protocol:
    """A smoke-sized table: half the route, 300 steps, no whitening (its fit costs more than
    the training here), 2 seeds."""
    steps = steps or 300
    return Protocol(
        steps=steps,
        steps_per_epoch=max(1, steps // 2),
        lr=lr,
        town={"seed": 0, "width": 120, "height": 90, "route_length": 1200.0},
        mining=mining,
        whitening_dim=None,
    )


def prepare_town(out: Path, town: dict[str, Any]):
    """The benchmark's town in ``out/town`` (generated once, reused when settings match)."""
    from softloc.data.places import PLACES_FILE
    from softloc.data.synthetic import TownConfig, generate_town

    folder = out / "town"
    config = TownConfig(**town)
    stamp = folder / "town.json"
    if (folder / PLACES_FILE).is_file() and stamp.is_file():
        if json.loads(stamp.read_text()) == config.to_dict():
            return folder
    generate_town(folder, config, progress=True, workers=max(1, os.cpu_count() or 1))
    return folder


def run_one(
    condition: str, seed: int, protocol: Protocol, dataset: str, out: str, threads: int
) -> dict[str, Any]:
    """Train, map and evaluate one (condition, seed); cached in its folder."""
    import torch

    from softloc.atomic import write_json
    from softloc.config import load_config
    from softloc.data.places import read_places
    from softloc.localize import build_map
    from softloc.train import Trainer, TrainingError

    torch.set_num_threads(threads)
    folder = Path(out) / "runs" / condition / f"seed{seed}"
    suffix = "" if protocol.split == "test" else f"_{protocol.split}"
    result_file = folder / f"result{suffix}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    overrides = protocol.overrides(Path(dataset), seed, threads) + list(CONDITIONS[condition])
    config = load_config("demo", overrides)
    places = read_places(dataset)
    began = time.perf_counter()
    try:
        model_path = Trainer(config, folder, places=places, progress=False).run(resume=True)
    except TrainingError as error:  # e.g. a diverged loss: reported in the table, not fatal
        result = {"condition": condition, "seed": seed, "error": str(error)}
        write_json(result_file, result)
        return result
    train_seconds = time.perf_counter() - began
    map_dir = build_map(
        model_path, places, folder / f"map_{protocol.split}", split=protocol.split,
        spacing=protocol.map_spacing, progress=False,
    )
    metrics, hits = evaluate_with_hits(map_dir, places, protocol.split)
    result = {
        "condition": condition,
        "seed": seed,
        "lr": protocol.lr,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - began,
        "metrics": metrics,
        "hits": hits,
    }
    write_json(result_file, result)
    return result


def evaluate_with_hits(
    map_dir: Path, places, split: str, threshold: float = HIT_THRESHOLD_M
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The evaluation's metrics per condition (as ``evaluate_map``) and, per condition, each
    query's top-1 hit (1: the first reference lies within ``threshold`` metres), in the fixed
    query order, for the paired bootstrap."""
    import numpy as np

    from softloc.evaluation.metrics import RECALL_TOP_N
    from softloc.evaluation.protocol import metrics_by_condition, order_ties, query_places
    from softloc.extract import extract_descriptors, image_store
    from softloc.localize import load_map_model
    from softloc.mapping import Map

    the_map = Map.load(map_dir)
    model = load_map_model(map_dir)
    queries = query_places(places, the_map, split)
    store = image_store(model, [queries.image_path(i) for i in range(len(queries))])
    descriptors = extract_descriptors(model, store, progress=False, desc="queries")
    scores, retrieved = order_ties(*the_map.search(descriptors, max(RECALL_TOP_N)))
    metrics = metrics_by_condition(queries, the_map.places.xy, retrieved, scores=scores)
    first = retrieved[:, 0]
    error = np.linalg.norm(the_map.places.xy[np.maximum(first, 0)] - queries.xy, axis=1)
    hit = (first >= 0) & (error <= threshold)
    hits = {
        condition: hit[queries.condition == condition].astype(int).tolist()
        for condition in metrics
    }
    return metrics, hits


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``table[condition][query condition][threshold]`` = list of top-1 % over seeds."""
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    for result in sorted(results, key=lambda r: r["seed"]):
        if "error" in result:
            continue
        row = table.setdefault(result["condition"], {})
        for query, metrics in result["metrics"].items():
            for t in THRESHOLDS:
                row.setdefault(query, {}).setdefault(t, []).append(100 * metrics["top1"][t])
    return table


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def markdown_table(results: list[dict[str, Any]], conditions: list[str]) -> str:
    """Rows: conditions + upper bound; columns: query condition x threshold."""
    table = summarise(results)
    queries = [q for q in QUERY_CONDITIONS if any(q in table.get(c, {}) for c in table)]
    header = ["loss"] + [f"{q} @{t} m" for q in queries for t in THRESHOLDS]
    header.append("mean @10 m")
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for condition in conditions:
        if condition not in table:
            continue
        row = table[condition]
        cells = [_cell(row[q][t]) for q in queries for t in THRESHOLDS]
        n_seeds = len(row[queries[0]]["10"])
        per_seed = [
            statistics.mean(row[q]["10"][s] for q in queries) for s in range(n_seeds)
        ]
        cells.append(_cell(per_seed))
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    failed = [r for r in results if "error" in r and r["condition"] in conditions]
    first = next(r for r in results if "error" not in r)["metrics"]
    bound = [f"{100 * first[q]['upper_bound'][t]:.1f}" for q in queries for t in THRESHOLDS]
    bound_mean = statistics.mean(100 * first[q]["upper_bound"]["10"] for q in queries)
    lines.append("| upper bound | " + " | ".join(bound) + f" | {bound_mean:.1f} |")
    for result in failed:
        lines.append(f"\n{result['condition']} seed {result['seed']} failed: {result['error']}")
    return "\n".join(lines)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def write_report(
    path: Path,
    results: list[dict[str, Any]],
    conditions: list[str],
    protocol: Protocol,
    seeds: list[int],
    workers: int,
    threads: int,
    wall_seconds: float,
    quick: bool,
) -> None:
    from softloc.atomic import write_text

    ok = [r for r in results if "error" not in r]
    trained = [r["train_seconds"] for r in ok if r["condition"] != "off_the_shelf"]
    per_run = [r["total_seconds"] for r in ok if r["condition"] != "off_the_shelf"]
    queries = ok[0]["metrics"]
    counts = ", ".join(f"{q} {queries[q]['num_queries']}" for q in queries if q in queries)
    command = "python benchmarks/losses/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    mode = "quick" if quick else "full"
    text = [
        f"# Loss benchmark on the procedural town ({mode})",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine()}; {workers} worker process(es) of {threads} torch thread(s) "
        "each. On a machine shared with other jobs the times are upper bounds.  ",
        f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Wall time of this invocation: {wall_seconds / 60:.1f} min (runs already cached in "
        "the output folder are not retrained); per trained run: "
        f"{statistics.mean(trained):.0f} s training, {statistics.mean(per_run):.0f} s with map "
        "and evaluation (mean). All runs together cost "
        f"{sum(r['total_seconds'] for r in ok) * threads / 60:.0f} core-minutes, i.e. about "
        f"{sum(r['total_seconds'] for r in ok) * threads / 120:.0f} min of wall time on 2 "
        "cores.",
        "",
        "Protocol: town "
        + ", ".join(f"{k}={v}" for k, v in protocol.town.items())
        + "; small_netvlad at 120 x 90, "
        + (
            f"PCA-whitened to {protocol.whitening_dim}-D after training"
            if protocol.whitening_dim
            else "no whitening (raw 2,048-D NetVLAD)"
        )
        + "; tuples of "
        "1 anchor + 6 near (< 10 m, <= 30 deg) + 6 far (>= 15 m, mutually >= 15 m apart); "
        f"anchors every 5 m with a fresh offset per epoch; {protocol.steps} steps of Adam at "
        f"lr {protocol.lr:g} (one rate for all losses, chosen on the validation region: "
        "[lr_check.md](lr_check.md)), "
        f"halved every {protocol.steps_per_epoch} steps; hard mining "
        f"{'on' if protocol.mining else 'off'}; seeds {', '.join(map(str, seeds))} (the town "
        "is the same for every seed; the seed sets the initialisation and the tuples). Map: "
        f"the {protocol.split} region's reference drive, a reference every "
        f"{protocol.map_spacing:g} m; "
        f"queries: {counts}.",
        "",
        f"Top-1 accuracy (%) within 5 / 10 / 15 m, mean ± standard deviation over "
        f"{len(seeds)} seeds; last column: the mean over the four conditions at 10 m.",
        "",
        markdown_table(results, conditions),
        "",
    ]
    discussion = HERE / ("discussion_quick.md" if quick else "discussion.md")
    if discussion.is_file():
        text += [discussion.read_text().strip(), ""]
    write_text(path, "\n".join(text))


def load_stats():
    """``benchmarks/losses/stats.py`` (a sibling file, not a package module)."""
    import importlib.util

    name = "bench_losses_stats"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "stats.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def decisive_protocol(steps: int | None, lr: float, split: str, quick: bool = False) -> Protocol:
    """The full protocol with hard mining on (the authors' configuration: 1,000 cached
    images refreshed every 250 steps, half of a tuple's near and far images hard) at ``lr``.
    Test runs validate every 150 steps (their curves show whether training has flattened);
    the grid runs on the validation region do not. ``quick``: the quick town and budget
    (a smoke test of the pipeline, not a result)."""
    protocol = (quick_protocol if quick else full_protocol)(steps, lr, mining=True)
    return dataclasses.replace(
        protocol, split=split, val_every=max(1, protocol.steps // 8) if split == "test" else 0
    )


def run_jobs(jobs, dataset: Path, workers: int, threads: int, runner=None) -> list[dict]:
    """Run ``(condition, seed, protocol, out)`` jobs (cached by ``runner``), in parallel
    processes when ``workers > 1``; results in job order."""
    runner = runner or run_one
    if workers == 1:
        results = []
        for i, (condition, seed, protocol, out) in enumerate(jobs):
            results.append(runner(condition, seed, protocol, str(dataset), str(out), threads))
            print(f"[{i + 1}/{len(jobs)}] {condition} seed {seed} lr {protocol.lr:g} "
                  f"({protocol.split})", flush=True)
        return results
    with ProcessPoolExecutor(workers) as pool:
        futures = [
            pool.submit(runner, c, s, p, str(dataset), str(o), threads) for c, s, p, o in jobs
        ]
        for i, future in enumerate(as_completed(futures)):
            future.result()
            print(f"[{i + 1}/{len(jobs)}] done", flush=True)
        return [future.result() for future in futures]


def grid_scores(results: list[dict[str, Any]]) -> dict[str, dict[float, dict[str, float]]]:
    """``{condition: {lr: {query condition: top-1 % at 10 m}}}`` of the grid runs (failed
    runs, e.g. diverged at a high rate, score 0 so they are never chosen)."""
    scores: dict[str, dict[float, dict[str, float]]] = {}
    for result in results:
        row = scores.setdefault(result["condition"], {})
        if "error" in result:
            row[result["lr"]] = {"failed": 0.0}
            continue
        row[result["lr"]] = {
            q: 100.0 * m["top1"]["10"] for q, m in result["metrics"].items()
        }
    return scores


def run_decisive(
    conditions: list[str],
    seeds: list[int],
    lr_grid: list[float],
    steps: int | None,
    out: Path,
    dataset: Path,
    workers: int,
    threads: int,
    runner=None,
    replicates: int = 10000,
    quick: bool = False,
    extra: Sequence[tuple[Sequence[int], Sequence[str]]] = (),
    chosen_lr: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The decisive protocol: grid on validation, chosen rate, seeds on test, statistics.

    ``chosen_lr`` (``{loss: rate}``, e.g. another budget's choice, see ``--lr-from``) skips
    the grid: every trained loss runs at its given rate, and a trained loss without one is
    refused before anything runs.

    ``extra`` holds tiers ``(seeds, losses)``: the tier's seeds are run, at the chosen rate,
    for its losses only (and always for the soft loss, their partner in every paired
    difference): more seeds where an interval is near the 6-point bar, without paying for them
    on every loss. Tiers are queued in order and each seed by seed, so an interrupted
    invocation leaves the losses of a tier with balanced seed counts; a (loss, seed) already
    queued is not queued again.

    Runs are cached under ``out/grid/lr<lr>/`` and ``out/final/lr<lr>/``, so an interrupted
    run resumes. Returns ``{"chosen_lr", "grid", "results", "document"}``, the document
    being ``results.json``'s losses (see ``stats.results_document``).
    """
    stats = load_stats()
    if REFERENCE not in conditions:
        conditions = [*conditions, REFERENCE]  # every difference is to the soft loss
    trained = [c for c in conditions if c != "off_the_shelf"]
    if chosen_lr is not None:
        missing = [c for c in trained if c not in chosen_lr]
        if missing:
            raise ValueError(f"no learning rate given for {', '.join(missing)}")
    grid_jobs = []
    for condition in trained if chosen_lr is None else ():
        for lr in lr_grid:
            protocol = decisive_protocol(steps, lr, "val", quick)
            grid_jobs.append((condition, GRID_SEED, protocol, out / "grid" / f"lr{lr:g}"))
    grid_results = run_jobs(grid_jobs, dataset, workers, threads, runner)
    for result, (_, _, protocol, _) in zip(grid_results, grid_jobs, strict=True):
        result.setdefault("lr", protocol.lr)
    grid = grid_scores(grid_results)
    chosen = ({c: stats.choose_lr(grid[c]) for c in trained} if chosen_lr is None
              else {c: chosen_lr[c] for c in trained})
    final_jobs = []
    folders = {}
    placed = {}  # condition -> (its test protocol, its cache folder)
    for condition in conditions:
        lr = chosen.get(condition, lr_grid[0])  # off_the_shelf: the rate is never used
        placed[condition] = (decisive_protocol(steps, lr, "test", quick),
                             out / "final" / f"lr{lr:g}")
        folders[condition] = placed[condition][1] / "runs" / condition
        final_jobs += [(condition, s, *placed[condition]) for s in seeds]
    queued = {(condition, seed) for condition in conditions for seed in seeds}
    for tier_seeds, tier_losses in extra:
        more = [c for c in conditions if c in set(tier_losses) | {REFERENCE}]
        for seed in tier_seeds:
            for condition in more:
                if (condition, seed) not in queued:
                    queued.add((condition, seed))
                    final_jobs.append((condition, seed, *placed[condition]))
    final_results = run_jobs(final_jobs, dataset, workers, threads, runner)
    hits: dict[str, dict[int, dict[str, list[int]]]] = {}
    for result in final_results:
        if "error" not in result:
            hits.setdefault(result["condition"], {})[result["seed"]] = result["hits"]
    document = stats.results_document(lr_grid if chosen_lr is None else [], chosen, hits,
                                      reference=REFERENCE,
                                      replicates=replicates)
    return {"chosen_lr": chosen, "grid": grid, "results": final_results, "document": document,
            "folders": folders, "steps": placed[REFERENCE][0].steps}


def verdict(entry: dict[str, Any]) -> str:
    """What a loss's interval decides against the soft loss (sigmoid)."""
    low, high = entry["diff_to_soft_ci95"]
    if not entry["ci_width_ok"]:
        return "not decided (interval wider than 6 points: more seeds needed)"
    if low > 0:
        return "better than the soft loss"
    if high < 0:
        return "worse than the soft loss"
    return "not distinguishable from the soft loss"


def decisive_table(document: dict[str, Any]) -> str:
    """Markdown: per loss the rate, per-seed and mean top-1 at 10 m, the paired difference
    to the soft loss with its 95 % interval, the verdict, and per-condition means."""
    conditions = list(next(iter(document.values()))["per_condition"])
    header = ["loss", "lr", "per seed", "mean @10 m", "diff to soft [95 % CI]", "verdict",
              *[f"{c} @10 m" for c in conditions]]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, entry in document.items():
        low, high = entry["diff_to_soft_ci95"]
        cells = [
            name,
            "-" if entry["lr"] is None else f"{entry['lr']:g}",
            " / ".join(f"{v:.1f}" for v in entry["per_seed"]),
            f"{entry['mean_top1_10m']:.1f}",
            "reference" if name == REFERENCE else
            f"{entry['diff_to_soft']:+.1f} [{low:+.1f}, {high:+.1f}]",
            "-" if name == REFERENCE else verdict(entry),
            *[f"{entry['per_condition'][c]['mean']:.1f}" for c in conditions],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_decisive(document: dict[str, Any], out: Path, folders: dict[str, Path]) -> list[Path]:
    """``decisive_diff_ci.png`` (each loss's difference to the soft loss with its interval) and
    ``decisive_val_curves.png`` (validation top-1 against step, mean over seeds, per loss)."""
    import csv

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from softloc.atomic import write_with

    names = [n for n in document if n != REFERENCE]
    figure = Figure(figsize=(7.0, 0.35 * len(names) + 1.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for row, name in enumerate(names):
        low, high = document[name]["diff_to_soft_ci95"]
        ax.plot([low, high], [row, row], color="C0")
        ax.plot([document[name]["diff_to_soft"]], [row], "o", color="C0")
    ax.axvline(0.0, color="k", linewidth=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("top-1 at 10 m minus the soft loss's (points), 95 % bootstrap interval")
    paths = [write_with(out / "decisive_diff_ci.png",
                        lambda tmp: figure.savefig(tmp, format="png"))]

    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for slot, (name, entry) in enumerate(document.items()):
        curves = []
        for seed in entry["seeds"]:
            path = folders.get(name, Path("-")) / f"seed{seed}" / "val_log.csv"
            if path.is_file():
                with open(path) as handle:
                    rows = csv.DictReader(handle)
                    curves.append([(int(r["step"]), float(r["top1"])) for r in rows])
        if not curves:
            continue
        length = min(len(c) for c in curves)
        steps = [c[0] for c in curves[0][:length]]
        mean = [100.0 * statistics.mean(c[i][1] for c in curves) for i in range(length)]
        ax.plot(steps, mean, color=f"C{slot % 10}", label=name,
                linestyle="-" if slot < 10 else "--")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation top-1 (%), mean over seeds")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="x-small", ncol=2)
    paths.append(write_with(out / "decisive_val_curves.png",
                            lambda tmp: figure.savefig(tmp, format="png")))
    return paths


def write_decisive_report(
    path: Path, outcome: dict[str, Any], seeds: list[int], lr_grid: list[float],
    workers: int, threads: int, wall_seconds: float, plots: list[Path],
    lr_from: Path | None = None, discussion: Path | None = None,
) -> None:
    """The decisive table with commands, machine, date, plots and what it decides.

    ``lr_from``: the rates were taken from that results.json, not chosen by a grid here.
    ``discussion``: a person's interpretation, appended when the file exists."""
    from softloc.atomic import write_text

    document = outcome["document"]
    mining_off = Path(os.path.relpath(HERE / "RESULTS.md", path.resolve().parent)).as_posix()
    command = "python benchmarks/losses/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    undecided = [n for n, e in document.items() if n != REFERENCE and not e["ci_width_ok"]]
    text = [
        "# Loss benchmark on the procedural town: the decisive protocol",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine()}; {workers} worker process(es) of {threads} torch thread(s).  ",
        f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; wall time of "
        f"this invocation {wall_seconds / 60:.1f} min (cached runs are not retrained).",
        "",
        f"Protocol: as the mining-off table ([RESULTS.md]({mining_off})) but with hard mining on "
        f"for every loss and {outcome['steps']:,} training steps; "
        + (f"each loss's learning rate taken from `{lr_from}` (chosen there on the "
           "validation region at that file's budget; no grid here)" if lr_from is not None
           else "each loss's learning rate chosen from "
           f"{', '.join(f'{v:g}' for v in lr_grid)} by its mean top-1 at 10 m on the "
           f"validation region (seed {GRID_SEED})")
        + f"; then seeds {', '.join(map(str, seeds))} at that rate on "
        "the test region" + _extra_seed_clause(document, seeds) + ". Differences are paired "
        "(same seed: same tuples; same queries; a loss is paired with the soft loss on the "
        "seeds both ran) and their 95 % intervals come from a bootstrap over seeds and queries "
        "(benchmarks/losses/stats.py).",
        "",
        decisive_table(document),
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
        "**What is decided.** A loss is better or worse than the soft loss (sigmoid) only "
        "where its whole interval lies above or below 0 and is at most 6 points wide. "
        + (f"Not decided for lack of seeds: {', '.join(undecided)}." if undecided else
           "Every interval is at most 6 points wide."),
        "",
    ]
    if discussion is not None and discussion.is_file():
        text += [discussion.read_text(encoding="utf-8").rstrip(), ""]
    write_text(path, "\n".join(text))


def _extra_seed_clause(document: dict[str, Any], seeds: list[int]) -> str:
    """``", and seeds 5-14 as well for a, b"`` when some losses ran more than ``seeds``; with
    tiers, one group per set of extra seeds (``"...; seeds 5-24 for c"``)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, entry in document.items():
        extra = tuple(sorted(set(entry["seeds"]) - set(seeds)))
        if extra:
            groups.setdefault(extra, []).append(name)
    if not groups:
        return ""
    parts = []
    for extra, names in sorted(groups.items(), key=lambda g: (len(g[0]), g[0])):
        listed = (str(extra[0]) if len(extra) == 1 else f"{extra[0]}-{extra[-1]}"
                  if list(extra) == list(range(extra[0], extra[-1] + 1))
                  else ", ".join(map(str, extra)))
        parts.append(("seed " if len(extra) == 1 else "seeds ") + listed
                     + (" as well" if not parts else "")
                     + f" for {', '.join(names)}")
    return ", and " + "; ".join(parts)


#: Files of a run folder that make its cached result (a few kB): kept in the repository so
#: that the decisive table can be completed over several sessions on fresh machines.
RECORD_FILES = ("result.json", "result_val.json", "val_log.csv", "config.yaml")


def _record_paths(root: Path) -> list[Path]:
    """The record files under ``root``, relative to it (grid and final runs)."""
    return sorted(
        path.relative_to(root)
        for phase in ("grid", "final")
        for path in (root / phase).glob("lr*/runs/*/seed*/*")
        if path.name in RECORD_FILES and path.is_file()
    )


def export_records(out: Path, records: Path) -> int:
    """Copy every finished run's record files from ``out`` into ``records`` (only runs with a
    result; a run still training is left out; results without their bulky curves,
    :func:`slim_result`); returns how many runs were copied."""
    import shutil

    from softloc.atomic import write_text

    copied = 0
    for relative in _record_paths(out):
        if not relative.name.startswith("result"):
            continue
        folder = relative.parent
        for name in RECORD_FILES:
            source = out / folder / name
            if not source.is_file():
                continue
            (records / folder).mkdir(parents=True, exist_ok=True)
            if name.startswith("result"):
                compact = json.dumps(slim_result(json.loads(source.read_text())),
                                     separators=(",", ":"))
                write_text(records / folder / name, compact + "\n")
            else:
                shutil.copyfile(source, records / folder / name)
        copied += 1
    return copied


#: Metrics of a result left out of its record: curves of hundreds of points a condition,
#: which no table or plot of the benchmark reads (they stay in the run folder).
BULKY_METRICS = ("curves", "precision_coverage_10m")


def slim_result(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without :data:`BULKY_METRICS` (per-query hits and every number kept)."""
    metrics = {
        query: {k: v for k, v in values.items() if k not in BULKY_METRICS}
        for query, values in result.get("metrics", {}).items()
    }
    return {**result, "metrics": metrics} if "metrics" in result else dict(result)


def import_records(records: Path, out: Path) -> int:
    """Seed ``out``'s cache with the records of finished runs: a run folder of ``out`` that has
    no result of its own gets the record's files (none of ``out``'s files is replaced);
    returns how many runs were taken."""
    import shutil

    taken = 0
    for relative in _record_paths(records):
        if not relative.name.startswith("result") or (out / relative).is_file():
            continue
        for name in RECORD_FILES:
            source, target = records / relative.parent / name, out / relative.parent / name
            if source.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        taken += 1
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short town, 300 steps (~10 min)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=None, help="override the step budget")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--mining", action="store_true", help="hard-example mining for all")
    parser.add_argument("--only", nargs="+", choices=sorted(CONDITIONS), default=None)
    parser.add_argument("--results", type=Path, default=None, help="report path")
    parser.add_argument("--decisive", action="store_true",
                        help="lr grid on validation, mining on, 5 seeds, paired intervals")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=list(DECISIVE_LR_GRID))
    parser.add_argument(
        "--extra-seeds", type=int, nargs="+", action="append", default=[],
        help="--decisive: more seeds, for the losses of the --extra-for that follows (and the "
             "soft loss) only; repeat the pair for another tier",
    )
    parser.add_argument("--extra-for", nargs="+", choices=sorted(CONDITIONS), action="append",
                        default=[])
    parser.add_argument(
        "--records", type=Path, default=None,
        help="--decisive: seed the cache from this folder of run records first, and copy "
             "every finished run's records into it at the end",
    )
    parser.add_argument(
        "--export-records", type=Path, default=None,
        help="copy the records of the runs finished so far in --out into this folder, run "
             "nothing (e.g. to commit a partial table before a session ends)",
    )
    parser.add_argument(
        "--lr-from", type=Path, default=None,
        help="--decisive: take each loss's learning rate from this decisive results.json "
             "(chosen there on validation) instead of running the grid, e.g. to train the "
             "same losses longer; needs --report-dir",
    )
    parser.add_argument(
        "--report-dir", type=Path, default=None,
        help="--decisive: write results.json, the report and its plots into this folder "
             "(default: benchmarks/losses/, the decisive table itself)",
    )
    parser.add_argument(
        "--split", default="test", choices=["test", "val"],
        help="region evaluated (val: for choosing settings such as the learning rate)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.export_records:
        out = args.out or Path("runs") / "bench_losses_decisive"
        print(f"copied the records of {export_records(out, args.export_records)} runs "
              f"to {args.export_records}")
        return 0
    if args.decisive:
        return main_decisive(args)
    quick = args.quick
    seeds = args.seeds or ([0, 1] if quick else [0, 1, 2])
    protocol = (quick_protocol if quick else full_protocol)(args.steps, args.lr, args.mining)
    protocol = dataclasses.replace(protocol, split=args.split)
    out = args.out or Path("runs") / ("bench_losses_quick" if quick else "bench_losses")
    results_path = args.results or HERE / "RESULTS.md"
    conditions = args.only or list(CONDITIONS)
    workers = max(1, args.workers)
    threads = max(1, (os.cpu_count() or 1) // workers)

    began = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    dataset = prepare_town(out, protocol.town)
    jobs = [(c, s) for c in conditions for s in seeds]
    results: list[dict[str, Any]] = []
    if workers == 1:
        for i, (condition, seed) in enumerate(jobs):
            results.append(run_one(condition, seed, protocol, str(dataset), str(out), threads))
            print(f"[{i + 1}/{len(jobs)}] {condition} seed {seed}", flush=True)
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = {
                pool.submit(run_one, c, s, protocol, str(dataset), str(out), threads): (c, s)
                for c, s in jobs
            }
            for i, future in enumerate(as_completed(futures)):
                results.append(future.result())
                condition, seed = futures[future]
                print(f"[{i + 1}/{len(jobs)}] {condition} seed {seed}", flush=True)
    wall = time.perf_counter() - began
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(
        results_path, results, conditions, protocol, seeds, workers, threads, wall, quick
    )
    print(markdown_table(results, conditions))
    print(f"wrote {results_path}")
    return 0


def report_folder(args: argparse.Namespace) -> Path:
    """Where ``--decisive`` writes results.json, the report and the plots: ``--report-dir``;
    else ``--out`` for a ``--quick`` smoke test, else this folder (the decisive table).

    A run that is not the decisive table (``--lr-from``: rates taken, no grid) must name its
    own ``--report-dir``, so it never overwrites the table's files."""
    if args.report_dir is not None:
        if args.lr_from is not None and args.report_dir.resolve() == HERE.resolve():
            raise SystemExit(f"--report-dir {args.report_dir} holds the decisive table; a run "
                             "with --lr-from writes into a folder of its own")
        return args.report_dir
    if args.lr_from is not None:
        raise SystemExit("--lr-from needs --report-dir (a folder of its own, so the decisive "
                         "table's results.json and report are not overwritten)")
    return (args.out or Path("runs") / "bench_losses_decisive") if args.quick else HERE


def rates_from(path: Path, conditions: Sequence[str]) -> dict[str, float]:
    """``{loss: learning rate}`` of a decisive ``results.json``, for the trained losses of
    ``conditions``; a clear error when the file is not one or lacks a loss."""
    try:
        losses = json.loads(path.read_text(encoding="utf-8"))["losses"]
        rates = {name: float(entry["lr"]) for name, entry in losses.items()
                 if entry.get("lr") is not None}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--lr-from {path}: not a decisive results.json ({error}); give "
                         "benchmarks/losses/results.json") from error
    # checked here, before the town is prepared; run_decisive checks the same again
    missing = [c for c in dict.fromkeys([*conditions, REFERENCE])
               if c != "off_the_shelf" and c not in rates]
    if missing:
        raise SystemExit(f"--lr-from {path} has no learning rate for {', '.join(missing)}")
    return rates


def main_decisive(args: argparse.Namespace) -> int:
    """``--decisive``: see :func:`run_decisive`; writes results.json, the report, plots."""
    from softloc.atomic import write_json

    seeds = args.seeds or list(DECISIVE_SEEDS)
    conditions = args.only or list(CONDITIONS)
    if len(args.extra_seeds) != len(args.extra_for):
        raise SystemExit(f"{len(args.extra_seeds)} --extra-seeds but {len(args.extra_for)} "
                         "--extra-for: give them in pairs, one pair a tier")
    missing = sorted({n for tier in args.extra_for for n in tier} - set(conditions))
    if missing:
        raise SystemExit(f"--extra-for names {', '.join(missing)}, which --only leaves out; "
                         "add them to --only")
    where = report_folder(args)
    chosen_lr = rates_from(args.lr_from, conditions) if args.lr_from else None
    out = args.out or Path("runs") / "bench_losses_decisive"
    workers = max(1, args.workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    began = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    town = (quick_protocol if args.quick else full_protocol)(args.steps, 3e-4, True).town
    dataset = prepare_town(out, town)
    if args.records:
        print(f"took the records of {import_records(args.records, out)} finished runs "
              f"from {args.records}")
    outcome = run_decisive(conditions, seeds, args.lr_grid, args.steps,
                           out, dataset, workers, threads, quick=args.quick,
                           extra=list(zip(args.extra_seeds, args.extra_for, strict=True)),
                           chosen_lr=chosen_lr)
    if args.records:
        export_records(out, args.records)
    where.mkdir(parents=True, exist_ok=True)
    write_json(where / "results.json", {
        "protocol": "decisive (issue 11)", "steps": outcome["steps"],
        "lr_grid": args.lr_grid if chosen_lr is None else [],
        "lr_from": None if args.lr_from is None else str(args.lr_from), "seeds": seeds,
        "grid_top1_10m_val": {c: {f"{lr:g}": v for lr, v in g.items()}
                              for c, g in outcome["grid"].items()},
        "losses": outcome["document"],
    })
    plots = plot_decisive(outcome["document"], where, outcome["folders"])
    report = args.results or where / "RESULTS_decisive.md"
    write_decisive_report(report, outcome, seeds, args.lr_grid, workers, threads,
                          time.perf_counter() - began, plots, lr_from=args.lr_from,
                          discussion=where / ("decisive_discussion.md"
                                              if where.resolve() == HERE.resolve()
                                              else "discussion.md"))
    print(decisive_table(outcome["document"]))
    print(f"wrote {where / 'results.json'} and {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
