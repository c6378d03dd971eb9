"""The Trainer: tuples in, a trained descriptor model out, with checkpoints and resume.

A run is a folder: ``config.yaml`` (the resolved configuration), ``train_log.csv`` (loss and
learning rate), ``val_log.csv`` (validation top-1 accuracy), ``checkpoints/`` and, when the run
is finished, ``model.safetensors`` + ``model.json``. Every tuple is drawn from a random
generator seeded with (seed, step), so a run resumed from a checkpoint repeats exactly what the
uninterrupted run would have done.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from softloc.checkpoints import (
    list_checkpoints,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from softloc.config import RunConfig, config_to_dict, save_config
from softloc.data.images import ImageStore
from softloc.data.places import PlaceTable, read_places
from softloc.data.tuples import TupleSampler
from softloc.evaluation.metrics import topn_accuracy
from softloc.extract import extract_descriptors, image_store
from softloc.index import DescriptorIndex
from softloc.losses import create_influence, create_loss
from softloc.models import DescriptorModel, create_model, fit_pca_whitening, save_model

logger = logging.getLogger(__name__)

FINAL_MODEL = "model.safetensors"


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, missing data); the message says why."""


@dataclass
class ValidationSet:
    """Held-out reference and query rows for periodic top-1 checks."""

    reference: np.ndarray
    queries: np.ndarray


def seed_everything(seed: int) -> None:
    """Seed torch's generators (the library itself draws only from explicit numpy generators)."""
    torch.manual_seed(seed)


def build_loss(config: RunConfig) -> torch.nn.Module:
    """The configured loss module (the soft loss gets its influence function injected)."""
    options = dict(config.loss.options)
    if config.loss.name == "soft_contrastive":
        options.setdefault(
            "influence",
            create_influence(config.loss.influence, **config.loss.influence_options),
        )
    elif config.loss.name == "triplet":
        options.setdefault("near_radius", config.tuples.near_radius)
        options.setdefault("far_radius", config.tuples.far_radius)
    return create_loss(config.loss.name, **options)


def learning_rate(config: RunConfig, step: int) -> float:
    """Learning rate at ``step``: multiplied by ``lr_decay`` after every epoch."""
    epoch = step // config.train.steps_per_epoch
    return config.train.lr * config.train.lr_decay**epoch


