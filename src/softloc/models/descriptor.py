"""The descriptor model: backbone + pooling + optional PCA-whitening, built by name.

Contract (timm / deep-vg): ``forward_features(x) -> (B, C, H, W)`` is the last convolutional
feature map (the Grad-CAM target), ``forward_head(features) -> (B, D)`` pools it, and
``forward(x) -> (B, D)`` does both and returns L2-normalised descriptors; ``out_dim`` is D.
``meta`` is a JSON-able dict from which :func:`model_from_meta` rebuilds the same architecture.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softloc.models.backbones import create_backbone
from softloc.models.pooling import create_pooling, get_pooling_factory
from softloc.models.whitening import PCAWhitening

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

META_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelPreset:
    """A named architecture: backbone, pooling with its arguments, input size (width, height)."""

    backbone: str
    pooling: str
    pooling_kwargs: Mapping[str, Any] = field(default_factory=dict)
    image_size: tuple[int, int] = (240, 180)


_PRESETS: Mapping[str, ModelPreset] = {
    # The paper's model: VGG16 conv5_3 + NetVLAD(64), 240 x 180 images.
    "vgg16_netvlad": ModelPreset("vgg16", "netvlad", {"num_clusters": 64}),
    "vgg16_gem": ModelPreset("vgg16", "gem", {"p": 3.0}),
    "resnet18_netvlad": ModelPreset("resnet18", "netvlad", {"num_clusters": 64}),
    "resnet18_gem": ModelPreset("resnet18", "gem", {"p": 3.0}),
    # CPU-friendly models for the synthetic-town demo.
    "small_netvlad": ModelPreset("small", "netvlad", {"num_clusters": 16}, (120, 90)),
    "small_gem": ModelPreset("small", "gem", {"p": 3.0}, (120, 90)),
    # Sanity baseline: mean-removed 32 x 24 thumbnails of the raw pixels (no parameters).
    "raw_pixels": ModelPreset("raw", "thumbnail", {"grid": [24, 32]}, (120, 90)),
}

_OVERRIDABLE = ("backbone", "pooling", "pooling_kwargs", "image_size", "mean", "std")


def available_models() -> list[str]:
    """Preset names accepted by :func:`create_model`, sorted."""
    return sorted(_PRESETS)


class DescriptorModel(nn.Module):
    """Images ``(B, 3, H, W)`` (ImageNet-normalised) -> L2-normalised descriptors ``(B, D)``.

    Built from registry names so that :attr:`meta` can rebuild it. Whitening is fitted
    separately and attached with :meth:`set_whitening`.

    Args:
        backbone: a backbone name (see ``available_backbones()``).
        pooling: a pooling name (see ``available_poolings()``).
        pooling_kwargs: keyword arguments of the pooling (JSON-able); ``dim`` is set here.
        whitening_dim: if given, attach an unfitted :class:`PCAWhitening` of this output size
            (used when rebuilding from ``meta`` before loading a state dict).
        image_size: (width, height) in pixels the images should be resized to.
        mean: per-channel mean used to normalise the images (RGB, in [0, 1] units).
        std: per-channel standard deviation used to normalise the images.
        name: a label recorded in ``meta`` (the preset name, or ``"custom"``).
        weights: optional local weights file for the backbone (see ``create_backbone``).
    """

    whitening: PCAWhitening | None
    # True when the pooling's tensors came from a weights file (`softloc.models.published`):
    # then :meth:`init_pooling` keeps them instead of running k-means.
    pooling_from_weights: bool = False

    def __init__(
        self,
        backbone: str,
        pooling: str,
        *,
        pooling_kwargs: Mapping[str, Any] | None = None,
        whitening_dim: int | None = None,
        image_size: Sequence[int] = (240, 180),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        name: str = "custom",
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self._image_size = _check_image_size(image_size)
        self._mean = _check_channel_stats(mean, "mean", positive=False)
        self._std = _check_channel_stats(std, "std", positive=True)
        self._name = str(name)
        self._backbone_name = backbone
        self._pooling_name = pooling
        self._pooling_kwargs = _resolve_pooling_kwargs(pooling, pooling_kwargs or {})
        self.backbone = create_backbone(backbone, weights=weights)
        channels = int(self.backbone.out_channels)
        self.pool = create_pooling(pooling, dim=channels, **self._pooling_kwargs)
        if getattr(self.pool, "out_dim", None) is None:
            raise ValueError(f"pooling {pooling!r} does not report out_dim")
        self.register_module("whitening", None)
        if whitening_dim is not None:
            self.whitening = PCAWhitening(self.pool.out_dim, int(whitening_dim))

    @property
    def out_dim(self) -> int:
        """D, the descriptor size: the whitening's output size if set, else the pooling's."""
        if self.whitening is not None:
            return int(self.whitening.out_dim)
        return int(self.pool.out_dim)

    @property
    def feature_dim(self) -> int:
        """C, the channel count of :meth:`forward_features`."""
        return int(self.backbone.out_channels)

    @property
    def meta(self) -> dict[str, Any]:
        """JSON-able description sufficient for :func:`model_from_meta` (a fresh copy)."""
        return {
            "format_version": META_FORMAT_VERSION,
            "name": self._name,
            "backbone": self._backbone_name,
            "pooling": self._pooling_name,
            "pooling_kwargs": copy.deepcopy(self._pooling_kwargs),
            "whitening_dim": None if self.whitening is None else int(self.whitening.out_dim),
            "out_dim": self.out_dim,
            "preprocessing": {
                "image_size": list(self._image_size),
                "mean": list(self._mean),
                "std": list(self._std),
            },
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> last convolutional feature map ``(B, C, H', W')``."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}; add a batch "
                "dimension or convert grey images to RGB"
            )
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map ``(B, C, H', W')`` -> L2-normalised descriptors ``(B, D)``."""
        descriptors = self.pool(features)
        if self.whitening is not None:
            descriptors = self.whitening(descriptors)
        return F.normalize(descriptors, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> L2-normalised descriptors ``(B, out_dim)``."""
        return self.forward_head(self.forward_features(x))

    def set_whitening(self, whitening: PCAWhitening | None) -> None:
        """Attach a fitted whitening (moved to this model's device), or remove it with None.

        Raises:
            ValueError: the whitening's input size differs from the pooling's output size.
        """
        if whitening is not None:
            if whitening.in_dim != self.pool.out_dim:
                raise ValueError(
                    f"whitening expects {whitening.in_dim}-d inputs but the pooling gives "
                    f"{self.pool.out_dim}-d descriptors; fit it on this model's pooled outputs "
                    "(with the whitening removed)"
                )
            whitening = whitening.to(_module_device(self))
        self.whitening = whitening

    @torch.no_grad()
    def init_pooling(
        self,
        images_batches: Iterable[torch.Tensor | Mapping[str, torch.Tensor]],
        *,
        features_per_image: int = 100,
        max_features: int = 50_000,
        seed: int = 0,
    ) -> int:
        """Initialise a data-dependent pooling (NetVLAD centroids) from the backbone's features.

        Runs the backbone in eval mode on the batches, samples ``features_per_image`` random
        positions of each feature map, stops at ``max_features`` and calls the pooling's
        ``init_from_features``. Does nothing (and reads no batch) for poolings without it (GeM).

        Args:
            images_batches: image tensors ``(B, 3, H, W)`` or dicts with an ``"image"`` entry.
            features_per_image: local features sampled per image (pytorch-NetVLAD uses 100).
            max_features: stop after this many features.
            seed: seed of the position sampling and of k-means.

        Returns:
            The number of local features used (0 when the pooling needs no initialisation).

        Raises:
            ValueError: no batches, or fewer features than the pooling needs.
        """
        initialise = getattr(self.pool, "init_from_features", None)
        if initialise is None:
            return 0
        if self.pooling_from_weights:
            logger.info("keeping the %s of the weights file (no k-means)", self._pooling_name)
            return 0
        if features_per_image < 1 or max_features < 1:
            raise ValueError(f"need positive counts, got {features_per_image=}, {max_features=}")
        generator = torch.Generator().manual_seed(seed)
        device = _module_device(self)
        was_training = self.training
        self.eval()
        samples: list[torch.Tensor] = []
        total = 0
        try:
            for batch in images_batches:
                images = batch["image"] if isinstance(batch, Mapping) else batch
                local = self.forward_features(images.to(device)).flatten(2).transpose(1, 2)
                positions = local.shape[1]
                take = min(features_per_image, positions)
                for per_image in local.cpu():
                    chosen = torch.randperm(positions, generator=generator)[:take]
                    samples.append(per_image[chosen].float())
                    total += take
                if total >= max_features:
                    break
        finally:
            self.train(was_training)
        if not samples:
            raise ValueError("init_pooling got no image batches")
        features = torch.cat(samples)[:max_features]
        initialise(features, seed=seed)
        return int(features.shape[0])


def create_model(
    name: str, *, weights: str | os.PathLike[str] | None = None, **overrides: Any
) -> DescriptorModel:
    """Build a :class:`DescriptorModel` from a named preset.

    Args:
        name: one of :func:`available_models`.
        weights: optional local weights file (never downloaded): a backbone state dict, or a
            published model (NetVLAD authors' .mat, pytorch-NetVlad checkpoint, torchvision,
            softloc model file), whose NetVLAD then fills the preset's too; its whitening is
            not attached (training fits its own). See `softloc.models.published`.
        **overrides: any of ``backbone``, ``pooling``, ``pooling_kwargs``, ``image_size``,
            ``mean``, ``std``. ``pooling_kwargs`` are merged into the preset's unless the
            pooling itself is overridden, in which case the preset's are dropped.

    Raises:
        ValueError: unknown preset or override.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; known models: {available_models()}")
    if weights is not None:
        from softloc.models.published import model_from_weights

        return model_from_weights(weights, name, with_whitening=False, **overrides)
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise ValueError(f"cannot override {unknown} of model {name!r}; allowed: {_OVERRIDABLE}")
    preset = _PRESETS[name]
    pooling = overrides.get("pooling", preset.pooling)
    base_kwargs = dict(preset.pooling_kwargs) if pooling == preset.pooling else {}
    pooling_kwargs = {**base_kwargs, **dict(overrides.get("pooling_kwargs") or {})}
    return DescriptorModel(
        overrides.get("backbone", preset.backbone),
        pooling,
        pooling_kwargs=pooling_kwargs,
        image_size=overrides.get("image_size", preset.image_size),
        mean=overrides.get("mean", IMAGENET_MEAN),
        std=overrides.get("std", IMAGENET_STD),
        name=name if not overrides else f"{name}+custom",
        weights=weights,
    )


def model_from_meta(meta: Mapping[str, Any]) -> DescriptorModel:
    """Rebuild the architecture described by ``DescriptorModel.meta`` (random weights).

    The whitening, if any, is an unfitted placeholder of the recorded size: load the state dict
    afterwards (``softloc.models.load_model`` does both).

    Raises:
        ValueError: missing fields, a newer format, or an ``out_dim`` that does not match.
    """
    required = ("backbone", "pooling", "pooling_kwargs", "whitening_dim", "preprocessing")
    missing = [key for key in required if key not in meta]
    if missing:
        raise ValueError(f"model meta lacks {missing}; it must come from DescriptorModel.meta")
    version = int(meta.get("format_version", META_FORMAT_VERSION))
    if version > META_FORMAT_VERSION:
        raise ValueError(
            f"model meta format {version} is newer than this softloc understands "
            f"({META_FORMAT_VERSION}); upgrade softloc"
        )
    preprocessing = meta["preprocessing"]
    model = DescriptorModel(
        meta["backbone"],
        meta["pooling"],
        pooling_kwargs=meta["pooling_kwargs"],
        whitening_dim=meta["whitening_dim"],
        image_size=preprocessing["image_size"],
        mean=preprocessing["mean"],
        std=preprocessing["std"],
        name=meta.get("name", "custom"),
    )
    if "out_dim" in meta and int(meta["out_dim"]) != model.out_dim:
        raise ValueError(
            f"model meta says out_dim={meta['out_dim']} but the rebuilt model has "
            f"{model.out_dim}; the meta was edited or comes from an incompatible version"
        )
    return model


def _resolve_pooling_kwargs(pooling: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """All keyword arguments of the pooling, defaults filled in, checked to be JSON-able."""
    factory = get_pooling_factory(pooling)
    if "dim" in kwargs:
        raise ValueError("pooling_kwargs must not set 'dim': it is the backbone's channel count")
    try:
        bound = inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        raise ValueError(
            f"invalid pooling_kwargs {dict(kwargs)} for {pooling!r}: {error}"
        ) from None
    bound.apply_defaults()
    resolved = {k: v for k, v in bound.arguments.items() if k != "dim"}
    try:
        json.dumps(resolved)
    except TypeError as error:
        raise ValueError(f"pooling_kwargs must be JSON-able, got {resolved}: {error}") from None
    return resolved


def _check_image_size(size: Sequence[int]) -> tuple[int, int]:
    values = tuple(size)
    if len(values) != 2 or not all(isinstance(v, numbers.Integral) and v > 0 for v in values):
        raise ValueError(f"image_size must be (width, height) positive ints, got {size!r}")
    return (int(values[0]), int(values[1]))


def _check_channel_stats(
    values: Sequence[float], label: str, positive: bool
) -> tuple[float, float, float]:
    numbers = tuple(float(v) for v in values)
    if len(numbers) != 3 or (positive and min(numbers) <= 0):
        rule = "three positive numbers" if positive else "three numbers"
        raise ValueError(f"{label} must be {rule} (R, G, B), got {values!r}")
    return (numbers[0], numbers[1], numbers[2])


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")
