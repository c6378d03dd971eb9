"""The demo protocol on several town seeds: per loss, the mean and spread of top-1 at 10 m per
condition, and on how many towns the model collapsed.

Each town is one ``softloc demo`` run (``OUT/town_<seed>/``), resumable like the demo itself;
the summary is written to ``OUT/demo_towns.json`` and ``OUT/demo_towns.md``.

    PYTHONPATH=src python benchmarks/demo_towns.py --out bench_towns --seeds 0 1 2 3 4 \\
        --workers 2

Cost: one demo is about 6 minutes on 2 CPU cores, so 5 towns take about 30 minutes there
(``--workers`` runs towns side by side on more cores). Not run yet: see demo_towns.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

THRESHOLD = "10"
# the town's query conditions in the order the README and the demo's tables use
CONDITION_ORDER = ("overcast", "sunny", "night", "snow")
SUMMARY_JSON = "demo_towns.json"
SUMMARY_MD = "demo_towns.md"


def town_result(folder: Path) -> dict[str, Any]:
    """One finished demo folder as ``{model: {"top1": {condition: share}, "collapsed": bool}}``.

    Names are the demo's model names (the results' collapse notes stripped); whether a model
    collapsed is read from its run's ``model.json`` (sanity rows have none: never collapsed).
    """
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    town: dict[str, Any] = {}
    for marked, by_condition in results.items():
        name = marked.split(" (collapsed", 1)[0]
        sidecar = folder / "runs" / name / "model.json"
        extra = json.loads(sidecar.read_text())["extra"] if sidecar.is_file() else {}
        town[name] = {
            "top1": {c: float(m["top1"][THRESHOLD]) for c, m in by_condition.items()},
            "collapsed": bool(extra.get("collapsed", False)),
        }
    return town


def summarize(towns: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Per model: mean and sample standard deviation of top-1 @10 m per condition over the
    towns, the number of towns, and the towns it collapsed on.

    Args:
        towns: ``{seed: town_result(...)}``.
    """
    models: dict[str, Any] = {}
    for seed, town in sorted(towns.items()):
        for name, entry in town.items():
            model = models.setdefault(name, {"values": {}, "collapsed_towns": [], "towns": 0})
            model["towns"] += 1
            if entry["collapsed"]:
                model["collapsed_towns"].append(seed)
            for condition, value in entry["top1"].items():
                model["values"].setdefault(condition, []).append(value)
    summary: dict[str, Any] = {}
    for name, model in models.items():
        per_condition = {}
        for condition, values in model["values"].items():
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            per_condition[condition] = {
                "mean": statistics.fmean(values), "std": spread, "n": len(values)
            }
        summary[name] = {
            "top1_at_10m": per_condition,
            "towns": model["towns"],
            "collapsed": len(model["collapsed_towns"]),
            "collapsed_towns": model["collapsed_towns"],
        }
    return summary


def markdown(summary: Mapping[str, Any], seeds: Sequence[int]) -> str:
    """The summary as a Markdown table: mean +- std (percent) per condition, collapsed towns."""
    conditions: list[str] = []
    for model in summary.values():
        conditions += [c for c in model["top1_at_10m"] if c not in conditions]
    known = {c: i for i, c in enumerate(CONDITION_ORDER)}
    conditions.sort(key=lambda c: (known.get(c, len(known)), c))  # others after, by name
    header = ["model", *conditions, "collapsed"]
    lines = [
        f"top-1 at 10 m over town seeds {', '.join(map(str, seeds))} (mean +- sample std, %)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" + "---:|" * (len(header) - 1),
    ]
    for name, model in summary.items():
        cells = [name]
        for condition in conditions:
            stats = model["top1_at_10m"].get(condition)
            cells.append(
                "-" if stats is None else f"{100 * stats['mean']:.1f} +- {100 * stats['std']:.1f}"
            )
        cells.append(f"{model['collapsed']} / {model['towns']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _run_town(out: str, seed: int, quick: bool) -> int:
    from softloc.demo import run_demo

    run_demo(Path(out) / f"town_{seed}", seed=seed, quick=quick, progress=False)
    return seed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=1, help="towns run side by side")
    parser.add_argument("--quick", action="store_true", help="the demo's tiny smoke form")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(_run_town, [str(args.out)] * len(args.seeds), args.seeds,
                          [args.quick] * len(args.seeds)))
    else:
        for seed in args.seeds:
            _run_town(str(args.out), seed, args.quick)
    towns = {seed: town_result(args.out / f"town_{seed}") for seed in args.seeds}
    summary = summarize(towns)
    from softloc.atomic import write_json, write_text

    write_json(args.out / SUMMARY_JSON, {"seeds": args.seeds, "models": summary})
    table = markdown(summary, args.seeds)
    write_text(args.out / SUMMARY_MD, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
