"""Loopback load on `softloc serve`: throughput and p50 / p99 latency against concurrency.

    PYTHONPATH=src python benchmarks/serve_load.py --requests 2000 --concurrency 1 4 16

Builds a small map (a procedural street of noise images, the ``small_gem`` model) in a
temporary folder unless ``--map`` is given, starts `softloc serve` in its own process on
127.0.0.1 and a free port (so the client's threads do not share the server's GIL), sends
``--requests`` single-image ``POST /localize`` requests at each concurrency (one keep-alive
connection per client thread: httpx, or the standard library's ``http.client`` with
``--client stdlib``), and compares with in-process ``Localizer.localize`` on the same images
(decoded from the same bytes, one at a time). At the highest concurrency it also runs with
``--batch-wait-ms 0`` (no waiting: only requests already queued share a forward) and with no
batching at all (``max_batch=1``) to show what batching buys.

The machine may be shared and noisy, so the phases are interleaved: each of ``--repeats``
rounds runs the in-process baseline and then every service phase, and each ratio compares a
phase with the baseline of its own round. The servers run for the whole benchmark. Each phase
also reports the CPU time per request of the client process and of the server process (all
its threads; from /proc, Linux only); for the in-process baseline the client column is the
whole work. Only the loopback address is used; every phase stops
after ``--max-seconds`` and the servers stop at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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

    def __init__(self, map_dir: Path, batch_wait_ms: float, threads: int,
                 max_batch: int | None = None) -> None:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]
        self.command = [sys.executable, "-m", "softloc", "-q", "serve", "--map", str(map_dir),
                        "--host", HOST, "--port", str(self.port),
                        "--batch-wait-ms", str(batch_wait_ms)]
        if max_batch is not None:  # not a CLI option: the same serve() the CLI calls
            self.command = [sys.executable, "-c",
                            "import sys; from softloc.serve.run import serve; "
                            "serve(sys.argv[1], host=sys.argv[2], port=int(sys.argv[3]), "
                            "batch_wait_ms=float(sys.argv[4]), max_batch=int(sys.argv[5]))",
                            str(map_dir), HOST, str(self.port), str(batch_wait_ms),
                            str(max_batch)]
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

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the server process so far (None off Linux)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *_) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class HttpxPoster:
    """``POST /localize`` of one PNG through an httpx.Client (keep-alive)."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)

    def post(self, body: bytes) -> int:
        answer = self.client.post("/localize", files={"image": ("q.png", body, "image/png")})
        return answer.status_code

    def close(self) -> None:
        self.client.close()


