"""The main job: the whole pipeline on the procedural town, in one run folder.

Generates the town, trains the soft contrastive model and the triplet baseline with the same
budget, keeps the untrained network and raw pixels as sanity rows, builds one map per model,
evaluates every condition and writes the table, the curves and the configurations. Each step
skips work that is already done, so an interrupted demo resumes where it stopped.

Run folder::

    OUT/town/                    the dataset (images + places.csv + town.json)
    OUT/runs/<model>/            training runs (config.yaml, logs, checkpoints, model)
    OUT/maps/<model>/            one map per model
    OUT/results.json|md, curves.png, demo.yaml
    OUT/report/                  the HTML report of every model (``softloc report``)
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from softloc.atomic import write_text
from softloc.collapse import marked_name, model_collapse_note
from softloc.config import RunConfig, load_config
from softloc.data.places import PLACES_FILE, read_places
from softloc.data.synthetic import TownConfig, generate_town
from softloc.evaluation.protocol import evaluate_map, write_results
from softloc.localize import build_map
from softloc.models import create_model, save_model
from softloc.report import build_report
from softloc.train import FINAL_MODEL, Trainer

logger = logging.getLogger(__name__)

TOWN_FILE = "town.json"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        seed: seeds the town and every training run.
        town: the procedural town's settings (its seed is replaced by ``seed``).
        base: overrides applied to the ``demo`` training preset for every model.
        losses: model name -> overrides of its own (the loss and its learning rate).
        map_spacing: references kept at least this many metres apart in the maps.
        split: the split evaluated.
        report_tsne_points: queries per model in the report's t-SNE picture.
    """

    seed: int = 0
    town: TownConfig = field(default_factory=TownConfig)
    base: tuple[str, ...] = ()
    losses: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "soft_contrastive": ("loss.name=soft_contrastive",),
            # The hardest near image, not PointNetVLAD's closest one: with the closest, the
            # hinge is exactly 0 on about half the town's tuples and the baseline barely trains
            # in the demo's budget (benchmarks/losses/RESULTS.md), which would flatter the soft
            # loss. The benchmark keeps the paper's closest-positive form.
            "triplet": ("loss.name=triplet", "loss.options.positive=hardest"),
        }
    )
    map_spacing: float = 3.0
    split: str = "test"
    report_tsne_points: int = 600


def losses_by_name(names: list[str] | tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Demo ``losses`` entries for registered loss names (each with the preset's settings).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    from softloc.losses import available_losses

    unknown = [name for name in names if name not in available_losses()]
    if unknown:
        raise ValueError(
            f"unknown loss {unknown[0]!r}; known losses: {', '.join(available_losses())}"
        )
    return {name: (f"loss.name={name}",) for name in names}


def quick_config(seed: int = 0) -> DemoConfig:
    """A tiny demo (short town, a few steps) that exercises every step in well under a minute."""
    return DemoConfig(
        seed=seed,
        town=TownConfig(seed=seed, width=48, height=36, route_length=1000.0),
        report_tsne_points=150,
        base=(
            "train.steps=4",
            "train.steps_per_epoch=2",
            "train.checkpoint_every=2",
            "train.val_every=2",
            "train.val_queries=20",
            "model.whitening_dim=16",
            "data.image_width=48",
            "data.image_height=36",
        ),
    )


def _town(out: Path, config: TownConfig, progress: bool):
    """The town dataset in ``out``, generated unless an identical one is already there."""
    stamp = out / TOWN_FILE
    if (out / PLACES_FILE).is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == config.to_dict():
                logger.info("reusing the town in %s", out)
                return read_places(out)
        except (ValueError, OSError):
            pass
    return generate_town(out, config, progress=progress)


def _run_config(demo: DemoConfig, dataset: Path, overrides: tuple[str, ...]) -> RunConfig:
    return load_config(
        "demo",
        [f"data.root={dataset}", f"train.seed={demo.seed}", *demo.base, *overrides],
    )


def run_demo(
    out: str | os.PathLike[str],
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    config: DemoConfig | None = None,
    losses: list[str] | None = None,
) -> str:
    """Run the demo into ``out``; return the Markdown results table.

    Args:
        out: the run folder.
        seed: seeds the town and the training runs.
        quick: a tiny configuration for smoke tests.
        config: full control over what runs (``seed`` and ``quick`` are then ignored).
        losses: registered loss names to train instead of the configured ones (any of
            ``softloc.losses.available_losses()``).
    """
    out = Path(out)
    if config is None:
        config = quick_config(seed) if quick else DemoConfig(seed=seed)
    if losses:
        config = replace(config, losses=losses_by_name(losses))
    config = replace(config, town=replace(config.town, seed=config.seed))
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "demo.yaml", yaml.safe_dump(_plain(asdict(config)), sort_keys=False))
    began = time.perf_counter()
    dataset = out / "town"
    places = _town(dataset, config.town, progress)

    models: dict[str, Path] = {}
    first: Trainer | None = None
    for name, overrides in config.losses.items():
        run_config = _run_config(config, dataset, overrides)
        trainer = Trainer(run_config, out / "runs" / name, places=places, progress=progress)
        first = first or trainer
        models[name] = trainer.run(resume=True)
    if first is not None:
        untrained = out / "runs" / "untrained" / FINAL_MODEL
        if not untrained.is_file():
            first.finish(first.initial_model(), untrained)
        models = {"untrained": untrained, **models}
    raw = out / "runs" / "raw_pixels" / FINAL_MODEL
    if not raw.is_file():
        save_model(create_model("raw_pixels"), raw)
    models = {"raw_pixels": raw, **models}

    results: dict[str, Any] = {}
    for name, model_path in models.items():
        map_dir = build_map(
            model_path,
            places,
            out / "maps" / name,
            split=config.split,
            spacing=config.map_spacing,
            progress=progress,
        )
        results[name] = evaluate_map(map_dir, places, split=config.split, progress=progress)
    minutes = (time.perf_counter() - began) / 60
    title = f"softloc demo (seed {config.seed}): top-N accuracy on the town's test region"
    collapsed = {name: model_collapse_note(path) for name, path in models.items()}
    collapsed = {name: note for name, note in collapsed.items() if note}
    for name, note in collapsed.items():
        # printed, not only logged: the comparison in the table does not hold for this model
        print(f"WARNING: {name} {note}: every image got nearly the same "
              "descriptor, so its row compares a failed run (docs/losses.md, 'Collapse values')")
    marked = {marked_name(name, models[name]): value for name, value in results.items()}
    table = write_results(marked, out, title=title)
    build_report(
        [out / "maps" / name for name in models],
        places,
        out / "report",
        split=config.split,
        results=results,
        seed=config.seed,
        tsne_points=config.report_tsne_points,
        title=f"softloc demo (seed {config.seed})",
        progress=progress,
    )
    logger.info("demo finished in %.1f min; results in %s", minutes, out)
    return table


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, for YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
