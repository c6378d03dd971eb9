"""Where the pure influence formulas' near weight first becomes exactly 0, per dtype.

Usage::

    python benchmarks/losses/cutoffs.py [--device cpu|cuda]

For the sigmoid (0.8, 15 m) and tanh (15 m) influence functions without a cut-off
(``near_cutoff=inf``), bisects the smallest distance (to 1 mm) at which ``w_near`` is exactly
0 in float32 and float64 on the given device, and prints it next to the explicit default
``near_cutoff`` that softloc uses instead (docs/losses.md, "Near cut-off").
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
