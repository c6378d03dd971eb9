"""The image pipeline against the bare network, and the Trainer's memory on a large dataset.

Usage:
    python benchmarks/pipeline_speed.py extraction --data TOWN [--images 1024] [--repeats 5]
        [--vgg-images 48]
    python benchmarks/pipeline_speed.py train-step --data TOWN [--steps 30 90] [--repeats 2]
    python benchmarks/pipeline_speed.py memory --data TOWN --work DIR [--copies 18]
        [--steps 100 600] [--size 240x180]

extraction: descriptors of ``--images`` PNG files of the town through ``extract_descriptors``
with the default pipeline (decoding, and from the image cache) against the bare forward pass
on the same images preloaded as one normalised tensor, repeats interleaved; small_netvlad at
120 x 90 and VGG16-NetVLAD at 240 x 180 (random weights, nothing downloaded). Ratio = bare time
/ pipeline time (1.0: the pipeline costs nothing).

train-step: the Trainer's time per step from two ``softloc train`` runs of different lengths
(demo preset, validation and whitening off: the difference of the wall times divided by the
difference of the steps) against forward + backward + Adam on one preloaded tuple of the same
size, interleaved.

memory: a dataset of ``--copies`` towns side by side (10 km apart, each copy's timestamps its
own), trained at ``--size`` with the demo preset for the two step counts under
``/usr/bin/time -v``; prints the two peak RSS values and their difference. The image cache is
built first (N x W x H x 3 bytes of disk under DIR) from the town's own cache at that size,
since every copy holds the town's images.

Prints Markdown rows with the machine and the date.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from softloc.config import load_config
from softloc.data.image_cache import store_for_places
from softloc.data.images import to_tensor
from softloc.data.pipeline import default_workers
from softloc.data.places import read_places, write_places
from softloc.extract import extract_descriptors, image_store
from softloc.models import create_model
from softloc.train import build_loss

SOFTLOC = [sys.executable, "-m", "softloc"]


def _machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, "
            f"{default_workers()} pipeline workers, {datetime.date.today()}")


def _extraction(model_name: str, size: tuple[int, int], places, rows: np.ndarray,
                repeats: int, batch: int, with_cache: bool) -> None:
    torch.manual_seed(0)
    model = create_model(model_name, image_size=size).eval()
    paths = [places.image_path(i) for i in range(len(places))]
    cached = store_for_places(places, size) if with_cache else None
    preloaded = to_tensor(image_store(model, paths).images(rows))

    @torch.no_grad()
    def bare() -> None:
        for start in range(0, len(rows), batch):
            model(preloaded[start : start + batch])

    def decoded() -> None:  # a fresh store, as map build and evaluation use
        extract_descriptors(model, image_store(model, paths), rows, batch_size=batch)

    def from_cache() -> None:
        extract_descriptors(model, cached, rows, batch_size=batch)

    runs = {"bare": bare, "decode": decoded, **({"cache": from_cache} if with_cache else {})}
    bare()  # warm up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            began = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - began)
    median = {k: statistics.median(v) for k, v in times.items()}
    for name in [k for k in runs if k != "bare"]:
        ratios = [b / p for b, p in zip(times["bare"], times[name], strict=True)]
        print(f"| {model_name} {size[0]}x{size[1]} | {name} | {len(rows) / median[name]:.0f} | "
              f"{len(rows) / median['bare']:.0f} | {statistics.median(ratios):.2f} "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f}) |")


def extraction(args: argparse.Namespace) -> None:
    places = read_places(args.data)
    rng = np.random.default_rng(0)
    print(f"machine: {_machine()}\n")
    print("| model | pipeline | pipeline img/s | bare img/s | ratio (bare time / pipeline) |")
    print("| --- | --- | --- | --- | --- |")
    rows = np.sort(rng.choice(len(places), args.images, replace=False))
    _extraction("small_netvlad", (120, 90), places, rows, args.repeats, 64, True)
    if args.vgg_images:
        rows = np.sort(rng.choice(len(places), args.vgg_images, replace=False))
        _extraction("vgg16_netvlad", (240, 180), places, rows, max(2, args.repeats // 2), 16,
                    False)


def _train_seconds(data: Path, steps: int, extra: list[str]) -> tuple[float, float]:
    """Wall time of a ``softloc train`` run, and its seconds per step from its own log
    (between the first and the last logged step: no start-up, no final save)."""
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        subprocess.run(
            [*SOFTLOC, "-q", "train", "--config", "demo", "--data", str(data), "--out",
             f"{out}/run", "--steps", str(steps), "--set", "train.val_every=0",
             "--set", "model.whitening_dim=null", "--set", f"train.checkpoint_every={steps}",
             *[a for e in extra for a in ("--set", e)]],
            check=True, stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - began
        with open(f"{out}/run/train_log.csv") as handle:
            rows = list(csv.DictReader(handle))
        first, last = rows[0], rows[-1]
        logged = (float(last["seconds"]) - float(first["seconds"])) / (
            int(last["step"]) - int(first["step"]))
        return wall, logged


def _bare_step_seconds(repeats: int) -> float:
    config = load_config("demo")
    torch.manual_seed(0)
    model = create_model(config.model.name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    loss_fn = build_loss(config)
    size = 1 + config.tuples.n_near + config.tuples.n_far
    # a tuple as the Trainer feeds it: uint8 (B, H, W, 3) images normalised into (B, 3, H, W)
    # float32 with channels-last strides (on the CPU convolutions are faster that way)
    pixels = np.random.default_rng(0).integers(0, 256, (size, 90, 120, 3), dtype=np.uint8)
    images = to_tensor(pixels)
    coords = torch.arange(size, dtype=torch.float32) * 3.0
    distances = (coords[:, None] - coords[None, :]).abs()
    began = time.perf_counter()
    for _ in range(repeats):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), distances).backward()
        optimizer.step()
    return (time.perf_counter() - began) / repeats


def train_step(args: argparse.Namespace) -> None:
    short, long = args.steps
    torch.set_num_threads(args.threads)  # the same torch threads in both
    args.set = [*(args.set or []), f"train.num_threads={args.threads}"]
    print(f"machine: {_machine()}\n")
    print("| repeat | Trainer s/step (two lengths) | Trainer s/step (its log) | bare s/step | "
          "ratio, two lengths | ratio, log |")
    print("| --- | --- | --- | --- | --- | --- |")
    _bare_step_seconds(5)
    ratios = []
    for repeat in range(args.repeats):
        a, _ = _train_seconds(args.data, short, args.set or [])
        bare_a = _bare_step_seconds(long - short)
        b, logged = _train_seconds(args.data, long, args.set or [])
        bare_b = _bare_step_seconds(long - short)
        per_step = (b - a) / (long - short)
        bare = (bare_a + bare_b) / 2
        ratios.append(logged / bare)
        print(f"| {repeat} | {per_step:.4f} | {logged:.4f} | {bare:.4f} | "
              f"{per_step / bare:.2f} | {logged / bare:.2f} |")
    print(f"\nmedian ratio (log) {statistics.median(ratios):.2f}")


def make_repeated_town(town: Path, out: Path, copies: int) -> Path:
    """A dataset of ``copies`` towns 10 km apart, each with its own timestamps, whose rows
    point at the town's image files (through a link to its images folder)."""
    places = read_places(town)
    out.mkdir(parents=True, exist_ok=True)
    link = out / "images"
    if not link.exists():
        link.symlink_to((town / "images").resolve())
    span = float(places.timestamp.max() - places.timestamp.min()) + 1.0
    tables = []
    for c in range(copies):
        tables.append(type(places)(**{
            **places.__dict__, "x": places.x + 10_000.0 * c,
            "timestamp": places.timestamp + span * c, "root": out,
        }))
    write_places(type(places).concat(tables), out / "places.csv")
    return out


