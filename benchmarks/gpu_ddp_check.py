"""Training steps per second on 1 and N processes (DDP), and the scaling efficiency: JSON out.

Usage (from the repository root):
    # on the GPU machine: VGG16-NetVLAD at 240 x 180, bf16, channels-last, one GPU per process
    PYTHONPATH=src python benchmarks/gpu_ddp_check.py --work /tmp/ddpcheck [--procs 2]
    # a CPU smoke of the script itself (small_gem at 48 x 36, gloo; no timing meaning)
    PYTHONPATH=src python benchmarks/gpu_ddp_check.py --work /tmp/ddpsmoke --device cpu --steps 2

Every run is a real ``softloc train`` (under ``torchrun --standalone --nproc_per_node=P`` for
P > 1) with ``train.tuples_per_step = N`` for every P, so all runs train the same thing (the
same tuples and gradients) and only the number of processes sharing a step changes. A step's
time is the difference of the wall times of two runs of different lengths over the difference
of their steps (start-up, the pooling's initialisation and the first mining refresh cancel).
The paper's preset otherwise (12 + 12 tuples, hard mining with its 1,000-image cache every 250
steps); validation, whitening and intermediate checkpoints off.

Scaling efficiency of P processes = (seconds per step on 1) / (P x seconds per step on P):
1.0 when P processes share a step perfectly. A machine with fewer GPUs than P skips P (NCCL
takes one GPU per process; two processes on one card are refused by NCCL).
The dataset is a procedural town rendered into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_town(work: Path, size: str, route_length: float) -> Path:
    town = work / f"town_{size}"
    if not (town / "places.csv").is_file():
        subprocess.run([sys.executable, "-m", "softloc", "-q", "town", "--out", str(town),
                        "--size", size, "--route-length", str(route_length),
                        "--workers", str(min(8, os.cpu_count() or 1))], check=True)
    return town


def train_seconds(town: Path, procs: int, steps: int, overrides: list[str]) -> float:
    """Wall time of one ``softloc train`` of ``steps`` steps on ``procs`` processes."""
    launch = [sys.executable, "-m", "softloc"]
    if procs > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc_per_node={procs}", "-m", "softloc"]
    with tempfile.TemporaryDirectory() as out:
        command = [*launch, "-q", "train", "--config", "vgg16_netvlad", "--data", str(town),
                   "--out", f"{out}/run", "--steps", str(steps),
                   *[arg for item in overrides for arg in ("--set", item)],
                   "--set", f"train.checkpoint_every={steps}"]
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - began


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the town")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--procs", type=int, default=None,
                        help="N (default: every visible GPU, at least 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of the short run (the long one runs 4 x as many; default "
                             "20 on cuda)")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no GPU visible: run with --device cpu for a smoke test of the script")
    gpus = torch.cuda.device_count() if cuda else 0
    procs = args.procs or max(2, gpus)
    short = args.steps or 20
    long = 4 * short
    began = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    overrides = [f"train.tuples_per_step={procs}", "train.val_every=0",
                 "model.whitening_dim=null", f"train.device={args.device}"]
    if cuda:
        size = "240x180"
        overrides += ["train.amp=bf16", "train.channels_last=true"]
    else:  # the smoke: a small net, small images, small tuples and cache
        size = "48x36"
        overrides += ["model.name=small_gem", "data.image_width=48", "data.image_height=36",
                      "tuples.n_near=4", "tuples.n_far=4", "mining.cache_size=64"]
    town = make_town(args.work, size, 900.0)  # >= 819 m: three regions
    summary: dict[str, object] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "gpus": gpus,
        "torch": torch.__version__, "cpu_cores": os.cpu_count(), "tuples_per_step": procs,
        "steps": [short, long], "model": "vgg16_netvlad" if cuda else "small_gem (smoke)",
    }
    per_step: dict[int, float] = {}
    for p in sorted({1, procs}):
        if cuda and p > gpus:
            summary[f"skipped_{p}"] = f"{p} processes need {p} GPUs; this machine has {gpus}"
            continue
        a = train_seconds(town, p, short, overrides)
        b = train_seconds(town, p, long, overrides)
        per_step[p] = (b - a) / (long - short)
    summary["seconds_per_step"] = {str(p): s for p, s in per_step.items()}
    summary["steps_per_second"] = {str(p): 1.0 / s for p, s in per_step.items() if s > 0}
    if 1 in per_step and procs in per_step and procs > 1 and per_step[procs] > 0:
        summary["scaling_efficiency"] = per_step[1] / (procs * per_step[procs])
    summary["seconds"] = time.perf_counter() - began
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
