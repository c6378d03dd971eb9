"""GPU check of the image pipeline (one H100/H200, under 8 minutes): prints a JSON summary.

Usage (from the repository root, on the GPU machine):
    PYTHONPATH=src python benchmarks/gpu_pipeline_check.py --work /tmp/gpucheck [--quick]

What it measures, all on VGG16-NetVLAD at 240 x 180 with random weights (nothing downloaded),
bfloat16 autocast and channels-last:

1. the Trainer step: two ``softloc train`` runs of different lengths (the paper's preset:
   12 + 12 tuples = 25 images, hard mining on with its 1,000-image cache refreshed every 250
   steps; validation, whitening and intermediate checkpoints off); the difference of the wall
   times over the difference of the steps, against the bare step (forward + float32 loss +
   backward + Adam on one preloaded 25-image tuple on the GPU). Goal: ratio <= 1.2.
2. extraction: ``extract_descriptors`` through the pipeline (decoding PNGs with the default
   workers, and from the image cache) against the bare forward on the same images preloaded
   on the GPU, interleaved. Goal: ratio >= 0.9.
3. extraction img/s as a share of the card's bf16 roofline: FLOPs per image counted with
   ``torch.utils.flop_counter.FlopCounterMode``; roofline = the datasheet's dense bf16 rate
   for the card's name and the rate of a large bf16 matmul measured here. Goal: >= 40 %.

The dataset is a small procedural town rendered at 240 x 180 into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Dense bf16 tensor-core rates from the vendors' datasheets (FLOP/s), by a part of the name.
DATASHEET_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}


def _sync() -> None:
    torch.cuda.synchronize()


def _timed(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    fn()
    _sync()
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        _sync()
        out.append(time.perf_counter() - began)
    return out


def _datasheet(name: str) -> float | None:
    for key, value in DATASHEET_BF16.items():
        if key in name:
            return value
    return None


def measured_bf16_matmul() -> float:
    """FLOP/s of an 8192^3 bf16 matmul (the practical ceiling on this card)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    times = _timed(lambda: a @ b, 20)
    return 2 * 8192**3 / statistics.median(times)


def make_town(work: Path, route_length: float) -> Path:
    town = work / "town"
    if not (town / "places.csv").is_file():
        subprocess.run([sys.executable, "-m", "softloc", "-q", "town", "--out", str(town),
                        "--size", "240x180", "--route-length", str(route_length),
                        "--workers", str(min(8, os.cpu_count() or 1))], check=True)
    return town


def trainer_seconds(town: Path, steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "softloc", "-q", "train", "--config", "vgg16_netvlad",
             "--data", str(town), "--out", f"{out}/run", "--steps", str(steps),
             "--set", "train.device=cuda", "--set", "train.amp=bf16",
             "--set", "train.channels_last=true", "--set", "train.val_every=0",
             "--set", "model.whitening_dim=null", "--set", f"train.checkpoint_every={steps}"],
            check=True, stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - began


def bare_step_seconds(repeats: int) -> float:
    from softloc.config import load_config
    from softloc.models import create_model
    from softloc.train import build_loss

    config = load_config("vgg16_netvlad")
    torch.manual_seed(0)
    model = create_model("vgg16_netvlad", image_size=(240, 180)).cuda().train()
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    loss_fn = build_loss(config)
    size = 1 + config.tuples.n_near + config.tuples.n_far
    images = torch.randn(size, 3, 180, 240, device="cuda").contiguous(
        memory_format=torch.channels_last)
    coords = torch.arange(size, dtype=torch.float32, device="cuda") * 3.0
    distances = (coords[:, None] - coords[None, :]).abs()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            descriptors = model(images)
        loss_fn(descriptors.float(), distances).backward()
        optimizer.step()

    for _ in range(5):
        step()
    return statistics.median(_timed(step, repeats))


def extraction(town: Path, images: int, repeats: int) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    from softloc.data.image_cache import store_for_places
    from softloc.data.places import read_places
    from softloc.extract import extract_descriptors, image_store, model_pipeline
    from softloc.models import create_model

    places = read_places(town)
    rows = np.arange(min(images, len(places)))
    torch.manual_seed(0)
    model = create_model("vgg16_netvlad", image_size=(240, 180)).cuda().eval()
    model.to(memory_format=torch.channels_last)
    paths = [places.image_path(i) for i in range(len(places))]
    cached = store_for_places(places, (240, 180))
    with model_pipeline(model, cached, channels_last=True) as pipe:
        preloaded = torch.cat(list(pipe.batches(rows, 256)))
    batch = 64

    @torch.no_grad()
    def bare() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for start in range(0, len(rows), batch):
                model(preloaded[start : start + batch]).float().cpu()

    def decoded() -> None:
        with model_pipeline(model, image_store(model, paths), channels_last=True) as pipe:
            extract_descriptors(model, pipe, rows, batch_size=batch, amp="bf16")

    def from_cache() -> None:
        with model_pipeline(model, cached, channels_last=True) as pipe:
            extract_descriptors(model, pipe, rows, batch_size=batch, amp="bf16")

    times: dict[str, list[float]] = {"bare": [], "decode": [], "cache": []}
    runs = {"bare": bare, "decode": decoded, "cache": from_cache}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            _sync()
            began = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - began)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(preloaded[:8])
    flops_per_image = counter.get_total_flops() / 8
    rate = {k: len(rows) / statistics.median(v) for k, v in times.items()}
    return {
        "images": int(len(rows)),
        "bare_img_s": rate["bare"],
        "decode_img_s": rate["decode"],
        "cache_img_s": rate["cache"],
        "decode_ratio": rate["decode"] / rate["bare"],
        "cache_ratio": rate["cache"] / rate["bare"],
        "gflops_per_image": flops_per_image / 1e9,
        "flops_per_image": flops_per_image,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="fewer steps and images")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no GPU visible: this check runs on the GPU machine only")
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    name = torch.cuda.get_device_name(0)
    summary: dict[str, object] = {"card": name, "torch": torch.__version__,
                                  "cpu_cores": os.cpu_count()}
    town = make_town(args.work, 900.0 if args.quick else 1200.0)  # >= 819 m: three regions
    summary["town_seconds"] = time.perf_counter() - began
    short, long = (20, 80) if args.quick else (40, 240)
    a = trainer_seconds(town, short)
    b = trainer_seconds(town, long)
    trainer = (b - a) / (long - short)
    bare = bare_step_seconds(30 if args.quick else 100)
    summary["train"] = {"steps": [short, long], "trainer_s_per_step": trainer,
                        "bare_s_per_step": bare, "ratio": trainer / bare, "goal": "<= 1.2"}
    ext = extraction(town, 1024 if args.quick else 2048, 3 if args.quick else 5)
    measured = measured_bf16_matmul()
    datasheet = _datasheet(name)
    ext["measured_bf16_matmul_tflops"] = measured / 1e12
    ext["roofline_share_measured"] = ext["cache_img_s"] * ext["flops_per_image"] / measured
    if datasheet is not None:
        ext["datasheet_bf16_tflops"] = datasheet / 1e12
        ext["roofline_share_datasheet"] = ext["cache_img_s"] * ext["flops_per_image"] / datasheet
        ext["bare_roofline_share_datasheet"] = (
            ext["bare_img_s"] * ext["flops_per_image"] / datasheet)
    ext["goals"] = {"ratio": ">= 0.9", "roofline_share": ">= 0.4"}
    summary["extraction"] = ext
    summary["seconds"] = time.perf_counter() - began
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
