"""Sequence localization on the town: accuracy (single vs L frames) and cost per frame.

Usage::

    python benchmarks/sequence_speed.py --demo runs/demo [--length 10] [--out DIR]

Accuracy: every map of a demo folder (``runs/demo/maps/<model>``) is evaluated on the town's
test split as `softloc evaluate --sequence L` does (the filter's temperature fitted on the
validation region), giving top-1 at 10 m per condition for single images and for L frames.

Cost: the filter's time per frame (one forward step on the top-20 lattice) against the time
to localize one image on a 10,000-reference flat map: describing it with the demo's model
(batched, from PNG files) plus the map search. Measured interleaved, ``--repeats`` times; the
median of each is reported, and the ratio.

Prints a JSON summary (and writes it to ``--out/sequence.json`` when given).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from softloc.data.places import read_places
from softloc.evaluation.protocol import evaluate_map
from softloc.extract import extract_descriptors, image_store
from softloc.index import DescriptorIndex
from softloc.localize import load_map_model
from softloc.sequence import SequenceConfig, filter_sequence

HARD = ("sunny", "night", "snow")


def accuracy(demo: Path, length: int) -> dict:
    places = read_places(demo / "town")
    out = {}
    for map_dir in sorted(p for p in (demo / "maps").iterdir() if p.is_dir()):
        results = evaluate_map(map_dir, places, progress=False, sequence_lengths=(1, length))
        per = {c: {"single": r["top1"]["10"], f"L{length}": r[f"top1_seq{length}"]["10"]}
               for c, r in results.items()}
        hard = [c for c in HARD if c in per]
        gain = float(np.mean([per[c][f"L{length}"] - per[c]["single"] for c in hard]))
        out[map_dir.name] = {"per_condition": per, "mean_gain_sunny_night_snow": gain}
    return out


def cost(demo: Path, refs: int, repeats: int, frames: int, seed: int = 0) -> dict:
    map_dir = next(p for p in sorted((demo / "maps").iterdir()) if p.is_dir()
                   and (p / "model.safetensors").is_file() and p.name != "raw_pixels")
    model = load_map_model(map_dir)
    places = read_places(demo / "town")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(places), size=frames, replace=False)
    store = image_store(model, [places.image_path(int(i)) for i in rows])
    dim = int(extract_descriptors(model, store, [0]).shape[1])
    ref_desc = rng.normal(size=(refs, dim)).astype(np.float32)
    ref_desc /= np.linalg.norm(ref_desc, axis=1, keepdims=True)
    ref_xy = np.stack([np.arange(refs) * 3.0, np.zeros(refs)], axis=1)
    index = DescriptorIndex(dim, kind="flat")
    index.add(ref_desc)
    config = SequenceConfig()
    per_image, per_step = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        desc = extract_descriptors(model, image_store(model, store.paths))
        scores, cands = index.search(desc.astype(np.float32), 20)
        per_image.append((time.perf_counter() - start) / frames)
        dists = np.maximum(2.0 - 2.0 * scores.astype(np.float64), 0.0)
        start = time.perf_counter()
        filter_sequence(cands, dists, ref_xy, config, timestamps=np.arange(frames, dtype=float))
        per_step.append((time.perf_counter() - start) / frames)
    image_ms = 1e3 * statistics.median(per_image)
    step_ms = 1e3 * statistics.median(per_step)
    return {"references": refs, "frames": frames, "repeats": repeats, "model": map_dir.name,
            "localize_ms_per_image": image_ms, "filter_ms_per_frame": step_ms,
            "filter_share": step_ms / image_ms, "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"))
    parser.add_argument("--length", type=int, default=10)
    parser.add_argument("--refs", type=int, default=10_000)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "length": args.length,
        "accuracy_top1_10m": accuracy(args.demo, args.length),
        "cost": cost(args.demo, args.refs, args.repeats, args.frames),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sequence.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
