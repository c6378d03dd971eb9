"""Loopback load on `softloc serve`: throughput and p50 / p99 latency against concurrency.

    PYTHONPATH=src python benchmarks/serve_load.py --requests 2000 --concurrency 1 4 16

Builds a small map (a procedural street of noise images, the ``small_gem`` model) in a
temporary folder unless ``--map`` is given, starts `softloc serve` in its own process on
127.0.0.1 and a free port (so the client's threads do not share the server's GIL), sends
``--requests`` single-image ``POST /localize`` requests at each concurrency (httpx, one
client per thread), then compares with in-process ``Localizer.localize`` on the
same images (decoded from the same bytes, one at a time). At the highest concurrency it also
runs with ``--batch-wait-ms 0`` (no waiting: only requests already queued share a forward)
to show what the wait buys. Only the loopback
address is used; every phase stops after ``--max-seconds`` and the server stops at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from softloc.data.places import PlaceTable, write_places
from softloc.localize import build_map
from softloc.localizer import Localizer
from softloc.models import create_model, save_model

HOST = "127.0.0.1"


def make_map(root: Path, count: int, size: tuple[int, int]) -> tuple[Path, list[bytes]]:
    """A street of ``count`` reference PNGs, its map, and PNG bytes of query images."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = f"images/{i:05d}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        base = np.array([i * 2 % 256, i * 5 % 256, 128], dtype=np.float64)
        pixels = np.clip(base + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / path)
        paths.append(path)
    n = len(paths)
    table = PlaceTable(path=np.array(paths), x=np.arange(n, dtype=float), y=np.zeros(n),
                       yaw=np.zeros(n), timestamp=np.arange(n, dtype=float),
                       traversal=np.full(n, "reference"), condition=np.full(n, "overcast"),
                       split=np.full(n, "test"), root=root)
    write_places(table, root / "places.csv")
    model = save_model(create_model("small_gem", image_size=size), root / "m.safetensors")
    map_dir = build_map(model, table, root / "map", progress=False)
    queries = [(root / p).read_bytes() for p in paths[:: max(1, n // 50)]]
    return map_dir, queries


class LoopbackServer:
    """`softloc serve` in its own process on 127.0.0.1 and a free port; stopped on exit."""

    def __init__(self, map_dir: Path, batch_wait_ms: float, threads: int) -> None:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]
        self.command = [sys.executable, "-m", "softloc", "-q", "serve", "--map", str(map_dir),
                        "--host", HOST, "--port", str(self.port),
                        "--batch-wait-ms", str(batch_wait_ms)]
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads),
                    "MKL_NUM_THREADS": str(threads)}
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        self.process = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        url = f"http://{HOST}:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"the server did not start: {' '.join(self.command)}")

    def __exit__(self, *_) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def load(url: str, queries: list[bytes], requests: int, concurrency: int,
         max_seconds: float) -> dict:
    """Send ``requests`` requests from ``concurrency`` threads; latencies in ms."""
    deadline = time.monotonic() + max_seconds
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures = [0]

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = queries[i % len(queries)]
                start = time.perf_counter()
                answer = client.post("/localize", files={"image": ("q.png", body, "image/png")})
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    latencies.append(elapsed)
                    failures[0] += answer.status_code != 200

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - start
    return summary(latencies, wall) | {"failures": failures[0]}


def summary(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"count": len(ordered), "per_s": len(ordered) / wall,
            "p50_ms": statistics.median(ordered), "p99_ms": p99}


def in_process(map_dir: Path, queries: list[bytes], requests: int, max_seconds: float) -> dict:
    localizer = Localizer(map_dir, k=5)
    latencies = []
    deadline = time.monotonic() + max_seconds
    start = time.perf_counter()
    for i in range(requests):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        image = Image.open(io.BytesIO(queries[i % len(queries)])).convert("RGB")
        localizer.localize([image])
        latencies.append((time.perf_counter() - t0) * 1000)
    return summary(latencies, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", type=Path, help="a map folder (default: build a small one)")
    parser.add_argument("--references", type=int, default=500)
    parser.add_argument("--size", default="64x48", help="image size of the built map")
    parser.add_argument("--requests", type=int, default=2000, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per phase")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        size = tuple(int(v) for v in args.size.split("x"))
        if args.map is None:
            map_dir, queries = make_map(Path(tmp), args.references, size)
        else:
            map_dir = args.map
            places = Localizer(map_dir).map.places
            queries = [(places.root / p).read_bytes() for p in places.path[:50]]
        base = in_process(map_dir, queries, args.requests, args.max_seconds)
        print(f"in-process Localizer.localize: {base['per_s']:.1f}/s  "
              f"p50 {base['p50_ms']:.2f} ms  p99 {base['p99_ms']:.2f} ms  ({base['count']})")
        print("| batching | concurrency | requests | req/s | p50 ms | p99 ms | p50 / in-process |")
        print("|---|---|---|---|---|---|---|")
        runs = [(5.0, c) for c in args.concurrency] + [(0.0, max(args.concurrency))]
        for wait_ms, concurrency in runs:
            with LoopbackServer(map_dir, wait_ms, args.threads) as url:
                load(url, queries, min(20, args.requests), concurrency, args.max_seconds)  # warm
                result = load(url, queries, args.requests, concurrency, args.max_seconds)
            state = f"{wait_ms:g} ms" if wait_ms else "0 ms (queued only)"
            print(f"| {state} | {concurrency} | {result['count']} | {result['per_s']:.1f} | "
                  f"{result['p50_ms']:.2f} | {result['p99_ms']:.2f} | "
                  f"{result['p50_ms'] / base['p50_ms']:.2f}x |"
                  + (f" {result['failures']} failed" if result["failures"] else ""))


if __name__ == "__main__":
    main()
