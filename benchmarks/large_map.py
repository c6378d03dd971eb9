"""Large maps: build, open, memory, latency and recall of each index kind at 1 M / 10 M refs.

Synthetic references with a real-looking geometry: ``--drives`` drives along random polylines
(1 m apart, turning gently) in a square town; a descriptor is a smooth function of position
(256 random Fourier features of (x, y) at a 15 m length scale) plus noise, L2-normalised, so
near places have near descriptors and drives that cross share places. Queries are places on
the drives moved by up to 3 m, with fresh noise (the same place seen again).

Every map is built through the real ``softloc map import`` (streamed, ``--dtype float16``) in
its own process; each is then opened in a fresh process that runs 1,000 single-query searches
(k = 10, one FAISS thread) and reports the open time, VmRSS (and its anonymous / file-backed
parts) after open and after the queries, and the latency percentiles. Recall is against the
flat map: recall@1 = the flat top-1 ranked first, recall@10 = the flat top-1 in the top ten.

    nice -n 19 python benchmarks/large_map.py --num-refs 1000000 --work /tmp/large_map

Results recorded in benchmarks/large_map.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 256
LENGTH_SCALE_M = 15.0
NOISE = 0.35
INDEX_OPTIONS: dict[str, list[str]] = {
    "flat": [],
    "ivf": ["--nlist", "1024", "--nprobe", "16"],
    "ivfpq": ["--nlist", "1024", "--nprobe", "16", "--m", "32", "--nbits", "8"],
    "hnsw": ["--hnsw-m", "32", "--ef-search", "64"],
}


def memory() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile and VmHWM of this process, in MB (from /proc/self/status)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


class Town:
    """Drives along random polylines and the smooth descriptor field over the town."""

    def __init__(self, seed: int, dim: int = DIM) -> None:
        rng = np.random.default_rng([seed, 1])
        self.frequencies = rng.normal(scale=1.0 / LENGTH_SCALE_M, size=(2, dim))
        self.phases = rng.uniform(0, 2 * np.pi, size=dim)
        self.dim = dim

    def descriptors(self, xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        field = np.cos(xy @ self.frequencies + self.phases) * np.sqrt(2.0 / self.dim)
        noisy = field + NOISE * rng.normal(size=field.shape) / np.sqrt(self.dim)
        return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def drive_positions(n: int, drives: int, side_m: float, seed: int) -> tuple[np.ndarray, ...]:
    """(xy, yaw, drive index) of n frames, 1 m apart, on ``drives`` gently turning drives."""
    rng = np.random.default_rng([seed, 2])
    per_drive = -(-n // drives)
    starts = rng.uniform(0, side_m, size=(drives, 2))
    turn = rng.normal(scale=0.02, size=(drives, per_drive)).cumsum(axis=1)
    yaw = rng.uniform(-np.pi, np.pi, size=(drives, 1)) + turn
    step = np.stack([np.cos(yaw), np.sin(yaw)], axis=2)  # (drives, per_drive, 2)
    xy = (starts[:, None, :] + np.cumsum(step, axis=1)).reshape(-1, 2)[:n]
    yaw = np.angle(np.exp(1j * yaw.reshape(-1)[:n]))  # wrapped to (-pi, pi]
    xy = np.abs(np.mod(xy, 2 * side_m) - side_m)  # reflect at the town's edges
    return xy, yaw, np.repeat(np.arange(drives), per_drive)[:n]


def town_places(work: Path, n: int, drives: int, seed: int):  # noqa: ANN201 - PlaceTable
    """The references' PlaceTable (the same every call for the same arguments)."""
    from softloc.data.places import PlaceTable

    xy, yaw, drive = drive_positions(n, drives, float(np.sqrt(n) * 4.0), seed)
    return PlaceTable(
        path=np.char.add(np.char.add(np.char.add("drive", drive.astype(str)), "/"),
                         np.char.add(np.arange(n).astype(str), ".jpg")),
        x=xy[:, 0], y=xy[:, 1], yaw=yaw, timestamp=np.arange(n) * 0.1,
        traversal=np.char.add("drive", drive.astype(str)),
        condition=np.where(drive % 2 == 0, "overcast", "night"),
        split=np.full(n, "test"), root=work)