def build_repeated_cache(town: Path, data: Path, size: tuple[int, int]) -> None:
    """The repeated dataset's image cache, made from the town's own cache (every copy's rows
    hold the town's images: decoded once, not once per copy)."""
    from softloc.data.image_cache import build_cache, cache_files, check_cache, places_checksum

    one = read_places(town)
    many = read_places(data)
    town_store = store_for_places(one, size, progress=True)
    files = cache_files(data, size)
    checksum = places_checksum(many.path)
    if check_cache(files, len(many), size, checksum) is None:
        return
    build_cache(files, len(many), size, checksum, lambda r: town_store.get(r % len(one)),
                workers=2, progress=True)


def _start_timed(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(["/usr/bin/time", "-v", *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _peak_rss_mb(process: subprocess.Popen[str]) -> float:
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(stderr[-3000:])
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    assert match is not None
    return int(match.group(1)) / 1024


def memory(args: argparse.Namespace) -> None:
    data = make_repeated_town(args.data, args.work / "repeated", args.copies)
    width, height = (int(v) for v in args.size.split("x"))
    rows = len(read_places(data))
    print(f"machine: {_machine()}\n\ndataset: {rows} places ({args.copies} towns), {args.size}")
    began = time.perf_counter()
    build_repeated_cache(args.data, data, (width, height))
    print(f"cache build: {time.perf_counter() - began:.0f} s, "
          f"{rows * width * height * 3 / 1e9:.1f} GB\n")
    began = time.perf_counter()
    processes = []
    for steps in args.steps:  # both at once: peak RSS is per process
        command = [*SOFTLOC, "-q", "train", "--config", "demo", "--data", str(data), "--out",
                   str(args.work / f"run_{steps}"), "--steps", str(steps),
                   "--set", f"data.image_width={width}", "--set", f"data.image_height={height}",
                   "--set", "train.val_every=0", "--set", "model.whitening_dim=null",
                   "--set", "train.num_threads=1",
                   *[a for e in args.set or [] for a in ("--set", e)]]
        processes.append(_start_timed(command))
    peaks = [_peak_rss_mb(p) for p in processes]
    print("| steps | peak RSS (MB) |")
    print("| --- | --- |")
    for steps, peak in zip(args.steps, peaks, strict=True):
        print(f"| {steps} | {peak:.0f} |")
    print(f"\ndifference {args.steps[-1]} - {args.steps[0]} steps: {peaks[-1] - peaks[0]:.0f} MB "
          f"(both runs together: {time.perf_counter() - began:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ext = sub.add_parser("extraction")
    ext.add_argument("--data", type=Path, required=True)
    ext.add_argument("--images", type=int, default=1024)
    ext.add_argument("--vgg-images", type=int, default=48)
    ext.add_argument("--repeats", type=int, default=5)
    ext.set_defaults(func=extraction)
    step = sub.add_parser("train-step")
    step.add_argument("--data", type=Path, required=True)
    step.add_argument("--steps", type=int, nargs=2, default=[30, 90])
    step.add_argument("--repeats", type=int, default=2)
    step.add_argument("--set", action="append", help="extra overrides of the runs")
    step.add_argument("--threads", type=int, default=1, help="torch threads of both")
    step.set_defaults(func=train_step)
    mem = sub.add_parser("memory")
    mem.add_argument("--data", type=Path, required=True)
    mem.add_argument("--work", type=Path, required=True)
    mem.add_argument("--copies", type=int, default=18)
    mem.add_argument("--steps", type=int, nargs=2, default=[100, 600])
    mem.add_argument("--size", default="240x180")
    mem.add_argument("--set", action="append", help="extra overrides of the runs")
    mem.set_defaults(func=memory)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
