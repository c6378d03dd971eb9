"""The Trainer: tuples in, a trained descriptor model out, with checkpoints and resume.

A run is a folder: ``config.yaml`` (the resolved configuration), ``train_log.csv`` (loss and
learning rate), ``val_log.csv`` (validation top-1 accuracy), ``checkpoints/`` and, when the run
is finished, ``model.safetensors`` + ``model.json``. Every tuple is drawn from a random
generator seeded with (seed, step, its index in the step), so a run resumed from a checkpoint
repeats exactly what the uninterrupted run would have done. Under torchrun the ranks share each
step's tuples under DistributedDataParallel and rank 0 alone writes (`softloc.train_ranks`).
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

from softloc import distributed, train_ranks
from softloc.check import bad_images_message, header_check
from softloc.checkpoints import (
    list_checkpoints,
    load_checkpoint,
    load_state,
    restore_optimizer,
    save_checkpoint,
)
from softloc.collapse import COLUMNS as COLLAPSE_COLUMNS
from softloc.collapse import CollapseWatch
from softloc.config import RunConfig, config_to_dict, save_config
from softloc.data.image_cache import store_for_places
from softloc.data.images import ImageStore, normalise
from softloc.data.pipeline import ImagePipeline, Lookahead, resolve_workers
from softloc.data.places import PLACES_FILE, PlaceTable, read_places
from softloc.data.tuples import MiningCache, TrainingTuple, TupleSampler
from softloc.evaluation.metrics import topn_accuracy
from softloc.extract import extract_descriptors, extract_over_ranks
from softloc.index import DescriptorIndex
from softloc.losses import create_loss, loss_options_from_config, loss_trains
from softloc.models import DescriptorModel, create_model, fit_pca_whitening, save_model
from softloc.precision import autocast, grad_scaler
from softloc.run_folder import check_run_folder

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
    """The configured loss module.

    A loss declares the configuration values it needs in its ``from_config`` class attribute
    (e.g. the triplet loss takes ``tuples.near_radius`` and ``tuples.far_radius``, the soft
    loss ``loss.influence`` and ``loss.influence_options``); ``loss.options`` override them.
    """
    options = loss_options_from_config(config.loss.name, config)
    options.update(config.loss.options)
    return create_loss(config.loss.name, **options)


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device: ``"auto"`` picks the GPU when one is visible.

    Raises:
        TrainingError: ``"cuda"`` asked for but no GPU is visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "train.device is 'cuda' but torch sees no GPU; set train.device=cpu or auto"
        )
    return torch.device(name)


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
        self._rows_named = places is None  # rows are places.csv's lines 2, 3, ...
        self.places = places if places is not None else read_places(config.data.root)
        self.train_rows = np.flatnonzero(self.places.split == "train")
        self.train_places = self.places.subset(self.train_rows)
        if len(self.train_places) == 0:
            raise TrainingError(
                f"{self.places.root}: no places with split 'train'; the dataset needs a "
                "training region"
            )
        self._store: ImageStore | None = None
        self._pipeline: ImagePipeline | None = None
        self._feed: Lookahead[tuple[tuple[int, int], TrainingTuple, torch.Tensor]] | None = None
        self._scaler: torch.amp.GradScaler | None = None
        self._forward: tuple[torch.nn.Module, torch.nn.Module] | None = None
        self._ddp: torch.nn.Module | None = None  # the DDP wrapper under torchrun
        self.sampler = TupleSampler(
            self.train_places, config.tuples, config.data.reference_traversal
        )
        self.loss_fn = build_loss(config)
        self.device = train_ranks.rank_device(resolve_device(config.train.device))
        self.validation = self._validation_set()
        self._epoch_anchors: tuple[int, np.ndarray] | None = None
        self._mining: tuple[int, MiningCache] | None = None
        self.collapse = CollapseWatch(self)
        self.loss_fn = self.collapse.wrap_loss(self.loss_fn)

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

    @property
    def pipeline(self) -> ImagePipeline:
        """The image pipeline over :attr:`store` (workers, prefetch, device, normalisation)."""
        if self._pipeline is None:
            raise TrainingError("no model attached yet: call initial_model() or run() first")
        return self._pipeline

    def _attach_store(self, model: DescriptorModel) -> ImageStore:
        """Create the image store (the dataset's image cache at the model's input size, built
        if needed) and its pipeline, unless they already exist."""
        if self._store is None:
            data = self.config.data
            width, height = model.meta["preprocessing"]["image_size"]
            where = None
            if self._rows_named:
                places_file = self.places.root / PLACES_FILE
                where = [f"{places_file}, line {i + 2}" for i in range(len(self.places))]
            workers = resolve_workers(data.workers)
            with distributed.main_first("image cache", self.device):  # rank 0 builds it
                self._store = store_for_places(
                    self.places, (int(width), int(height)), data.cache_images, data.cache_dir,
                    workers, self.progress and distributed.is_main(), where,
                )
            pre = model.meta["preprocessing"]
            self._pipeline = ImagePipeline(
                self._store, workers, data.prefetch, self.device, pre["mean"], pre["std"],
                self.config.train.channels_last,
            )
        return self._store

    def _pooling_batches(self, rows: np.ndarray):  # type: ignore[no-untyped-def]
        """Normalised CPU batches of ``rows`` for the pooling's initialisation."""
        pre = (self.pipeline.mean, self.pipeline.std)
        for i in range(0, len(rows), 64):
            yield normalise(self.pipeline.load(rows[i : i + 64]).cpu(), *pre)

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
        model.init_pooling(self._pooling_batches(sample))
        return model

    def validate(self, model: torch.nn.Module) -> float:
        """Top-1 accuracy of the held-out queries within ``val_threshold`` metres."""
        if self.validation is None:
            return float("nan")
        amp = self.config.train.amp
        # under torchrun each rank describes a block and every rank gets all rows
        ref = extract_over_ranks(model, self.pipeline, self.validation.reference, amp=amp)
        qry = extract_over_ranks(model, self.pipeline, self.validation.queries, amp=amp)
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

    def run(self, resume: bool = False, overwrite: bool = False) -> Path:
        """Train, checkpointing as configured; return the final model file.

        Args:
            resume: continue from the last complete checkpoint in the run folder (refused
                when the configuration changes what that run trains).
            overwrite: replace a run already in the folder (it is deleted first).

        Raises:
            RunFolderError: the folder holds a run and neither ``resume`` nor ``overwrite``
                is given, or ``resume`` changes what it trains (`softloc.run_folder`).
            TrainingError: an image cannot be read (checked before step 1), a model without
                parameters meets a loss that trains, or the loss is not finite.
        """
        cfg = self.config
        train_ranks.check_world(cfg.train.tuples_per_step)  # every rank refuses alike
        train_ranks.check_model_name(cfg.model.name, cfg.model.options)
        plan = check_run_folder(self.out, cfg, resume=resume, overwrite=overwrite)
        self.check_images()
        self.check_trainable()
        distributed.barrier("run folder checked", self.device)  # every rank judged it as found
        if distributed.is_main():  # rank 0 alone writes into the run folder
            plan.apply()
        distributed.barrier("run folder ready", self.device)
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        start = 0
        checkpoints = list_checkpoints(self.checkpoint_dir) if resume else []
        if checkpoints:
            model, sidecar = load_checkpoint(checkpoints[-1])
            self._attach_store(model)
            model.to(self.device)
            optimizer = self._optimizer(model)
            restore_optimizer(checkpoints[-1], optimizer)
            start = int(sidecar["extra"]["step"])
            self._restore_mining(load_state(checkpoints[-1]), model)
            self._restore_scaler(load_state(checkpoints[-1]))
            logger.info("resuming %s from step %d", self.out, start)
        else:
            if resume:
                logger.info("no checkpoint in %s: starting from scratch", self.checkpoint_dir)
            model = self.initial_model().to(self.device)
            optimizer = self._optimizer(model)
        if distributed.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
        self._prepare_device(model, resume=bool(checkpoints))
        if not loss_trains(cfg.loss.name):
            logger.info("loss %r trains nothing: keeping the initial weights", cfg.loss.name)
        train_log = _main_log(self.out / "train_log.csv", ["step", "loss", "lr", "seconds"], start)
        val_log = _main_log(self.out / "val_log.csv", ["step", "top1", *COLLAPSE_COLUMNS], start)
        distributed.barrier("logs ready", self.device)  # the others read val_log after rank 0
        self.collapse.restore(val_log.path)
        if start == 0 and (self.validation is not None or self.collapse.enabled):
            probe = self.collapse.after_step(model, 0, None)
            top1 = self.validate(model) if self.validation is not None else ""
            val_log.write([0, top1, *(probe.cells() if probe else [])])
        model.train()
        trains = loss_trains(cfg.loss.name) and not self.collapse.stop
        last = cfg.train.steps if trains else start
        bar = tqdm(
            range(start, last),
            initial=start,
            total=cfg.train.steps,
            desc=f"train {cfg.loss.name}",
            disable=not (self.progress and distributed.is_main()),
            unit="step",
        )
        began = time.perf_counter()
        running = None
        self._feed = self._tuple_feed(start, last)  # an error in a step leaves it idle
        for step in bar:
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with train_ranks.collective_step(step + 1):  # a dead rank: a clear error, exit 2
                loss = self.train_step(model, optimizer, step)
            probe = self.collapse.after_step(model, step + 1, loss)
            running = loss if running is None else 0.98 * running + 0.02 * loss
            done = step + 1
            if done % cfg.train.log_every == 0:
                train_log.write([done, loss, lr, time.perf_counter() - began])
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.1e}")
            if self.validation is not None and cfg.train.val_every and (
                done % cfg.train.val_every == 0
            ):
                top1 = self.validate(model)
                val_log.write([done, top1, *(probe.cells() if probe else [])])
                bar.set_postfix(loss=f"{running:.4f}", val_top1=f"{top1:.3f}")
            elif probe is not None:
                val_log.write([done, "", *probe.cells()])
            if probe is not None and distributed.main_decides(self.collapse.stop, "collapse"):
                break
            if distributed.is_main() and (
                done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps
            ):
                save_checkpoint(
                    self.checkpoint_dir,
                    done,
                    model,
                    optimizer,
                    extra={"config": config_to_dict(cfg)},
                    keep=cfg.train.keep_checkpoints,
                    state=self._checkpoint_state(),
                )
        if self._feed is not None:
            self._feed.close()
        bar.close()
        if self.collapse.stop:
            model = self.collapse.kept_model().to(self.device)
        return self.finish(model, extra=self.collapse.model_extra())

    def check_images(self) -> None:
        """Stop before step 1 when an image training reads (training and validation rows) is
        missing or broken; the error lists them with their places.csv lines."""
        rows = self.train_rows
        if self.validation is not None:
            rows = np.concatenate([rows, self.validation.reference, self.validation.queries])
        problems = header_check(self.places, rows)
        if problems:
            raise TrainingError(bad_images_message(problems, self.places))

    def check_trainable(self) -> None:
        """Refuse a loss that trains with a model that has no parameters (``raw_pixels``),
        before anything is written. The model is built on the meta device: no memory, no
        weights read."""
        cfg = self.config
        if not loss_trains(cfg.loss.name):
            return
        try:
            with torch.device("meta"):
                probe = create_model(cfg.model.name, **cfg.model.options)
        except Exception:  # noqa: BLE001 - the real build reports its own errors later
            return
        if not list(probe.parameters()):
            raise self._nothing_to_train()

    def _nothing_to_train(self) -> TrainingError:
        return TrainingError(
            f"model {self.config.model.name!r} has no parameters, so loss "
            f"{self.config.loss.name!r} has nothing to train; use --loss off_the_shelf to "
            "write the model file of this baseline"
        )

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        parameters = list(model.parameters())
        if not parameters:
            if loss_trains(self.config.loss.name):
                raise self._nothing_to_train()
            # Nothing is optimised (the loop takes no step): a placeholder keeps one code path.
            parameters = [torch.nn.Parameter(torch.zeros(1))]
        return torch.optim.Adam(
            parameters, lr=self.config.train.lr, weight_decay=self.config.train.weight_decay
        )

    def train_step(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int
    ) -> float:
        """One optimisation step on the ``train.tuples_per_step`` tuples of ``step`` (under
        torchrun, this rank's share of them: `softloc.train_ranks`); returns the step's loss,
        the mean over all its tuples.

        The tuples and their images come prepared ahead by the worker threads when mining is
        off (a tuple is a function of (seed, step, its index) alone), else they are made here.
        Each tuple is back-propagated on its own (the gradients add up), scaled so that the
        gradient is that of the mean loss.
        """
        cfg = self.config.train
        optimizer.zero_grad(set_to_none=True)
        net = self._forward[1] if self._forward is not None and self._forward[0] is model else model
        mine = train_ranks.my_tuples(cfg.tuples_per_step)
        scale = train_ranks.gradient_scale(cfg.tuples_per_step)
        losses, collapse_values = [], []
        for n, index in enumerate(mine):
            prepared = self._take_prepared(step, index)
            if prepared is None:
                mining = self.mining_cache(model, step)
                tup = self._draw_tuple(step, self.anchors_for(step), mining, index)
                host = self.pipeline.load(self.train_rows[tup.indices])
            else:
                tup, host = prepared
            images = self.pipeline.to_device(host)
            distances = torch.from_numpy(tup.distances).float()
            with train_ranks.no_sync(self._ddp, last=n == len(mine) - 1):
                with autocast(self.device, cfg.amp):
                    descriptors = net(images)
                loss = self.loss_fn(descriptors.float(), distances)  # the loss in float32
                scaled = loss if scale == 1 else loss * scale
                if self._scaler is not None:
                    self._scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            losses.append(loss.detach())  # read once after the loop: one device sync a step
            collapse_values.append(getattr(self.loss_fn, "last_collapse_value", None))
        total = sum(torch.stack(losses).double().tolist())  # as float(loss) summed in turn
        value, collapse = train_ranks.step_totals(
            total, collapse_values, cfg.tuples_per_step, self.device, step + 1
        )
        # The same verdict on every rank, from the step's loss, before the optimizer moves
        # anything (a non-finite tuple has been back-propagated, but its gradient is dropped).
        if not np.isfinite(value):
            raise self._non_finite(value, step)
        if hasattr(self.loss_fn, "last_collapse_value"):
            self.loss_fn.last_collapse_value = collapse  # the step's, for the collapse watch
        if self._scaler is not None:
            self._scaler.step(optimizer)
            self._scaler.update()
        else:
            optimizer.step()
        return value

    @staticmethod
    def _non_finite(value: float, step: int) -> TrainingError:
        return TrainingError(
            f"non-finite loss {value} at step {step}; lower train.lr or check the "
            "data (the last checkpoint is kept; fix and rerun with --resume)"
        )

    def _draw_tuple(
        self, step: int, anchors: np.ndarray, mining: MiningCache | None, index: int = 0
    ) -> TrainingTuple:
        """Tuple ``index`` of ``step``: drawn from a generator seeded with (seed, step, index)
        (with (seed, step) for tuple 0, the one tuple of a step by default)."""
        key = [self.config.train.seed, 2, step] + ([index] if index else [])
        rng = np.random.default_rng(key)
        return self.sampler.sample(rng, anchors=anchors, mining=mining)

    def _tuple_feed(
        self, start: int, stop: int
    ) -> Lookahead[tuple[tuple[int, int], TrainingTuple, torch.Tensor]] | None:
        """This rank's tuples and their uint8 images of steps ``start .. stop - 1``, keyed
        (step, index), prepared ``data.prefetch`` tuples ahead by the workers (None when
        mining is on, since a mined tuple needs the model of its step, or without workers)."""
        if self.config.mining.enabled or self.pipeline.pool is None:
            return None
        mine = train_ranks.my_tuples(self.config.train.tuples_per_step)
        keys = [(step, index) for step in range(start, stop) for index in mine]

        def job(key: tuple[int, int]):  # type: ignore[no-untyped-def]
            anchors = self.anchors_for(key[0])  # in the training thread: it caches per epoch

            def prepare() -> tuple[tuple[int, int], TrainingTuple, torch.Tensor]:
                tup = self._draw_tuple(key[0], anchors, None, key[1])
                return key, tup, self.pipeline.load(self.train_rows[tup.indices], False)

            return prepare

        return Lookahead(job, keys, self.pipeline.pool, self.config.data.prefetch)

    def _take_prepared(
        self, step: int, index: int = 0
    ) -> tuple[TrainingTuple, torch.Tensor] | None:
        """The prepared tuple ``index`` of ``step`` from the feed (None without one)."""
        if self._feed is None:
            return None
        prepared = next(self._feed, None)
        if prepared is None or prepared[0] != (step, index):  # not the tuple the feed expected
            self._feed.close()
            self._feed = None
            return None
        return prepared[1], prepared[2]

    def _prepare_device(self, model: DescriptorModel, resume: bool) -> None:
        """Memory format, compiled forward pass and gradient scaler of ``train.*``."""
        cfg = self.config.train
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        wrapped = train_ranks.wrap(model, self.device)  # DDP under torchrun, else model
        self._ddp = wrapped if wrapped is not model else None
        if cfg.compile:
            self._forward = (model, torch.compile(wrapped))
        else:
            self._forward = None if self._ddp is None else (model, wrapped)
        scaler = grad_scaler(self.device, cfg.amp)
        if not (resume and self._scaler is not None and scaler is not None):
            self._scaler = scaler

    def anchors_for(self, step: int) -> np.ndarray:
        """The anchors of the epoch of ``step`` (positions in ``sampler.anchors``), drawn from
        the seed and the epoch alone, so a resumed run draws the same ones."""
        epoch = step // self.config.train.steps_per_epoch
        if self._epoch_anchors is None or self._epoch_anchors[0] != epoch:
            rng = np.random.default_rng([self.config.train.seed, 4, epoch])
            self._epoch_anchors = (epoch, self.sampler.epoch_anchors(rng))
        return self._epoch_anchors[1]

    def mining_cache(self, model: torch.nn.Module, step: int) -> MiningCache | None:
        """The hard-mining cache valid at ``step`` (None when mining is off).

        Refreshed at every multiple of ``mining.refresh_every``: the descriptors, by the
        current model, of ``mining.cache_size`` training images drawn from (seed, step).
        """
        cfg = self.config.mining
        if not cfg.enabled:
            return None
        refreshed = step - step % cfg.refresh_every
        if self._mining is None or self._mining[0] != refreshed:
            rng = np.random.default_rng([self.config.train.seed, 5, refreshed])
            size = min(cfg.cache_size, len(self.train_rows))
            rows = np.sort(rng.choice(len(self.train_rows), size, replace=False))
            began = time.perf_counter()
            # under torchrun each rank describes a block; every rank gets the whole cache
            descriptors = extract_over_ranks(
                model, self.pipeline, self.train_rows[rows], amp=self.config.train.amp
            )
            logger.info(
                "mining refresh at step %d: %d images described in %.2f s",
                refreshed, len(rows), time.perf_counter() - began,
            )
            self._set_mining(refreshed, rows, descriptors, model)
        assert self._mining is not None
        return self._mining[1]

    def _set_mining(
        self, refreshed: int, rows: np.ndarray, descriptors: np.ndarray, model: torch.nn.Module
    ) -> None:
        def describe(row: int) -> np.ndarray:
            rows = self.train_rows[[row]]
            return extract_descriptors(model, self.pipeline, rows, amp=self.config.train.amp)[0]

        cache = MiningCache(rows, descriptors, describe, self.config.mining.hard_fraction)
        self._mining = (refreshed, cache)

    def _mining_state(self) -> dict[str, torch.Tensor] | None:
        """The mining cache as tensors for the checkpoint (None when there is none)."""
        if self._mining is None:
            return None
        refreshed, cache = self._mining
        return {
            "mining.step": torch.tensor([refreshed], dtype=torch.int64),
            "mining.rows": torch.from_numpy(cache.rows.astype(np.int64)),
            "mining.descriptors": torch.from_numpy(cache.descriptors),
        }

    def _checkpoint_state(self) -> dict[str, torch.Tensor] | None:
        """Tensors saved beside a checkpoint: the mining cache and the fp16 gradient scale."""
        state = dict(self._mining_state() or {})
        if self._scaler is not None:
            scaler = self._scaler.state_dict()
            state["amp.scale"] = torch.tensor([float(scaler.get("scale", 1.0))])
            state["amp.growth_tracker"] = torch.tensor([int(scaler.get("_growth_tracker", 0))])
        return state or None

    def _restore_scaler(self, state: dict[str, torch.Tensor]) -> None:
        """Take back the fp16 gradient scale saved with a checkpoint (when amp is fp16)."""
        scaler = grad_scaler(self.device, self.config.train.amp)
        if scaler is not None and "amp.scale" in state:
            values = scaler.state_dict()
            values.update(
                scale=float(state["amp.scale"][0]),
                _growth_tracker=int(state["amp.growth_tracker"][0]),
            )
            scaler.load_state_dict(values)
        self._scaler = scaler

    def _restore_mining(self, state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
        """Take back the mining cache saved with a checkpoint (if mining is on and it has one;
        otherwise the cache is recomputed at the next step, and the run is no longer
        bit-identical to an uninterrupted one)."""
        self._mining = None
        if not self.config.mining.enabled:
            return
        if "mining.step" not in state:
            logger.warning("the checkpoint has no mining cache: recomputing it on resume")
            return
        self._set_mining(
            int(state["mining.step"][0]),
            state["mining.rows"].numpy(),
            state["mining.descriptors"].numpy(),
            model,
        )

    def finish(
        self,
        model: DescriptorModel,
        path: str | os.PathLike[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Fit the PCA-whitening if configured and write the model (default: the run's final
        model file); ``extra`` adds to (or overrides) the sidecar's ``config`` and ``step``."""
        cfg = self.config
        if cfg.model.whitening_dim is not None:
            rng = np.random.default_rng([cfg.train.seed, 3])
            rows = rng.choice(self.train_rows, min(2000, len(self.train_rows)), replace=False)
            descriptors = extract_over_ranks(
                model, self.pipeline, np.sort(rows), progress=self.progress, desc="whitening"
            )
            model.set_whitening(fit_pca_whitening(descriptors, cfg.model.whitening_dim))
        path = Path(path) if path is not None else self.out / FINAL_MODEL
        extra = {"config": config_to_dict(cfg), "step": cfg.train.steps, **(extra or {})}
        if distributed.is_main():  # under torchrun rank 0 alone writes the model
            save_model(model, path, extra=extra)
            logger.info("wrote %s", path)
        distributed.barrier("model saved", self.device)  # every rank returns once it exists
        return path


def _main_log(path: Path, columns: list[str], start: int) -> _CsvLog:
    """The run's CSV log on rank 0; under torchrun, a log that writes nothing on the others."""
    return _CsvLog(path, columns, start) if distributed.is_main() else _NoLog(path)


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


class _NoLog(_CsvLog):
    """The log of a rank other than 0: it knows its file but writes nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, row: list[Any]) -> None:
        pass