class StdlibPoster:
    """The same request through one keep-alive ``http.client`` connection: a lean client,
    to tell the service's own cost from httpx's."""

    BOUNDARY = "softloc-bench-boundary"

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, body: bytes) -> int:
        head = (f"--{self.BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"q.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
        payload = head + body + f"\r\n--{self.BOUNDARY}--\r\n".encode()
        self.connection.request("POST", "/localize", payload, headers={
            "Content-Type": f"multipart/form-data; boundary={self.BOUNDARY}"})
        answer = self.connection.getresponse()
        answer.read()
        return answer.status

    def close(self) -> None:
        self.connection.close()


CLIENTS: dict[str, Callable[[str], Any]] = {"httpx": HttpxPoster, "stdlib": StdlibPoster}


def load(url: str, queries: list[bytes], requests: int, concurrency: int,
         max_seconds: float, client: str = "httpx") -> dict:
    """Send ``requests`` requests from ``concurrency`` threads; latencies in ms, and the
    client process's CPU milliseconds per request."""
    deadline = time.monotonic() + max_seconds
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures = [0]

    def worker() -> None:
        poster = CLIENTS[client](url)
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = queries[i % len(queries)]
                start = time.perf_counter()
                status = poster.post(body)
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    latencies.append(elapsed)
                    failures[0] += status != 200
        finally:
            poster.close()

    cpu = time.process_time()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return summary(latencies, wall) | {"failures": failures[0],
                                       "client_cpu_ms": cpu * 1000 / max(1, len(latencies))}


def summary(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"count": len(ordered), "per_s": len(ordered) / wall,
            "p50_ms": statistics.median(ordered), "p99_ms": p99}


def in_process(localizer: Localizer, queries: list[bytes], requests: int,
               max_seconds: float) -> dict:
    latencies = []
    deadline = time.monotonic() + max_seconds
    cpu = time.process_time()
    start = time.perf_counter()
    for i in range(requests):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        image = Image.open(io.BytesIO(queries[i % len(queries)])).convert("RGB")
        localizer.localize([image])
        latencies.append((time.perf_counter() - t0) * 1000)
    wall = time.perf_counter() - start
    cpu_ms = (time.process_time() - cpu) * 1000 / max(1, len(latencies))
    return summary(latencies, wall) | {"cpu_ms": cpu_ms}


def service_phase(server: LoopbackServer, url: str, queries: list[bytes], requests: int,
                  concurrency: int, max_seconds: float, client: str) -> dict:
    """One load phase, with the server's CPU milliseconds per request."""
    before = server.cpu_seconds()
    result = load(url, queries, requests, concurrency, max_seconds, client)
    after = server.cpu_seconds()
    if before is not None and after is not None:
        result["server_cpu_ms"] = (after - before) * 1000 / max(1, result["count"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", type=Path, help="a map folder (default: build a small one)")
    parser.add_argument("--references", type=int, default=500)
    parser.add_argument("--size", default="64x48", help="image size of the built map")
    parser.add_argument("--requests", type=int, default=2000, help="per phase")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of (in-process, every service phase), interleaved")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="httpx")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per phase")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        size = tuple(int(v) for v in args.size.split("x"))
        if args.map is None:
            map_dir, queries = make_map(Path(tmp), args.references, size)
        else:
            map_dir = args.map
            places = Localizer(map_dir).map.places
            queries = [(places.root / p).read_bytes() for p in places.path[:50]]
        top = max(args.concurrency)
        phases = ([("5 ms", 5.0, None, c) for c in args.concurrency]
                  + [("0 ms (queued only)", 0.0, None, top), ("none (max_batch 1)", 0.0, 1, top)])
        servers = {}
        for _, wait_ms, max_batch, _ in phases:
            if (wait_ms, max_batch) not in servers:
                server = LoopbackServer(map_dir, wait_ms, args.threads, max_batch)
                servers[wait_ms, max_batch] = (server, stack.enter_context(server))
        localizer = Localizer(map_dir, k=5)
        in_process(localizer, queries, min(20, args.requests), args.max_seconds)  # warm
        for _, url in servers.values():
            load(url, queries, min(20, args.requests), top, args.max_seconds, args.client)
        print(f"client {args.client}; load average {os.getloadavg()[0]:.2f} at the start")
        print("| round | batching | concurrency | requests | req/s | p50 ms | p99 ms "
              "| p50 / in-process | client CPU ms/req | server CPU ms/req |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        ratios: dict[tuple[str, int], list[float]] = {}
        rates: dict[tuple[str, int], list[float]] = {}
        for round_ in range(1, args.repeats + 1):
            base = in_process(localizer, queries, args.requests, args.max_seconds)
            print(f"| {round_} | in-process | 1 | {base['count']} | {base['per_s']:.1f} | "
                  f"{base['p50_ms']:.2f} | {base['p99_ms']:.2f} | 1x | {base['cpu_ms']:.2f} | |",
                  flush=True)
            for state, wait_ms, max_batch, concurrency in phases:
                server, url = servers[wait_ms, max_batch]
                result = service_phase(server, url, queries, args.requests, concurrency,
                                       args.max_seconds, args.client)
                ratio = result["p50_ms"] / base["p50_ms"]
                ratios.setdefault((state, concurrency), []).append(ratio)
                rates.setdefault((state, concurrency), []).append(result["per_s"])
                server_cpu = result.get("server_cpu_ms")
                print(f"| {round_} | {state} | {concurrency} | {result['count']} | "
                      f"{result['per_s']:.1f} | {result['p50_ms']:.2f} | "
                      f"{result['p99_ms']:.2f} | {ratio:.2f}x | "
                      f"{result['client_cpu_ms']:.2f} | "
                      f"{'' if server_cpu is None else f'{server_cpu:.2f}'} |"
                      + (f" {result['failures']} failed" if result["failures"] else ""),
                      flush=True)
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end; medians over "
              f"{args.repeats} rounds:")
        for key, values in ratios.items():
            print(f"- {key[0]}, concurrency {key[1]}: p50 / in-process "
                  f"{statistics.median(values):.2f}x, {statistics.median(rates[key]):.1f} req/s")


if __name__ == "__main__":
    main()
