"""Where the pure influence formulas' near weight first becomes exactly 0, per dtype.

Usage::

    python benchmarks/losses/cutoffs.py [--device cpu|cuda] [--town DIR] [--tuples N]

For the sigmoid (0.8, 15 m) and tanh (15 m) influence functions without a cut-off
(``near_cutoff=inf``), bisects the smallest distance (to 1 mm) at which ``w_near`` is exactly
0 in float32 and float64 on the given device, and prints it next to the explicit default
``near_cutoff`` that softloc uses instead (docs/losses.md, "Near cut-off"). With ``--town``,
also the share of training tuples (demo preset, seed 0) holding a pair in each band between
the explicit cut-off and torch float32's first 0: the tuples whose float32 loss the explicit
cut-off changes.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from softloc.losses import SigmoidInfluence, TanhInfluence


def first_zero(influence, dtype: torch.dtype, device: str, high: float = 5000.0) -> float:
    """Smallest distance (metres, to 1 mm) where ``influence``'s w_near is exactly 0."""

    def is_zero(d: float) -> bool:
        w_near, _ = influence(torch.tensor([d], dtype=dtype, device=device))
        return w_near.item() == 0.0

    if not is_zero(high):
        return math.inf
    low = 0.0
    while high - low > 1e-3:
        middle = 0.5 * (low + high)
        low, high = (low, middle) if is_zero(middle) else (middle, high)
    return high


def tuple_shares(town: str, bands: dict[str, tuple[float, float]], count: int) -> dict:
    """Share of ``count`` demo-preset training tuples with a pair in each band (metres)."""
    import numpy as np

    from softloc.config import load_config
    from softloc.data.places import read_places
    from softloc.data.tuples import TupleSampler

    config = load_config("demo", [f"data.root={town}"])
    places = read_places(town)
    train = places.subset(places.split == "train")
    sampler = TupleSampler(train, config.tuples, config.data.reference_traversal)
    rng = np.random.default_rng(0)
    hits = dict.fromkeys(bands, 0)
    for _ in range(count):
        distances = sampler.sample(rng).distances
        pairs = distances[np.triu_indices(len(distances), 1)]
        for name, (low, high) in bands.items():
            hits[name] += bool(np.any((pairs >= low) & (pairs < high)))
    return {name: hits[name] / count for name in bands}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--town", help="dataset folder: also count tuples with such pairs")
    parser.add_argument("--tuples", type=int, default=3000)
    args = parser.parse_args(argv)
    bands = {}
    print(f"torch {torch.__version__}, device {args.device}")
    print("| influence | float32 first 0 (m) | float64 first 0 (m) | softloc near_cutoff (m) |")
    print("|---|---:|---:|---:|")
    for name, pure, default in (
        ("sigmoid(0.8, 15)", SigmoidInfluence(near_cutoff=math.inf), SigmoidInfluence()),
        ("tanh(15)", TanhInfluence(near_cutoff=math.inf), TanhInfluence()),
    ):
        f32 = first_zero(pure, torch.float32, args.device)
        f64 = first_zero(pure, torch.float64, args.device)
        print(f"| {name} | {f32:.1f} | {f64:.1f} | {default.near_cutoff:.2f} |")
        bands[name] = (default.near_cutoff, f32)
    if args.town:
        for name, share in tuple_shares(args.town, bands, args.tuples).items():
            low, high = bands[name]
            print(f"{name}: {100 * share:.1f} % of {args.tuples} demo tuples hold a pair in "
                  f"[{low:.2f}, {high:.1f}) m")
    return 0


if __name__ == "__main__":
    sys.exit(main())