def generate(work: Path, n: int, drives: int, queries: int, seed: int,
             write_csv: bool = True) -> None:
    """descriptors.npy (float16, written block by block), places.csv, queries.npy."""
    from softloc.map_columns import write_places_csv

    town = Town(seed)
    side = float(np.sqrt(n) * 4.0)  # ~16 m^2 of town per reference frame
    xy, yaw, drive = drive_positions(n, drives, side, seed)
    out = np.lib.format.open_memmap(work / "descriptors.npy", mode="w+", dtype=np.float16,
                                    shape=(n, DIM))
    rng = np.random.default_rng([seed, 3])
    for start in range(0, n, 100_000):
        out[start:start + 100_000] = town.descriptors(xy[start:start + 100_000], rng)
    out.flush()
    del out
    if write_csv:
        write_places_csv(town_places(work, n, drives, seed), work / "places.csv")
    picked = np.random.default_rng([seed, 4]).choice(n, queries, replace=False)
    qxy = xy[picked] + np.random.default_rng([seed, 5]).uniform(-3, 3, size=(queries, 2))
    np.save(work / "queries.npy", town.descriptors(qxy, np.random.default_rng([seed, 6])))
    np.save(work / "queries_xy.npy", qxy)


def build_worker(work: Path, kind: str, threads: int, api: tuple[int, int, int] | None = None
                 ) -> dict:
    """Run ``softloc map import`` in this process; its time and peak memory. With ``api``
    (n, drives, seed) the places are made in this process and given to the same streamed
    import as a PlaceTable (``import_descriptor_file``), instead of parsed from places.csv."""
    import faiss

    from softloc.cli import main

    faiss.omp_set_num_threads(threads)
    baseline = memory()["VmRSS"]  # the interpreter, numpy, torch, faiss: before any work
    started = time.perf_counter()
    if api is None:
        status = main(["-q", "map", "import", "--descriptors", str(work / "descriptors.npy"),
                       "--places", str(work / "places.csv"), "--out",
                       str(work / f"map_{kind}"), "--overwrite", "--dtype", "float16",
                       "--index", kind, *INDEX_OPTIONS[kind]])
    else:
        from softloc.map_import import import_descriptor_file

        options = INDEX_OPTIONS[kind]
        names = {"--nlist": "nlist", "--nprobe": "nprobe", "--m": "m", "--nbits": "nbits",
                 "--hnsw-m": "hnsw_m", "--ef-search": "ef_search"}
        kwargs = {names[k]: int(v) for k, v in zip(options[::2], options[1::2], strict=True)}
        table = town_places(work, *api)
        import_descriptor_file(work / "descriptors.npy", table, work / f"map_{kind}", kind,
                               kwargs, "float16")
        status = 0
    seconds = time.perf_counter() - started
    folder = work / f"map_{kind}"
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    return {"status": status, "build_s": seconds, "baseline_rss_mb": baseline,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "index_mb": sizes.get("index.faiss", 0) / 1e6,
            "descriptors_mb": sizes.get("descriptors.npy", 0) / 1e6,
            "map_mb": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6}


def query_worker(work: Path, kind: str) -> dict:
    """Open the map in this fresh process, run the queries one by one; times and memory."""
    import faiss

    from softloc.mapping import Map

    faiss.omp_set_num_threads(1)
    queries = np.load(work / "queries.npy")
    before = memory()
    started = time.perf_counter()
    the_map = Map.open(work / f"map_{kind}")
    open_s = time.perf_counter() - started
    after_open = memory()
    latencies, found = [], []
    for query in queries:
        t0 = time.perf_counter()
        _, rows = the_map.search(query, 10)
        latencies.append(time.perf_counter() - t0)
        found.append(rows[0])
    hits = the_map.localize(queries[:10], k=1)  # the positions come from the columns
    after = memory()
    np.save(work / f"found_{kind}.npy", np.stack(found))
    ms = np.array(latencies) * 1e3
    return {"open_s": open_s, "rss_before_mb": before, "rss_open_mb": after_open,
            "rss_queries_mb": after, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "first_fix": [hits[0].x, hits[0].y]}


