"""Typed run configuration: dataclasses with documented defaults, YAML in, overrides, YAML out.

A configuration is validated once when it is built and then frozen; the resolved configuration
is saved next to every result so a run can be repeated.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softloc.atomic import write_text

DEVICES = ("cpu", "cuda", "auto")
AMP_MODES = ("off", "bf16", "fp16")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads ``1e-4``, ``5E-5`` and ``1e+3`` as floats.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-4``), so ``lr: 1e-4`` would be
    the string ``"1e-4"``. YAML 1.2 and every user read it as a number; so do we, in config
    files and in ``--set`` values alike.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text as configuration values (see `_YamlLoader`)."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class DataConfig:
    """Where the places table lives and how images are fed to the network.

    Attributes:
        root: dataset folder holding ``places.csv`` (e.g. made by ``softloc town``).
        image_width, image_height: size the images are resized to (pixels); null keeps the
            model preset's input size.
        reference_traversal: traversal whose images form the map (and training anchors).
        cache_images: read training images from the dataset's memory-mapped image cache at
            the model's size, built once (N x W x H x 3 bytes of disk; memory stays flat);
            false decodes every image on every read.
        cache_dir: folder for image caches when the dataset folder is not writable (null:
            ``<root>/cache``).
        workers: threads that read and decode images (null: the cores, at most 8; 0: all
            in the main thread).
        prefetch: batches and training tuples prepared ahead of the network.
    """

    root: str = "town"
    image_width: int | None = None
    image_height: int | None = None
    reference_traversal: str = "reference"
    cache_images: bool = True
    cache_dir: str | None = None
    workers: int | None = None
    prefetch: int = 4

    def __post_init__(self) -> None:
        sizes = (self.image_width, self.image_height)
        if (sizes[0] is None) != (sizes[1] is None):
            raise ConfigError("give both data.image_width and data.image_height, or neither")
        if sizes[0] is not None and min(sizes) < 16:
            raise ConfigError("data.image_width and data.image_height must be >= 16 pixels")
        if (self.workers is not None and self.workers < 0) or self.prefetch < 1:
            raise ConfigError("data.workers must be >= 0 (or null) and data.prefetch >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """Which descriptor network to build.

    Attributes:
        name: a registered model, e.g. ``small_netvlad``, ``vgg16_netvlad``.
        weights: optional local file of pretrained weights (never downloaded): a backbone state
            dict or a published model (docs/models.md, "Published weights").
        whitening_dim: PCA-whitening output dimension fitted after training; None keeps the
            raw pooled descriptor.
        options: extra keyword arguments of the model builder (e.g. ``num_clusters``).
    """

    name: str = "small_netvlad"
    weights: str | None = None
    whitening_dim: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.whitening_dim is not None and self.whitening_dim < 1:
            raise ConfigError("model.whitening_dim must be a positive integer or null")


@dataclass(frozen=True)
class TupleConfig:
    """How training tuples are drawn (the authors' defaults are 12 + 12 within 15 m / 30 deg).

    Attributes:
        n_near: images near the anchor per tuple.
        n_far: images far from the anchor per tuple.
        near_radius: near images lie within this distance of the anchor (metres).
        far_radius: far images lie at least this far from the anchor (metres).
        max_heading_deg: near images look within this angle of the anchor's heading.
        far_spacing: far images of one tuple are at least this far from each other (metres).
        band_fraction: share of far images drawn from the band [far_radius, band_radius], so
            that the tuple holds pairs whose distances fall where soft weights change.
        band_radius: outer radius of that band (metres).
        anchor_spacing: anchors are taken along the reference drive this far apart (metres,
            5 as the authors), from a random offset drawn afresh every epoch; 0 uses every
            reference frame.
    """

    n_near: int = 6
    n_far: int = 6
    near_radius: float = 10.0
    far_radius: float = 15.0
    max_heading_deg: float = 30.0
    far_spacing: float = 10.0
    band_fraction: float = 0.5
    band_radius: float = 40.0
    anchor_spacing: float = 5.0

    def __post_init__(self) -> None:
        if self.n_near < 1 or self.n_far < 1:
            raise ConfigError("tuples.n_near and tuples.n_far must be >= 1")
        if not 0 < self.near_radius <= self.far_radius:
            raise ConfigError("tuples.near_radius must be > 0 and <= tuples.far_radius")
        if self.band_radius < self.far_radius:
            raise ConfigError("tuples.band_radius must be >= tuples.far_radius")
        if not 0.0 <= self.band_fraction <= 1.0:
            raise ConfigError("tuples.band_fraction must lie in [0, 1]")
        if self.far_spacing < 0 or self.anchor_spacing < 0:
            raise ConfigError("tuples.far_spacing and tuples.anchor_spacing must be >= 0")


@dataclass(frozen=True)
class MiningConfig:
    """Hard-example mining from a cache of descriptors (the authors: 1,000 images, refreshed
    every 250 steps, half of the near and half of the far images of a tuple hard).

    The cache holds ``cache_size`` descriptors of random training images: ``cache_size * D * 4``
    bytes in memory and in every checkpoint (1,000 x 32,768-D VGG16-NetVLAD descriptors:
    131 MB; 1,000 x small_netvlad's 2,048-D: 8 MB). Lower ``cache_size`` on large models.

    Attributes:
        enabled: mine hard near and far images (off: every tuple is drawn at random).
        cache_size: images whose descriptors are cached (at most the training set).
        refresh_every: steps between cache refreshes (descriptors of a new random sample).
        hard_fraction: share of a tuple's near images and of its far images that are hard:
            near images of the anchor farthest from it in descriptor space, and far images
            closest to it, among the cached ones.
    """

    enabled: bool = False
    cache_size: int = 1000
    refresh_every: int = 250
    hard_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.cache_size < 1 or self.refresh_every < 1:
            raise ConfigError("mining.cache_size and mining.refresh_every must be >= 1")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ConfigError("mining.hard_fraction must lie in [0, 1]")


@dataclass(frozen=True)
class LossConfig:
    """The training loss, by registered name, with its keyword arguments.

    Attributes:
        name: ``soft_contrastive``, ``triplet`` ...
        influence: influence function of the soft loss (``sigmoid``, ``linear``, ``tanh``,
            ``step``); ignored by losses that take none.
        influence_options: keyword arguments of the influence function, e.g. ``near_cutoff``
            (metres beyond which its near weight is exactly 0; ``.inf`` for none).
        options: keyword arguments of the loss.
    """

    name: str = "soft_contrastive"
    influence: str = "sigmoid"
    influence_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule, checkpoints, logging and validation.

    Attributes:
        steps: total optimisation steps (``tuples_per_step`` tuples each).
        steps_per_epoch: the learning rate is multiplied by ``lr_decay`` after each epoch.
        lr: Adam learning rate.
        lr_decay: factor applied per epoch (0.5 halves it, as the authors do).
        weight_decay: Adam weight decay.
        seed: seeds the network initialisation and every tuple draw.
        checkpoint_every: steps between checkpoints (the last step is always saved).
        keep_checkpoints: how many recent checkpoints to keep on disk.
        val_every: steps between validations (0 disables them).
        val_queries: number of held-out queries used per validation.
        val_threshold: a validation query is correct within this distance (metres).
        log_every: steps between rows of the training log.
        num_threads: torch CPU threads (0 keeps torch's default).
        device: ``"cpu"``, ``"cuda"`` (an error if no GPU is visible) or ``"auto"`` (the GPU
            when there is one) for training and descriptor extraction.
        amp: mixed precision of training and of its extractions: ``off`` (float32),
            ``bf16`` or ``fp16`` (with a gradient scaler); the loss stays float32.
        channels_last: keep the network and its inputs in channels-last memory format
            (faster convolutions on recent GPUs).
        compile: run the training forward pass through ``torch.compile``.
        tuples_per_step: tuples of one optimisation step; its loss is their mean (1, the
            authors' setting). Under torchrun rank r takes tuples r, r+N, ... of each step,
            so it must be at least the number of processes (`softloc.train_ranks`).
    """

    steps: int = 2000
    steps_per_epoch: int = 1000
    lr: float = 1e-4
    lr_decay: float = 0.5
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    val_every: int = 500
    val_queries: int = 200
    val_threshold: float = 10.0
    log_every: int = 10
    num_threads: int = 0
    device: str = "cpu"
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    tuples_per_step: int = 1

    def __post_init__(self) -> None:
        if self.tuples_per_step < 1:
            raise ConfigError(
                f"train.tuples_per_step must be a whole number >= 1 (1: one tuple a step, the "
                f"authors' setting); got {self.tuples_per_step!r}"
            )
        if self.amp not in AMP_MODES:
            raise ConfigError(f"train.amp must be one of {', '.join(AMP_MODES)}; got {self.amp!r}")
        if self.device not in DEVICES:
            choices = ", ".join(DEVICES)
            raise ConfigError(f"train.device must be one of {choices}; got {self.device!r}")
        if self.steps < 1 or self.steps_per_epoch < 1:
            raise ConfigError("train.steps and train.steps_per_epoch must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr must be > 0 and finite, e.g. 1e-4; got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError("train.lr must be > 0 and train.lr_decay in (0, 1]")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(
                f"train.weight_decay must be a finite number >= 0 (0: none); got "
                f"{self.weight_decay}"
            )
        if self.num_threads < 0:
            raise ConfigError(
                f"train.num_threads must be >= 0 (0 keeps torch's default); got {self.num_threads}"
            )
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.log_every < 1:
            raise ConfigError(
                "train.checkpoint_every, train.keep_checkpoints and train.log_every must be >= 1"
            )
        if self.val_every < 0 or self.val_queries < 1:
            raise ConfigError("train.val_every must be >= 0 and train.val_queries >= 1")
        if self.collapse_window < 0 or self.collapse_spread < 0 or self.collapse_loss_tol < 0:
            raise ConfigError(
                "train.collapse_window, train.collapse_spread and train.collapse_loss_tol "
                "must be >= 0"
            )

    # Collapse detection (softloc.collapse), probed at every validation (every checkpoint when
    # validation is off): it fires when the probe images' mean pairwise descriptor distance is
    # below collapse_spread, or the training loss sits within collapse_loss_tol (relative) of
    # the loss's collapse value, at collapse_window probes in a row (0 turns it off).
    # stop_on_collapse: stop then and keep the weights of the last healthy probe.
    collapse_window: int = 2
    collapse_spread: float = 0.01
    collapse_loss_tol: float = 1e-3
    stop_on_collapse: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tuples: TupleConfig = field(default_factory=TupleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a (simple) type annotation, converting ints to floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value.strip())  # e.g. "1e-4" from a YAML 1.1 reader or from Python
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if math.isnan(value):
            raise ConfigError(f"{where}: expected a number, got NaN")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


_NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        section = where.rstrip(".") or "config"
        raise ConfigError(f"{section}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{where}{k}' for k in unknown)}; "
            f"valid keys: {', '.join(f'{where}{k}' for k in known)}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where or 'config'}: {error}") from error


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from nested plain values."""
    return _build(RunConfig, values or {}, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain values of a config dataclass (JSON/YAML-able)."""
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from error
    return path, value


def _check_override_target(text: str, path: list[str], value: Any) -> None:
    """Refuse an override that puts a plain value where the configuration has a section.

    ``train=5`` would otherwise replace the whole ``train`` section, and the error would
    surface at the next override that sets a key inside it (e.g. the ``--steps`` one).
    """
    cls: Any = RunConfig
    for depth, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            return  # inside a free-form mapping (model.options ...): anything goes
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return  # unknown keys are reported, with the valid ones, when the config is built
        cls = hints[part]
        is_last = depth == len(path) - 1
        if is_last and dataclasses.is_dataclass(cls) and not isinstance(value, dict):
            keys = ", ".join(f"{'.'.join(path)}.{f.name}" for f in dataclasses.fields(cls))
            raise ConfigError(
                f"override {text!r}: {'.'.join(path)} is a section, not a value; set one of "
                f"its keys instead ({keys})"
            )


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``values`` with dotted ``key=value`` overrides applied."""
    result = copy.deepcopy(values)
    for text in overrides:
        path, value = parse_override(text)
        _check_override_target(text, path, value)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return result


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate.

    Raises:
        ConfigError: the file is missing or not YAML, or a value is invalid; the message names
            the file and the key.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file() and str(path) in available_presets():
            path = preset_path(str(path))
        if not path.is_file():
            raise ConfigError(
                f"{path}: no such config file or preset; presets: {available_presets()}"
            )
        try:
            loaded = yaml_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        values = loaded or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    file_values = values
    values = apply_overrides(values, overrides or [])
    try:
        return config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(_blame(error, path, file_values, overrides or [])) from error


def _blame(
    error: ConfigError, path: Path | None, file_values: dict[str, Any], overrides: list[str]
) -> str:
    """``error``'s message, prefixed with its source: the first override after which it
    appears (``--set KEY=VALUE``), else the config file."""
    message = str(error)
    for count in range(len(overrides) + 1):
        try:
            config_from_dict(apply_overrides(file_values, overrides[:count]))
        except ConfigError as partial:
            if str(partial) == message:
                if count == 0:
                    return f"{path}: {message}" if path is not None else message
                return f"override {overrides[count - 1]!r}: {message}"
    return f"{path}: {message}" if path is not None else message


def preset_path(name: str) -> Path:
    """File of a configuration preset shipped with softloc (e.g. ``demo``)."""
    return Path(__file__).parent / "configs" / f"{name}.yaml"


def available_presets() -> list[str]:
    """Names of the configuration presets shipped with softloc."""
    return sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.yaml"))


def save_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML, atomically."""
    return write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
