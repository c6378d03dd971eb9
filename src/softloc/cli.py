"""The ``softloc`` command: thin sub-commands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import errno
import logging
import os
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
    from softloc.check import with_places_line
    from softloc.config import load_config
    from softloc.data.images import ImageError
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
    if args.weights is not None:
        overrides.append(f"model.weights={args.weights}")
    config = load_config(args.config, overrides)
    trainer = Trainer(config, args.out, progress=not args.quiet)
    try:
        path = trainer.run(resume=args.resume, overwrite=args.overwrite)
    except ImageError as error:  # a file the start-up check could not judge: name its line
        raise ImageError(with_places_line(str(error), trainer.places)) from error
    from softloc.distributed import is_main

    if is_main():  # under torchrun every rank returns the path; one prints it
        print(f"model: {path}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from softloc.check import check_images, describe_problems
    from softloc.data.places import read_places

    places = read_places(args.data)
    problems = check_images(places, workers=args.workers)
    if problems:
        print(describe_problems(problems, places, limit=len(problems)))
        print(f"{len(problems)} of {len(places)} images cannot be read: replace those files or "
              "drop their rows from places.csv")
        return 1
    print(f"all {len(places)} images of {args.data} decode")
    return 0


def _cmd_cache_build(args: argparse.Namespace) -> int:
    from softloc.data.image_cache import build_dataset_cache, parse_size
    from softloc.data.pipeline import resolve_workers

    files, built = build_dataset_cache(
        args.data, parse_size(args.size), args.cache_dir, resolve_workers(args.workers),
        rebuild=args.rebuild, progress=not args.quiet,
    )
    state = "built" if built else "already valid"
    print(f"image cache {files.data} ({files.data.stat().st_size / 1e9:.2f} GB): {state}")
    return 0


def _cmd_map_build(args: argparse.Namespace) -> int:
    from softloc.data.places import read_places
    from softloc.localize import build_map

    places = read_places(args.data)
    if args.weights is not None:  # a published model, converted for the map's copy
        from softloc.models.published import converted_model_file

        with converted_model_file(args.weights) as model_path:
            out = build_map(model_path, places, args.out, split=args.split,
                            traversal=args.traversal, spacing=args.spacing,
                            index_kind=args.index, progress=not args.quiet,
                            index_options=_index_options(args), source=args.weights)
        print(f"map: {out}")
        return 0
    out = build_map(
        args.model,
        places,
        args.out,
        split=args.split,
        traversal=args.traversal,
        spacing=args.spacing,
        index_kind=args.index,
        progress=not args.quiet,
        index_options=_index_options(args),
        dtype=args.dtype,
    )
    print(f"map: {out}")
    return 0


def _cmd_weights_convert(args: argparse.Namespace) -> int:
    from softloc.data.image_cache import parse_size
    from softloc.models.published import convert_weights

    size = parse_size(args.image_size) if args.image_size else None
    out = convert_weights(args.source, args.to, name=args.model, overwrite=args.overwrite,
                          image_size=size)
    print(f"model: {out}")
    return 0


def _cmd_map_import(args: argparse.Namespace) -> int:
    index_options = _index_options(args)
    if args.hloc is not None:
        from softloc.export.hloc import import_map as import_hloc

        out = import_hloc(args.hloc, args.places, args.out, index_kind=args.index,
                          overwrite=args.overwrite, index_options=index_options,
                          dtype=args.dtype)
    else:
        from softloc.map_import import import_map

        out = import_map(args.descriptors, args.places, args.out, index_kind=args.index,
                         dtype=args.dtype, normalize=args.normalize, overwrite=args.overwrite,
                         index_options=index_options)
    print(f"map: {out}")
    return 0


def _cmd_localize(args: argparse.Namespace) -> int:
    from softloc.atomic import write_text
    from softloc.localize import QueryFailure, expand_image_arguments, localize_all
    from softloc.localize_output import format_outcomes, read_sequence_csv
    from softloc.localizer import SEQUENCE_CANDIDATES, fixes_from_results
    from softloc.mapping import Map
    from softloc.output_folders import check_writable
    from softloc.sequence import SequenceConfig

    if args.out is not None:  # before any work: never replace a file the user did not name
        if args.out.exists() and not args.overwrite:
            raise ValueError(f"{args.out} exists; pass --overwrite to replace it, or choose "
                             "another --out")
        check_writable(args.out.parent)
    timestamps = None
    if args.sequence_csv is not None:
        images, timestamps = read_sequence_csv(args.sequence_csv)
    elif args.images:
        images = expand_image_arguments(args.images)
    else:
        raise ValueError("give query images, or --sequence-csv FILE")
    sequence = None
    if args.sequence or args.sequence_csv is not None:
        sequence = SequenceConfig(temperature=args.temperature, max_speed=args.max_speed,
                                  max_gap=args.max_gap)
    the_map = Map.load(args.map)
    width = max(args.top_k, SEQUENCE_CANDIDATES) if sequence else args.top_k
    outcomes = localize_all(the_map, images, k=width)
    fixes = fixes_from_results(outcomes, the_map, args.top_k, args.estimate,
                               sequence=sequence, timestamps=timestamps)
    text = format_outcomes(fixes, args.format)
    if args.out is not None:
        write_text(args.out, text)
        print(f"{len(fixes)} fix(es) written to {args.out}")
    else:
        sys.stdout.write(text)
    failed = [o for o in outcomes if isinstance(o, QueryFailure)]
    for outcome in failed:
        print(f"softloc localize: error: {outcome.describe()}", file=sys.stderr)
    if failed:
        print(f"softloc localize: {len(failed)} of {len(outcomes)} image(s) could not be "
              "localized", file=sys.stderr)
    return 1 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from softloc.serve.run import serve

    sequence = {"temperature": args.temperature, "max_speed": args.max_speed,
                "max_gap": args.max_gap}
    serve(args.map, host=args.host, port=args.port, workers=args.workers, k=args.top_k,
          estimate=args.estimate, token=args.token, max_upload_mb=args.max_upload_mb,
          max_images=args.max_images, sequence=sequence, session_expiry_s=args.session_expiry,
          batch_wait_ms=args.batch_wait_ms)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from softloc.export.hloc import export_features, export_pairs
    from softloc.output_folders import check_writable

    if args.out.exists() and not args.overwrite:  # before any work
        raise ValueError(f"{args.out} exists; pass --overwrite to replace it, or choose "
                         "another --out")
    check_writable(args.out.parent)
    if args.export_command == "hloc":
        refs, queries = export_features(args.map, args.out, args.queries, as_half=args.as_half)
        print(f"{refs} reference(s) and {queries} query(ies) written to {args.out}")
    else:
        lines = export_pairs(args.map, args.queries, args.num_matched, args.out)
        print(f"{lines} pair(s) written to {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from softloc.data.places import read_places
    from softloc.evaluation.protocol import evaluate_maps, model_names
    from softloc.output_folders import claim_output_folder

    claim_output_folder(args.out, "evaluation")  # before reading anything
    places = read_places(args.data)
    maps = dict(zip(model_names(args.map), map(Path, args.map), strict=True))
    from softloc.distributed import is_main

    table = evaluate_maps(maps, places, args.out, split=args.split, progress=not args.quiet,
                          sequence_lengths=args.sequence or ())
    if is_main():  # under torchrun every rank holds the table; one prints it
        print(table)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from softloc.demo import run_demo

    table = run_demo(
        args.out, seed=args.seed, quick=args.quick, progress=not args.quiet, losses=args.loss
    )
    print(table)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from softloc.prepare import prepare

    candidates = {
        "config": args.config, "drives": args.drives, "models_dir": args.models,
        "split": args.split, "max_db_distance": args.max_db_distance,
        "pitch1_only": args.pitch1_only or None, "cities": args.cities,
        "include_panoramas": args.include_panoramas or None, "images_root": args.images_root,
        "traversal": args.traversal, "condition": args.condition, "regions": args.regions,
        "reference_spacing": args.reference_spacing,
    }
    options = {k: v for k, v in candidates.items() if v is not None}
    result = prepare(args.format, args.source, args.out, max_side=args.max_side,
                     progress=not args.quiet, vg_out=args.vg_out, workers=args.workers,
                     **options)
    dropped = sum(p.rows for p in result.problems)
    print(f"prepared {len(result.table)} images in {result.out} ({result.reused} reused, "
          f"{dropped} rows dropped: see {result.out / 'report.md'})")
    return 0


def _sweep_protocol(args: argparse.Namespace):
    from softloc.evaluation.whitening import WhiteningProtocol

    return WhiteningProtocol(
        dim=None if args.whitening_dim == 0 else args.whitening_dim,
        fit_split=args.whitening_split,
        fit_traversals=tuple(args.whitening_traversal or ()),
    )


def _cmd_sweep(args: argparse.Namespace) -> int:
    from softloc.data.places import read_places

    places = read_places(args.data)
    progress = not args.quiet
    if args.sweep_command == "dimension":
        from softloc.sweeps.dimension import run_dimension_sweep

        table = run_dimension_sweep(
            args.model, places, args.out, dims=args.dims, split=args.split,
            reference_traversal=args.traversal, protocol=_sweep_protocol(args),
            progress=progress,
        )
    elif args.sweep_command == "spacing":
        from softloc.sweeps.spacing import run_spacing_sweep

        table = run_spacing_sweep(
            args.model, places, args.out, spacings=args.spacings, split=args.split,
            reference_traversal=args.traversal, protocol=_sweep_protocol(args),
            progress=progress,
        )
    elif args.sweep_command == "sequence":
        from softloc.evaluation.protocol import model_names
        from softloc.sweeps.sequence import run_sequence_sweep

        maps = dict(zip(model_names(args.map), map(Path, args.map), strict=True))
        table = run_sequence_sweep(maps, places, args.out, lengths=args.lengths,
                                   split=args.split, progress=progress)
    elif args.sweep_command == "margin":
        from softloc.sweeps.margin import parse_model_arguments, run_margin_sweep

        table = run_margin_sweep(
            parse_model_arguments(args.model), places, args.out, gaps=args.gaps,
            centre=args.centre, num_anchors=args.anchors, split=args.split, seed=args.seed,
            within=args.within, progress=progress,
        )
    else:
        from softloc.config import load_config
        from softloc.sweeps.sensitivity import parse_tuple_size, run_sensitivity_sweep

        config = load_config(args.config, [*(args.set or []), f"data.root={args.data}"])
        table = run_sensitivity_sweep(
            config, places, args.out, influences=args.influences,
            tuple_sizes=[parse_tuple_size(t) for t in args.tuple_sizes], steps=args.steps,
            split=args.split, protocol=_sweep_protocol(args), progress=progress,
        )
    from softloc.distributed import barrier, is_main

    barrier("sweep written")  # under torchrun every rank returns once rank 0 has written
    if is_main():
        print(table)
        print(f"wrote {args.out}/sweep_{args.sweep_command}.csv, .json, .png")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from softloc.data.places import read_places
    from softloc.explain.failures import write_failures
    from softloc.explain.gradcam import gradcam_row, write_gradcam
    from softloc.explain.movie import write_movie
    from softloc.explain.output import claim_pictures_folder
    from softloc.explain.queries import retrieve
    from softloc.explain.tsne import write_tsne

    claim_pictures_folder(args.out)
    places = read_places(args.data)
    retrievals = [
        retrieve(m, places, args.split, condition=args.condition, progress=not args.quiet)
        for m in args.map
    ]
    if args.picture == "tsne":
        paths = [write_tsne(retrievals, args.out, max_points=args.max_points, seed=args.seed)]
    elif args.picture == "gradcam":
        queries = retrievals[0].queries
        if not 0 <= args.query_index < len(queries):
            raise ValueError(
                f"--query-index {args.query_index} is outside the {len(queries)} queries; "
                f"choose 0 to {len(queries) - 1}"
            )
        i = args.query_index
        rows = [gradcam_row(r.name, r.the_map, r.model, queries.image_path(i), queries.xy[i])
                for r in retrievals]
        path = args.out / f"gradcam_{i}.png"
        paths = [write_gradcam(rows, path, args.threshold, title=str(queries.path[i]))]
        for row in rows:
            print(f"{row.model}: retrieved {row.retrieved_path} at {row.distance_m:.1f} m "
                  f"{row.note}".rstrip())
    elif args.picture == "movie":
        paths = [write_movie(retrievals, args.out, traversal=args.traversal,
                             max_frames=args.max_frames, threshold_m=args.threshold,
                             progress=not args.quiet)]
    else:
        paths = write_failures(retrievals, args.out, count=args.count)
    for path in paths:
        print(path)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from softloc.data.places import read_places
    from softloc.report import build_report

    places = read_places(args.data)
    index = build_report(
        args.runs,
        places,
        args.out,
        split=args.split,
        sweep_dirs=args.sweeps or (),
        spacing=args.spacing,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"report: {index}")
    return 0


def _add_index_options(parser: argparse.ArgumentParser) -> None:
    """The FAISS index options of the commands that write a map."""
    parser.add_argument("--nlist", type=int, help="ivf/ivfpq: cells (default about 4 sqrt(N))")
    parser.add_argument("--nprobe", type=int, help="ivf/ivfpq: cells searched per query (8)")
    parser.add_argument("--nbits", type=int, help="ivfpq: bits per code (8)")
    parser.add_argument("--pq-m", "--m", type=int, dest="pq_m",
                        help="ivfpq: sub-vectors, must divide the dim (16)")
    parser.add_argument("--hnsw-m", type=int, help="hnsw: graph links per reference (32)")
    parser.add_argument("--ef-search", type=int, help="hnsw: candidates per query (64)")


def _index_options(args: argparse.Namespace) -> dict[str, int]:
    """The index options given on the command line, as `Map.build` takes them."""
    given = (("nlist", args.nlist), ("nprobe", args.nprobe), ("nbits", args.nbits),
             ("m", args.pq_m), ("hnsw_m", args.hnsw_m), ("ef_search", args.ef_search))
    return {key: value for key, value in given if value is not None}


def _add_sequence_options(parser: argparse.ArgumentParser) -> None:
    """The sequence filter's options of the commands that localize sequences."""
    parser.add_argument("--temperature", type=float, default=0.05,
                        help="sequence: emission temperature (`softloc evaluate --sequence` "
                             "fits one on the validation region)")
    parser.add_argument("--max-speed", type=float, default=20.0,
                        help="sequence: metres per time unit (per frame without timestamps)")
    parser.add_argument("--max-gap", type=float, default=10.0,
                        help="sequence: a longer time step resets the filter")


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
    train.add_argument("--weights", help="local weights to start from (overrides model.weights): "
                       "a backbone state dict or a published model (docs/models.md)")
    train.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any override, e.g. train.lr=1e-4"
    )
    train.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its last checkpoint (with the same configuration)",
    )
    train.add_argument(
        "--overwrite", action="store_true",
        help="replace the run already in --out (deleted before training starts)",
    )
    train.set_defaults(func=_cmd_train)

    check = sub.add_parser("check", help="decode every image of a dataset; list the bad ones")
    check.add_argument("--data", required=True, type=Path, help="dataset folder (places.csv)")
    check.add_argument("--workers", type=int, help="images decoded at once (default: cores, <= 8)")
    check.set_defaults(func=_cmd_check)

    cache = sub.add_parser("cache", help="the memory-mapped image cache of a dataset")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    cache_build = cache_sub.add_parser(
        "build", help="decode every image once at one size (N x W x H x 3 bytes of disk)"
    )
    cache_build.add_argument("--data", required=True, type=Path, help="dataset folder")
    cache_build.add_argument("--size", required=True, help="WIDTHxHEIGHT, e.g. 240x180")
    cache_build.add_argument("--cache-dir", type=Path, help="cache folder (default DATA/cache)")
    cache_build.add_argument("--workers", type=int, help="decoding threads (default: cores, <= 8)")
    cache_build.add_argument("--rebuild", action="store_true", help="rebuild even if valid")
    cache_build.set_defaults(func=_cmd_cache_build)

    map_parser = sub.add_parser("map", help="build a map of reference images")
    map_sub = map_parser.add_subparsers(dest="map_command", required=True)
    build = map_sub.add_parser("build", help="descriptors + positions + FAISS index")
    model_source = build.add_mutually_exclusive_group(required=True)
    model_source.add_argument("--model", type=Path, help="model .safetensors file")
    model_source.add_argument("--weights", type=Path,
                              help="or a published model file used as it is (NetVLAD .mat, "
                                   "pytorch-NetVlad checkpoint, torchvision; docs/models.md)")
    build.add_argument("--data", required=True, type=Path, help="dataset folder")
    build.add_argument("--out", required=True, type=Path, help="map folder to write")
    build.add_argument("--split", default="test", help="split of the reference images")
    build.add_argument("--traversal", default="reference", help="traversal of the references")
    build.add_argument(
        "--spacing", type=float, default=0.0, help="keep references at least this far apart (m)"
    )
    build.add_argument("--index", default="flat", choices=["flat", "ivf", "ivfpq", "hnsw"])
    build.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                       help="storage of descriptors.npy (float16: half the size)")
    _add_index_options(build)
    build.set_defaults(func=_cmd_map_build)

    imported = map_sub.add_parser(
        "import", help="a map from descriptors computed elsewhere (.npy or hloc HDF5)")
    source = imported.add_mutually_exclusive_group(required=True)
    source.add_argument("--descriptors", type=Path,
                        help=".npy of (N, D) descriptors, row i for places row i")
    source.add_argument("--hloc", type=Path,
                        help="hloc global-feature HDF5 (e.g. global-feats-netvlad.h5); the "
                             "places' paths are the image names in it")
    imported.add_argument("--places", required=True, type=Path,
                          help="places CSV of the N references (image paths relative to it)")
    imported.add_argument("--out", required=True, type=Path, help="map folder")
    imported.add_argument("--overwrite", action="store_true", help="replace an existing map")
    imported.add_argument("--normalize", action="store_true",
                          help="--descriptors: L2-normalise the rows (else they must have norm "
                               "1; hloc descriptors are always normalised)")
    imported.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                          help="storage of descriptors.npy (float16: half the size)")
    imported.add_argument("--index", default="flat", choices=["flat", "ivf", "ivfpq", "hnsw"])
    _add_index_options(imported)
    imported.set_defaults(func=_cmd_map_import)

    weights = sub.add_parser("weights", help="published model weights from local files")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    convert = weights_sub.add_parser(
        "convert", help="a published model (NetVLAD .mat, pytorch-NetVlad, torchvision) as a "
                        "softloc model file")
    convert.add_argument("source", type=Path, help="the weights file (docs/models.md)")
    convert.add_argument("--to", required=True, type=Path, help="OUT.safetensors (+ OUT.json)")
    convert.add_argument("--model", help="preset to fit it into (default: vgg16_netvlad for "
                                         "NetVLAD files, else BACKBONE_gem)")
    convert.add_argument("--image-size", help="WIDTHxHEIGHT the model resizes images to "
                                              "(default: the preset's, 240x180)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    convert.set_defaults(func=_cmd_weights_convert)

    localize = sub.add_parser("localize", help="estimate the position of query images")
    localize.add_argument("--map", required=True, type=Path, help="map folder")
    localize.add_argument("--top-k", type=int, default=5)
    localize.add_argument("images", nargs="*", type=Path,
                          help="query images (a folder stands for the images in it)")
    localize.add_argument("--format", choices=["text", "json", "csv"], default="text",
                          help="output format (json: one object per image)")
    localize.add_argument("--out", type=Path, help="write the output to this file")
    localize.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    localize.add_argument("--estimate", choices=["top1", "weighted"], default="top1",
                          help="top1: the best reference's position; weighted: similarity-"
                               "weighted mean of the top-k within 25 m of it")
    localize.add_argument("--sequence", action="store_true",
                          help="the images are one ordered sequence (a drive): filter them")
    localize.add_argument("--sequence-csv", type=Path,
                          help="CSV with columns image[,timestamp]: an ordered sequence")
    _add_sequence_options(localize)
    localize.set_defaults(func=_cmd_localize)

    serve_parser = sub.add_parser("serve", help="localization over HTTP (docs/serve.md)")
    serve_parser.add_argument("--map", required=True, type=Path, help="map folder")
    serve_parser.add_argument("--host", default="127.0.0.1",
                              help="address to bind (default loopback only)")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--workers", type=int, default=1,
                              help="processes, each with its own copy of the model")
    serve_parser.add_argument("--token", help="require 'Authorization: Bearer TOKEN'")
    serve_parser.add_argument("--max-upload-mb", type=float, default=20.0,
                              help="largest request body (MiB)")
    serve_parser.add_argument("--max-images", type=int, default=32,
                              help="most images per request")
    serve_parser.add_argument("--top-k", type=int, default=5)
    serve_parser.add_argument("--estimate", choices=["top1", "weighted"], default="top1")
    _add_sequence_options(serve_parser)
    serve_parser.add_argument("--session-expiry", type=float, default=600.0,
                              help="sequence: seconds an idle session is kept")
    serve_parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                              help="requests arriving within this wait share a forward (0: off)")
    serve_parser.set_defaults(func=_cmd_serve)

    export = sub.add_parser("export", help="files for other tools (hloc)")
    export_sub = export.add_subparsers(dest="export_command", required=True)
    hloc = export_sub.add_parser("hloc", help="hloc global-feature HDF5 of a map (+ queries)")
    pairs = export_sub.add_parser("pairs", help="hloc retrieval pairs from a map's index")
    for one in (hloc, pairs):
        one.add_argument("--map", required=True, type=Path, help="map folder")
        one.add_argument("--out", required=True, type=Path, help="file to write")
        one.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    hloc.add_argument("--queries", type=Path,
                      help="folder of query images, or a text file with one path per line")
    hloc.add_argument("--as-half", action="store_true", help="store float16, as hloc can")
    pairs.add_argument("--queries", required=True, type=Path,
                       help="folder of query images, or a text file with one path per line")
    pairs.add_argument("--num-matched", type=int, default=10, help="references per query")
    hloc.set_defaults(func=_cmd_export)
    pairs.set_defaults(func=_cmd_export)

    evaluate = sub.add_parser("evaluate", help="top-N accuracy per condition")
    evaluate.add_argument("--map", required=True, action="append", help="map folder (repeat)")
    evaluate.add_argument("--data", required=True, type=Path, help="dataset folder")
    evaluate.add_argument("--out", required=True, type=Path, help="folder for table and plot")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--sequence", type=int, action="append", metavar="L",
                          help="also localize each query drive with the sequence filter over "
                               "windows of L frames (repeat for several L)")
    evaluate.set_defaults(func=_cmd_evaluate)

    prep = sub.add_parser(
        "prepare", help="turn a real dataset into the canonical layout (images + places.csv)"
    )
    prep.add_argument("format", choices=["robotcar", "pittsburgh", "vg", "msls", "csv"])
    prep.add_argument(
        "source", type=Path,
        help="robotcar/vg/msls: dataset folder; pittsburgh: the dbStruct .mat; csv: the CSV",
    )
    prep.add_argument("--out", required=True, type=Path, help="folder to write (resumable)")
    prep.add_argument("--max-side", type=int, default=240, help="long side of cached images")
    prep.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1),
        help="images converted at once (threads; default: one per core, at most 4)",
    )
    prep.add_argument("--vg-out", type=Path, help="also write the VG-benchmark layout there")
    prep.add_argument("--regions", type=Path, help="train/val/test polygons (GeoJSON or CSV)")
    prep.add_argument(
        "--reference-spacing", type=float, help="keep a reference frame every N metres of drive"
    )
    prep.add_argument("--config", help="robotcar: drive labels, e.g. robotcar_paper or a YAML")
    prep.add_argument("--drives", nargs="+", help="robotcar: only these dates")
    prep.add_argument("--models", type=Path, help="robotcar: SDK models/ folder (undistort)")
    prep.add_argument("--split", help="robotcar/csv: split of every row (default test)")
    prep.add_argument(
        "--max-db-distance", type=float,
        help="pittsburgh: drop database images farther than this from every query (e.g. 100)",
    )
    prep.add_argument("--pitch1-only", action="store_true", help="pittsburgh: pitch-1 views")
    prep.add_argument("--cities", nargs="+", help="msls: only these cities")
    prep.add_argument("--include-panoramas", action="store_true", help="msls: keep panoramas")
    prep.add_argument(
        "--images-root", type=Path, help="csv, pittsburgh: folder the image paths are under"
    )
    prep.add_argument("--traversal", help="csv: traversal of rows without one")
    prep.add_argument("--condition", help="csv: condition of rows without one")
    prep.set_defaults(func=_cmd_prepare)

    sweep = sub.add_parser("sweep", help="accuracy against a setting: table + plot")
    sweep_sub = sweep.add_subparsers(dest="sweep_command", required=True)
    sweep_kinds = {
        "dimension": "top-1 at 10 m against the PCA-whitened size (descriptors computed once)",
        "spacing": "top-1 at 10 m against the minimum spacing of references",
        "sensitivity": "train influence function x tuple size, top-1 curves (resumable)",
    }
    for kind, text in sweep_kinds.items():
        one = sweep_sub.add_parser(kind, help=text)
        if kind == "sensitivity":
            one.add_argument("--config", default="demo", help="base training config or preset")
            one.add_argument("--influences", nargs="+", default=["sigmoid", "linear", "tanh"])
            one.add_argument(
                "--tuple-sizes", nargs="+", default=["4/4", "8/8", "12/12"], metavar="N/F"
            )
            one.add_argument("--steps", type=int, help="training steps of every run")
            one.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
        else:
            one.add_argument("--model", required=True, type=Path, help="model .safetensors file")
            one.add_argument("--traversal", default="reference", help="reference traversal")
        if kind == "dimension":
            one.add_argument(
                "--dims", nargs="+", type=int, default=[64, 128, 256, 512, 1024, 2048, 4096]
            )
        if kind == "spacing":
            one.add_argument(
                "--spacings", nargs="+", type=float, default=[0.0, 1.0, 2.0, 5.0, 10.0]
            )
        one.add_argument("--data", required=True, type=Path, help="dataset folder")
        one.add_argument("--out", required=True, type=Path, help="sweep folder")
        one.add_argument("--split", default="test", help="evaluated split")
        one.add_argument(
            "--whitening-dim", type=int, default=256, help="PCA-whitened size (0: no whitening)"
        )
        one.add_argument(
            "--whitening-split", default="train", help="split the whitening is fitted on"
        )
        one.add_argument(
            "--whitening-traversal", action="append", help="fit on this traversal only (repeat)"
        )
        one.set_defaults(func=_cmd_sweep)
    margin = sweep_sub.add_parser(
        "margin", help="Proposition 3.3: achieved descriptor margin against the gap tau2 - tau1"
    )
    margin.add_argument("--model", required=True, nargs="+", metavar="NAME=PATH",
                        help="model .safetensors files (NAME= optional: default its folder)")
    margin.add_argument("--data", required=True, type=Path, help="dataset folder")
    margin.add_argument("--out", required=True, type=Path, help="sweep folder")
    margin.add_argument("--split", default="test", help="split whose images are used")
    margin.add_argument("--gaps", nargs="+", type=float, default=[0.0, 1.0, 2.0, 5.0, 10.0, 20.0])
    margin.add_argument("--centre", type=float, default=15.0, help="(tau1 + tau2) / 2, metres")
    margin.add_argument("--anchors", type=int, default=200, help="anchors sampled in the split")
    margin.add_argument("--seed", type=int, default=0, help="seed of the anchor sample")
    margin.add_argument("--within", choices=["traversal", "all"], default="traversal",
                        help="positives and negatives from the anchor's traversal, or all")
    margin.set_defaults(func=_cmd_sweep)
    seq = sweep_sub.add_parser("sequence", help="top-1 at 10 m against the sequence length")
    seq.add_argument("--map", required=True, action="append", help="map folder (repeat)")
    seq.add_argument("--data", required=True, type=Path, help="dataset folder")
    seq.add_argument("--out", required=True, type=Path, help="sweep folder")
    seq.add_argument("--split", default="test")
    seq.add_argument("--lengths", nargs="+", type=int, default=[1, 2, 5, 10, 20])
    seq.set_defaults(func=_cmd_sweep)

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

    explain = sub.add_parser("explain", help="pictures: t-SNE, Grad-CAM, movie, failures")
    explain.add_argument("picture", choices=["tsne", "gradcam", "movie", "failures"])
    explain.add_argument("--map", required=True, nargs="+", type=Path,
                         help="map folder(s) from `softloc map build`, one per model")
    explain.add_argument("--data", required=True, type=Path, help="dataset folder")
    explain.add_argument("--out", required=True, type=Path, help="folder for the pictures")
    explain.add_argument("--split", default="test")
    explain.add_argument("--condition", help="queries of this condition only")
    explain.add_argument("--query-index", type=int, default=0,
                         help="gradcam: which query (0-based, in traversal then time order)")
    explain.add_argument("--traversal", help="movie: which query drive (default: the first)")
    explain.add_argument("--max-frames", type=int, default=40, help="movie: frame cap")
    explain.add_argument("--max-points", type=int, default=600, help="tsne: queries drawn")
    explain.add_argument("--count", type=int, default=6, help="failures: how many")
    explain.add_argument("--threshold", type=float, default=10.0,
                         help="gradcam/movie: metres within which a retrieval is correct")
    explain.add_argument("--seed", type=int, default=0, help="tsne: seed")
    explain.set_defaults(func=_cmd_explain)

    report = sub.add_parser("report", help="one HTML page comparing models side by side")
    report.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="map folder, training run folder or demo folder")
    report.add_argument("--data", required=True, type=Path, help="dataset folder")
    report.add_argument("--out", required=True, type=Path, help="report folder")
    report.add_argument("--split", default="test")
    report.add_argument("--sweeps", nargs="+", type=Path,
                        help="folders holding sweep_<kind>.csv/.png/.json files")
    report.add_argument("--spacing", type=float, default=0.0,
                        help="reference spacing (m) of maps built for training runs")
    report.add_argument("--seed", type=int, default=0, help="t-SNE seed")
    report.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``softloc`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from softloc.launch import is_main

    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(
        # under torchrun rank 0 tells the progress; the other ranks say only what goes wrong
        level=level if is_main() else max(level, logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        hint = " (the last checkpoint is kept: rerun with --resume)"
        hint = hint if args.command == "train" else ""
        print(f"softloc {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError) as error:
        print(f"softloc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"softloc {args.command}: error: {_describe_os_error(error)}", file=sys.stderr)
        return 2


def _describe_os_error(error: OSError) -> str:
    """``path: reason`` of a failed file operation, with the fix for a full or locked disk."""
    reason = error.strerror or str(error)
    message = reason if error.filename is None else f"{error.filename}: {reason}"
    if error.filename2 is not None:
        message = f"{error.filename} -> {error.filename2}: {reason}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        message += "; free space on that disk (what was complete before is kept)"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        message += "; choose a writable location or fix its permissions"
    elif error.strerror is None:
        message = str(error)
    return message


if __name__ == "__main__":
    sys.exit(main())
