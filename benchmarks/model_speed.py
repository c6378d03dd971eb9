"""Training step time and descriptor extraction throughput on this machine.

Usage: python benchmarks/model_speed.py [--threads 2] [--repeats 20]

A training step is what the Trainer does per tuple: forward of the tuple's images, the loss,
backward and an Adam step. Extraction is eval-mode forward in batches of 64. Images are random
(speed does not depend on content). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from softloc.losses import SoftContrastiveLoss, TripletLoss
from softloc.models import create_model


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - began) / repeats


def train_step_ms(name: str, size: tuple[int, int], tuple_size: int, loss, repeats: int) -> float:
    model = create_model(name, image_size=size)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    images = torch.randn(tuple_size, 3, size[1], size[0])
    coords = torch.arange(tuple_size, dtype=torch.float32) * 3.0
    distances = (coords[:, None] - coords[None, :]).abs()

    def step() -> None:
        optimizer.zero_grad()
        loss(model(images), distances).backward()
        optimizer.step()

    return 1000 * _time(step, repeats)


@torch.no_grad()
def extraction_rate(name: str, size: tuple[int, int], batch: int, repeats: int) -> float:
    model = create_model(name, image_size=size).eval()
    images = torch.randn(batch, 3, size[1], size[0])
    return batch / _time(lambda: model(images), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--vgg", action="store_true", help="also time vgg16_netvlad at 240x180")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or 'cpu'}")
    print()
    print("| model | image | tuple | loss | train step (ms) |")
    print("|---|---|---:|---|---:|")
    soft = SoftContrastiveLoss()
    for name in ("small_gem", "small_netvlad"):
        for tuple_size in (13, 25):
            radius = (tuple_size - 1) // 2 * 3 + 1
            triplet = TripletLoss(near_radius=radius, far_radius=radius)
            for label, loss in (("soft", soft), ("triplet", triplet)):
                ms = train_step_ms(name, (120, 90), tuple_size, loss, args.repeats)
                print(f"| {name} | 120x90 | {tuple_size} | {label} | {ms:.1f} |")
    if args.vgg:
        ms = train_step_ms("vgg16_netvlad", (240, 180), 25, soft, max(2, args.repeats // 10))
        print(f"| vgg16_netvlad | 240x180 | 25 | soft | {ms:.1f} |")
    print()
    print("| model | image | batch | extraction (images/s) |")
    print("|---|---|---:|---:|")
    for name in ("raw_pixels", "small_gem", "small_netvlad"):
        rate = extraction_rate(name, (120, 90), 64, args.repeats)
        print(f"| {name} | 120x90 | 64 | {rate:.0f} |")
    if args.vgg:
        rate = extraction_rate("vgg16_netvlad", (240, 180), 16, max(2, args.repeats // 10))
        print(f"| vgg16_netvlad | 240x180 | 16 | {rate:.1f} |")


if __name__ == "__main__":
    main()
