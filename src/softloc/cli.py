"""The ``softloc`` command: thin sub-commands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("softloc")


def _cmd_town(args: argparse.Namespace) -> int:
    from softloc.data.synthetic import TownConfig, generate_town

    width, height = args.width, args.height
    if args.size:
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            message = f"--size {args.size!r} must look like WIDTHxHEIGHT, e.g. 120x90"
            raise ValueError(message) from None
    config = TownConfig(
        seed=args.seed,
        width=width,
        height=height,
        route_length=args.route_length,
    )
    table = generate_town(args.out, config, progress=not args.quiet, workers=args.workers)
    print(f"wrote {len(table)} images to {args.out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from softloc.config import load_config
    from softloc.train import Trainer

    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.root={args.data}")
    if args.loss:
        overrides.append(f"loss.name={args.loss}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    config = load_config(args.config, overrides)
    path = Trainer(config, args.out, progress=not args.quiet).run(resume=args.resume)
    print(f"model: {path}")
    return 0


def _cmd_map_build(args: argparse.Namespace) -> int:
    from softloc.data.places import read_places
    from softloc.localize import build_map

    places = read_places(args.data)
    out = build_map(
        args.model,
        places,
        args.out,
        split=args.split,
        traversal=args.traversal,
        spacing=args.spacing,
        index_kind=args.index,
        progress=not args.quiet,
    )
    print(f"map: {out}")
    return 0


def _cmd_localize(args: argparse.Namespace) -> int:
    from softloc.localize import localize_images

    for result in localize_images(args.map, args.images, k=args.top_k):
        print(result.describe())
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from softloc.data.places import read_places
    from softloc.evaluation.protocol import evaluate_maps

    places = read_places(args.data)
    maps = {Path(m).name: Path(m) for m in args.map}
    table = evaluate_maps(maps, places, args.out, split=args.split, progress=not args.quiet)
    print(table)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from softloc.demo import run_demo

    table = run_demo(
        args.out, seed=args.seed, quick=args.quick, progress=not args.quiet, losses=args.loss
    )
    print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="softloc",
        description="Visual localization by image retrieval with soft contrastive learning.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    town = sub.add_parser("town", help="generate the procedural town dataset")
    town.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    town.add_argument("--seed", type=int, default=0)
    town.add_argument("--width", type=int, default=120, help="image width (pixels)")
    town.add_argument("--height", type=int, default=90, help="image height (pixels)")
    town.add_argument("--size", help="image size as WIDTHxHEIGHT (overrides --width/--height)")
    town.add_argument(
        "--workers", type=int, help="rendering processes (default: one per core, at most 4)"
    )
    town.add_argument("--route-length", type=float, default=2400.0, help="metres per drive")
    town.set_defaults(func=_cmd_town)

    train = sub.add_parser("train", help="train a descriptor model")
    train.add_argument("--config", type=Path, help="YAML config (defaults when omitted)")
    train.add_argument("--out", required=True, type=Path, help="run folder")
    train.add_argument("--data", help="dataset folder (overrides data.root)")
    train.add_argument(
        "--loss",
        help="loss name (overrides loss.name), e.g. soft_contrastive, triplet, quadruplet, "
        "contrastive, multi_similarity, off_the_shelf (all: README, 'Losses')",
    )
    train.add_argument("--steps", type=int, help="overrides train.steps")
    train.add_argument("--seed", type=int, help="overrides train.seed")
    train.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any override, e.g. train.lr=1e-4"
    )
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.set_defaults(func=_cmd_train)

    map_parser = sub.add_parser("map", help="build a map of reference images")
    map_sub = map_parser.add_subparsers(dest="map_command", required=True)
    build = map_sub.add_parser("build", help="descriptors + positions + FAISS index")
    build.add_argument("--model", required=True, type=Path, help="model .safetensors file")
    build.add_argument("--data", required=True, type=Path, help="dataset folder")
    build.add_argument("--out", required=True, type=Path, help="map folder to write")
    build.add_argument("--split", default="test", help="split of the reference images")
    build.add_argument("--traversal", default="reference", help="traversal of the references")
    build.add_argument(
        "--spacing", type=float, default=0.0, help="keep references at least this far apart (m)"
    )
    build.add_argument("--index", default="flat", choices=["flat", "ivf", "ivfpq"])
    build.set_defaults(func=_cmd_map_build)

    localize = sub.add_parser("localize", help="estimate the position of query images")
    localize.add_argument("--map", required=True, type=Path, help="map folder")
    localize.add_argument("--top-k", type=int, default=5)
    localize.add_argument("images", nargs="+", type=Path)
    localize.set_defaults(func=_cmd_localize)

    evaluate = sub.add_parser("evaluate", help="top-N accuracy per condition")
    evaluate.add_argument("--map", required=True, action="append", help="map folder (repeat)")
    evaluate.add_argument("--data", required=True, type=Path, help="dataset folder")
    evaluate.add_argument("--out", required=True, type=Path, help="folder for table and plot")
    evaluate.add_argument("--split", default="test")
    evaluate.set_defaults(func=_cmd_evaluate)

    demo = sub.add_parser("demo", help="the whole pipeline on the procedural town")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="a tiny run for smoke tests")
    demo.add_argument(
        "--loss",
        action="append",
        help="train this loss (repeat for several; default: soft_contrastive and triplet)",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``softloc`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"softloc {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
