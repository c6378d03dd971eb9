"""Training step time and descriptor extraction throughput on this machine.

Usage:
    python benchmarks/model_speed.py [--threads 2] [--repeats 20] [--vgg]
    python benchmarks/model_speed.py --device cuda --vgg --amp   # on a GPU machine

A training step is what the Trainer does per tuple: forward of the tuple's images, the loss,
backward and an Adam step. Extraction is eval-mode forward in batches. Images are random
(speed does not depend on content). Prints Markdown tables. On a GPU every timing is
bracketed by ``torch.cuda.synchronize`` so that queued kernels are counted; ``--amp`` adds rows
with bfloat16 autocast (the loss is computed in float32).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
from collections.abc import Callable

import torch

from softloc.losses import SoftContrastiveLoss, TripletLoss
from softloc.models import create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - began) / repeats


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_step_ms(
    name: str,
    size: tuple[int, int],
    tuple_size: int,
    loss: torch.nn.Module,
    repeats: int,
    device: torch.device,
    amp: bool = False,
) -> float:
    """Milliseconds per optimisation step on one tuple of ``tuple_size`` images."""
    model = create_model(name, image_size=size).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    images = torch.randn(tuple_size, 3, size[1], size[0], device=device)
    coords = torch.arange(tuple_size, dtype=torch.float32, device=device) * 3.0
    distances = (coords[:, None] - coords[None, :]).abs()

    def step() -> None:
        optimizer.zero_grad()
        with _autocast(device, amp):
            descriptors = model(images)
        loss(descriptors.float(), distances).backward()
        optimizer.step()

    return 1000 * _time(step, repeats, device, warmup=2)


@torch.no_grad()
def extraction_rate(
    name: str,
    size: tuple[int, int],
    batch: int,
    repeats: int,
    device: torch.device,
    amp: bool = False,
) -> float:
    """Images per second described in eval mode, batches of ``batch``."""
    model = create_model(name, image_size=size).to(device).eval()
    images = torch.randn(batch, 3, size[1], size[0], device=device)

    def forward() -> None:
        with _autocast(device, amp):
            model(images)

    return batch / _time(forward, repeats, device, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--vgg", action="store_true", help="also time vgg16_netvlad at 240x180")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="add bfloat16 autocast rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{args.threads} threads, {platform.processor() or 'cpu'}"
    print(f"torch {torch.__version__}, {where}")
    print()
    precisions = [False, True] if args.amp else [False]
    vgg_repeats = args.repeats if device.type == "cuda" else max(2, args.repeats // 10)

    print("| model | image | tuple | loss | precision | train step (ms) |")
    print("|---|---|---:|---|---|---:|")
    soft = SoftContrastiveLoss()
    for name in ("small_gem", "small_netvlad"):
        for tuple_size in (13, 25):
            radius = (tuple_size - 1) // 2 * 3 + 1
            triplet = TripletLoss(near_radius=radius, far_radius=radius)
            for label, loss in (("soft", soft), ("triplet", triplet)):
                ms = train_step_ms(name, (120, 90), tuple_size, loss, args.repeats, device)
                print(f"| {name} | 120x90 | {tuple_size} | {label} | fp32 | {ms:.1f} |")
    if args.vgg:
        for amp in precisions:
            ms = train_step_ms("vgg16_netvlad", (240, 180), 25, soft, vgg_repeats, device, amp)
            label = "bf16" if amp else "fp32"
            print(f"| vgg16_netvlad | 240x180 | 25 | soft | {label} | {ms:.1f} |")
    print()
    print("| model | image | batch | precision | extraction (images/s) |")
    print("|---|---|---:|---|---:|")
    for name in ("raw_pixels", "small_gem", "small_netvlad"):
        rate = extraction_rate(name, (120, 90), 64, args.repeats, device)
        print(f"| {name} | 120x90 | 64 | fp32 | {rate:.0f} |")
    if args.vgg:
        batches = (16, 64, 256) if device.type == "cuda" else (16,)
        for batch in batches:
            for amp in precisions:
                rate = extraction_rate(
                    "vgg16_netvlad", (240, 180), batch, vgg_repeats, device, amp
                )
                label = "bf16" if amp else "fp32"
                print(f"| vgg16_netvlad | 240x180 | {batch} | {label} | {rate:.1f} |")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        print()
        print(f"peak GPU memory allocated: {peak:.1f} GiB")


if __name__ == "__main__":
    main()
