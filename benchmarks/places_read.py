"""Reading a large places.csv: time and peak memory of ``read_places``, one source tree against
another, interleaved.

Usage::

    git archive <old commit> src | tar -x -C /tmp/old      # the code to compare with
    python benchmarks/places_read.py --rows 1000000 --src /tmp/old/src --src src \
        [--rounds 3] [--work /tmp/places_read]

The CSV (canonical columns, one drive frame a metre, ``repr(float)`` values as softloc writes
them) is generated once in ``--work``. Each round reads it once with every ``--src``, each read
in a fresh process (``PYTHONPATH=<src>``), in alternating order, so machine load falls on both
alike. Reported per source: wall seconds of ``read_places`` (median and range over rounds) and
the process's peak resident memory (``ru_maxrss``) with the interpreter's and numpy's own
footprint measured by a process that imports them and reads nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
if sys.argv[1] == "read":
    from softloc.data.places import read_places
    began = time.perf_counter()
    table = read_places(sys.argv[2])
    seconds = time.perf_counter() - began
    rows = len(table)
else:
    seconds, rows = 0.0, 0
print(json.dumps({"seconds": seconds, "rows": rows,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """A canonical places.csv of ``rows`` frames on drives of 5,000 frames."""
    import numpy as np

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        out.write("path,x,y,yaw,timestamp,traversal,condition,split\n")
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            x = rng.uniform(0, 4000, n).tolist()  # Python floats: repr() as softloc writes
            y = rng.uniform(0, 4000, n).tolist()
            yaw = rng.uniform(-3.14159, 3.14159, n).tolist()
            i = np.arange(start, start + n)
            stamp = (1.4e9 + i * 0.1).tolist()
            out.write("".join(
                f"drive{k // 5000:05d}/{k:08d}.jpg,{x[j]!r},{y[j]!r},{yaw[j]!r},{stamp[j]!r},"
                f"drive{k // 5000:05d},overcast,train\n"
                for j, k in enumerate(i.tolist())))
    os.replace(tmp, path)
    return path


def measure(src: str, what: str, csv_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    done = subprocess.run([sys.executable, "-c", CHILD, what, str(csv_path)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{src}: the read failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--src", action="append", required=True, help="a source tree (repeat)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/places_read"))
    args = parser.parse_args(argv)
    csv_path = args.work / f"places_{args.rows}.csv"
    if not csv_path.is_file():
        write_csv(csv_path, args.rows)
    print(f"{csv_path}: {csv_path.stat().st_size / 1e6:.0f} MB, {args.rows} rows", flush=True)
    base = measure(args.src[0], "base", csv_path)["peak_mb"]
    runs: dict[str, list[dict]] = {src: [] for src in args.src}
    for round_ in range(args.rounds):
        order = args.src if round_ % 2 == 0 else list(reversed(args.src))
        for src in order:
            result = measure(src, "read", csv_path)
            runs[src].append(result)
            print(f"round {round_ + 1} {src}: {result['seconds']:.1f} s, "
                  f"peak {result['peak_mb']:.0f} MB", flush=True)
    print(f"\ninterpreter + numpy alone: {base:.0f} MB peak\n")
    print("| source | read_places s (median, range) | peak RSS MB (max) |")
    print("|---|---:|---:|")
    for src, results in runs.items():
        seconds = [r["seconds"] for r in results]
        print(f"| {src} | {statistics.median(seconds):.1f} ({min(seconds):.1f}-"
              f"{max(seconds):.1f}) | {max(r['peak_mb'] for r in results):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