def exact_top1(work: Path, block: int = 250_000) -> np.ndarray:
    """(Q, 1) exact nearest reference of each query by brute force over the stored float16
    descriptors (what a flat map over them returns), for runs without a flat map."""
    queries = np.load(work / "queries.npy")
    refs = np.load(work / "descriptors.npy", mmap_mode="r")
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    rows = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(refs), block):
        scores = queries @ np.asarray(refs[start:start + block], dtype=np.float32).T
        top = np.argmax(scores, axis=1)
        value = scores[np.arange(len(queries)), top]
        better = value > best
        best[better], rows[better] = value[better], start + top[better]
    return rows[:, None]


def run_worker(args: list[str]) -> dict:
    command = [sys.executable, __file__, *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-refs", type=int, default=1_000_000)
    parser.add_argument("--drives", type=int, default=0, help="default: N / 5000")
    parser.add_argument("--num-queries", type=int, default=1000)
    parser.add_argument("--kinds", nargs="+", default=list(INDEX_OPTIONS))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-generate", action="store_true",
                        help="reuse the references and queries already in --work")
    parser.add_argument("--api", action="store_true",
                        help="give the places to the import as a PlaceTable made in process "
                             "(no places.csv is written or parsed: for 10 M)")
    parser.add_argument("--worker", choices=["build", "query"])
    parser.add_argument("--kind")
    args = parser.parse_args()
    if args.worker == "build":
        api = (args.num_refs, args.drives, args.seed) if args.api else None
        print(json.dumps(build_worker(args.work, args.kind, args.threads, api)))
        return
    if args.worker == "query":
        print(json.dumps(query_worker(args.work, args.kind)))
        return
    args.drives = args.drives or max(1, args.num_refs // 5000)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not args.skip_generate:
        generate(args.work, args.num_refs, args.drives, args.num_queries, args.seed,
                 write_csv=not args.api)
        print(f"generated {args.num_refs} refs in {time.perf_counter() - started:.1f} s",
              flush=True)
    results = {}
    for kind in args.kinds:
        common = ["--work", str(args.work), "--kind", kind, "--threads", str(args.threads),
                  "--num-refs", str(args.num_refs), "--drives", str(args.drives),
                  "--seed", str(args.seed), *(["--api"] if args.api else [])]
        results[kind] = run_worker(["--worker", "build", *common])
        results[kind].update(run_worker(["--worker", "query", *common]))
        print(kind, json.dumps(results[kind]), flush=True)
    if results:
        if "flat" in results:
            exact = np.load(args.work / "found_flat.npy")
        else:
            exact = exact_top1(args.work)
        qxy = np.load(args.work / "queries_xy.npy")
        from softloc.mapping import Map

        first = Map.open(args.work / f"map_{next(iter(results))}")
        ref_xy = np.asarray(first.places.xy[exact[:, 0]])
        within = float(np.mean(np.linalg.norm(ref_xy - qxy, axis=1) <= 10.0))
        print(f"exact top-1 within 10 m of the query: {within:.3f}")
        for kind in results:
            found = np.load(args.work / f"found_{kind}.npy")
            results[kind]["recall@1"] = float(np.mean(found[:, 0] == exact[:, 0]))
            results[kind]["recall@10"] = float(np.mean((found == exact[:, :1]).any(axis=1)))
    import faiss
    import torch

    summary = {"num_refs": args.num_refs, "python": platform.python_version(),
               "faiss": faiss.__version__, "torch": torch.__version__,
               "numpy": np.__version__, "cpus": os.cpu_count(), "results": results}
    (args.work / f"results_{args.num_refs}.json").write_text(json.dumps(summary, indent=1))
    print("| kind | build (s) | peak build RSS (MB) (baseline) | index (MB) | open (s) | "
          "RSS after open (MB) | RSS after 1,000 queries (MB) | p50 (ms) | p99 (ms) | "
          "recall@1 | recall@10 |")
    for kind, r in results.items():
        print(f"| {kind} | {r['build_s']:.0f} | {r['peak_rss_mb']:.0f} "
              f"({r['baseline_rss_mb']:.0f}) | {r['index_mb']:.0f} | "
              f"{r['open_s']:.3f} | {r['rss_open_mb']['VmRSS']:.0f} | "
              f"{r['rss_queries_mb']['VmRSS']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r.get('recall@1', float('nan')):.3f} | {r.get('recall@10', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
