"""The paper's Table 1 on the procedural town: every loss, same network, budget and seeds.

Usage::

    python benchmarks/losses/run.py [--quick] [--seeds 0 1 2] [--workers N] [--out DIR]
                                    [--steps S] [--lr LR] [--mining] [--only NAME ...]

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
torch threads.

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
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
QUERY_CONDITIONS = ("overcast", "sunny", "night", "snow")
THRESHOLDS = ("5", "10", "15")

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
            "train.val_every=0",
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
    from softloc.evaluation.protocol import evaluate_map
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
    metrics = evaluate_map(map_dir, places, split=protocol.split, progress=False)
    result = {
        "condition": condition,
        "seed": seed,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - began,
        "metrics": metrics,
    }
    write_json(result_file, result)
    return result


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
    parser.add_argument(
        "--split", default="test", choices=["test", "val"],
        help="region evaluated (val: for choosing settings such as the learning rate)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

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


if __name__ == "__main__":
    sys.exit(main())