class Trainer:
    """Trains one descriptor model as configured and writes its run folder.

    Args:
        config: the validated run configuration.
        out: the run folder (created if missing).
        places: the dataset's places; read from ``config.data.root`` when omitted.
        progress: show a progress bar.
    """

    def __init__(
        self,
        config: RunConfig,
        out: str | os.PathLike[str],
        places: PlaceTable | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.out = Path(out)
        self.progress = progress
        self.places = places if places is not None else read_places(config.data.root)
        self.train_rows = np.flatnonzero(self.places.split == "train")
        self.train_places = self.places.subset(self.train_rows)
        if len(self.train_places) == 0:
            raise TrainingError(
                f"{self.places.root}: no places with split 'train'; the dataset needs a "
                "training region"
            )
        self._store: ImageStore | None = None
        self.sampler = TupleSampler(
            self.train_places, config.tuples, config.data.reference_traversal
        )
        self.loss_fn = build_loss(config)
        self.validation = self._validation_set()

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def _validation_set(self) -> ValidationSet | None:
        cfg = self.config
        if cfg.train.val_every == 0:
            return None
        is_val = self.places.split == "val"
        is_ref = self.places.traversal == cfg.data.reference_traversal
        reference = np.flatnonzero(is_val & is_ref)
        queries = np.flatnonzero(is_val & ~is_ref)
        if len(reference) == 0 or len(queries) == 0:
            logger.warning("no 'val' reference and queries: periodic validation is off")
            return None
        rng = np.random.default_rng([cfg.train.seed, 7])
        if len(queries) > cfg.train.val_queries:
            queries = np.sort(rng.choice(queries, cfg.train.val_queries, replace=False))
        return ValidationSet(reference=reference, queries=queries)

    @property
    def store(self) -> ImageStore:
        """Images of every place at the model's input size (set when a model is attached)."""
        if self._store is None:
            raise TrainingError("no model attached yet: call initial_model() or run() first")
        return self._store

    def _attach_store(self, model: DescriptorModel) -> ImageStore:
        """Create the image store at the model's input size, unless it already exists."""
        if self._store is None:
            paths = [self.places.image_path(i) for i in range(len(self.places))]
            self._store = image_store(model, paths, cache=self.config.data.cache_images)
        return self._store

    def initial_model(self) -> DescriptorModel:
        """The untrained model of this run: seeded initialisation, pooling initialised."""
        cfg = self.config
        seed_everything(cfg.train.seed)
        options = dict(cfg.model.options)
        if cfg.data.image_width is not None:
            options["image_size"] = (cfg.data.image_width, cfg.data.image_height)
        model = create_model(cfg.model.name, weights=cfg.model.weights, **options)
        self._attach_store(model)
        rng = np.random.default_rng([cfg.train.seed, 1])
        sample = rng.choice(self.train_rows, min(256, len(self.train_rows)), replace=False)
        model.init_pooling(self.store.batch(sample[i : i + 64]) for i in range(0, len(sample), 64))
        return model

    def validate(self, model: torch.nn.Module) -> float:
        """Top-1 accuracy of the held-out queries within ``val_threshold`` metres."""
        if self.validation is None:
            return float("nan")
        ref = extract_descriptors(model, self.store, self.validation.reference)
        qry = extract_descriptors(model, self.store, self.validation.queries)
        index = DescriptorIndex(ref.shape[1])
        index.add(ref)
        _, found = index.search(qry, 1)
        xy = self.places.xy
        accuracy = topn_accuracy(
            xy[self.validation.queries],
            xy[self.validation.reference],
            found,
            [self.config.train.val_threshold],
        )
        return float(accuracy[0, 0])

    def run(self, resume: bool = False) -> Path:
        """Train, checkpointing as configured; return the final model file.

        Args:
            resume: continue from the last complete checkpoint in the run folder.
        """
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out / "config.yaml")
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        start = 0
        checkpoints = list_checkpoints(self.checkpoint_dir) if resume else []
        if checkpoints:
            model, sidecar = load_checkpoint(checkpoints[-1])
            self._attach_store(model)
            optimizer = self._optimizer(model)
            restore_optimizer(checkpoints[-1], optimizer)
            start = int(sidecar["extra"]["step"])
            logger.info("resuming %s from step %d", self.out, start)
        else:
            if resume:
                logger.info("no checkpoint in %s: starting from scratch", self.checkpoint_dir)
            model = self.initial_model()
            optimizer = self._optimizer(model)
        train_log = _CsvLog(self.out / "train_log.csv", ["step", "loss", "lr", "seconds"], start)
        val_log = _CsvLog(self.out / "val_log.csv", ["step", "top1"], start)
        if start == 0 and self.validation is not None:
            val_log.write([0, self.validate(model)])
        model.train()
        bar = tqdm(
            range(start, cfg.train.steps),
            initial=start,
            total=cfg.train.steps,
            desc=f"train {cfg.loss.name}",
            disable=not self.progress,
            unit="step",
        )
        began = time.perf_counter()
        running = None
        for step in bar:
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = self.train_step(model, optimizer, step)
            running = loss if running is None else 0.98 * running + 0.02 * loss
            done = step + 1
            if done % cfg.train.log_every == 0:
                train_log.write([done, loss, lr, time.perf_counter() - began])
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.1e}")
            if self.validation is not None and cfg.train.val_every and (
                done % cfg.train.val_every == 0
            ):
                top1 = self.validate(model)
                val_log.write([done, top1])
                bar.set_postfix(loss=f"{running:.4f}", val_top1=f"{top1:.3f}")
            if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
                save_checkpoint(
                    self.checkpoint_dir,
                    done,
                    model,
                    optimizer,
                    extra={"config": config_to_dict(cfg)},
                    keep=cfg.train.keep_checkpoints,
                )
        bar.close()
        return self.finish(model)

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            model.parameters(), lr=self.config.train.lr, weight_decay=self.config.train.weight_decay
        )

    def train_step(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int
    ) -> float:
        """One optimisation step on the tuple of ``step``; returns the loss value."""
        rng = np.random.default_rng([self.config.train.seed, 2, step])
        tup = self.sampler.sample(rng)
        images = self.store.batch(self.train_rows[tup.indices])
        distances = torch.from_numpy(tup.distances).float()
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(model(images), distances)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite loss {loss.item()} at step {step}; lower train.lr or check the "
                "data (the last checkpoint is kept; fix and rerun with --resume)"
            )
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def finish(self, model: DescriptorModel, path: str | os.PathLike[str] | None = None) -> Path:
        """Fit the PCA-whitening if configured and write the model (default: the run's final
        model file)."""
        cfg = self.config
        if cfg.model.whitening_dim is not None:
            rng = np.random.default_rng([cfg.train.seed, 3])
            rows = rng.choice(self.train_rows, min(2000, len(self.train_rows)), replace=False)
            descriptors = extract_descriptors(
                model, self.store, np.sort(rows), progress=self.progress, desc="whitening"
            )
            model.set_whitening(fit_pca_whitening(descriptors, cfg.model.whitening_dim))
        path = Path(path) if path is not None else self.out / FINAL_MODEL
        save_model(model, path, extra={"config": config_to_dict(cfg), "step": cfg.train.steps})
        logger.info("wrote %s", path)
        return path


class _CsvLog:
    """Append-only CSV log that, on resume, drops the rows written after the resumed step."""

    def __init__(self, path: Path, columns: list[str], start: int) -> None:
        self.path = path
        rows: list[list[str]] = []
        if start > 0 and path.is_file():
            with path.open(newline="") as handle:
                reader = csv.reader(handle)
                next(reader, None)
                rows = [row for row in reader if row and int(row[0]) <= start]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)

    def write(self, row: list[Any]) -> None:
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow(row)
