"""Convolutional backbones, built by name, with pretrained weights read only from local files.

Every backbone maps images ``(B, 3, H, W)`` (ImageNet-normalised floats) to a feature map
``(B, C, H', W')`` and exposes ``out_channels`` (C). Weights are never downloaded: pass the path of
a state-dict file you obtained yourself (see ``docs/models.md``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from softloc.registry import Registry

logger = logging.getLogger(__name__)

BackboneFactory = Callable[[], nn.Module]

BACKBONES: Registry[BackboneFactory] = Registry("backbone")

# VGG16 ("configuration D") up to conv5_3: channel counts, "M" = 2x2 max-pool. The last max-pool
# of torchvision's ``features`` is left out, so layer indices (and state-dict keys) match
# torchvision's ``features.0`` ... ``features.28``.
_VGG16_CONV5_3_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class WeightsNotFoundError(FileNotFoundError, ValueError):
    """A pretrained-weights file does not exist (also a ``ValueError`` for uniform handling)."""


register_backbone = BACKBONES.register


def available_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, sorted."""
    return BACKBONES.names()


def create_backbone(name: str, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """Build a backbone by name, randomly initialised or from a local weights file.

    Args:
        name: one of :func:`available_backbones` (``vgg16``, ``vgg16_prerelu``, ``resnet18``,
            ``small``).
        weights: optional path of a ``.pth``/``.pt``/``.bin`` (torch) or ``.safetensors`` state
            dict: either the full torchvision model's (classifier keys are ignored) or this
            backbone's own. ``None`` keeps the random initialisation. Nothing is downloaded.

    Returns:
        The module, with attribute ``out_channels``.

    Raises:
        ValueError: unknown name, unreadable file or keys/shapes that do not match.
        WeightsNotFoundError: ``weights`` does not exist.
    """
    backbone = BACKBONES.get(name)()
    if weights is not None:
        load_backbone_weights(backbone, weights)
    return backbone


class VGG16Conv53(nn.Module):
    """VGG16 convolutional layers up to conv5_3 and its ReLU (stride 16, 512 channels).

    Parameter names equal torchvision's ``vgg16().features`` so its state dicts load unchanged.

    Args:
        final_relu: keep the ReLU after conv5_3 (``vgg16``). NetVLAD crops the network at
            conv5_3 *before* its ReLU (the authors' MatConvNet models, pytorch-NetVlad, hloc):
            that is the ``vgg16_prerelu`` backbone, with the same parameters.
    """

    out_channels = 512
    ignored_weight_prefixes: tuple[str, ...] = ("classifier.",)

    def __init__(self, final_relu: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in _VGG16_CONV5_3_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = int(item)
                layers += [nn.Conv2d(in_channels, out, kernel_size=3, padding=1), nn.ReLU(True)]
                in_channels = out
        if not final_relu:
            layers.pop()
        self.features = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> conv5_3 activations ``(B, 512, H/16, W/16)``."""
        return self.features(x)


class ResNet18Trunk(nn.Module):
    """torchvision ResNet-18 without its pooling and classifier (stride 32, 512 channels).

    Submodule names equal torchvision's, so its state dicts load unchanged (``fc.*`` ignored).
    """

    out_channels = 512
    ignored_weight_prefixes: tuple[str, ...] = ("fc.",)

    def __init__(self) -> None:
        super().__init__()
        full = resnet18(weights=None)
        self.conv1, self.bn1, self.relu = full.conv1, full.bn1, full.relu
        self.maxpool = full.maxpool
        self.layer1, self.layer2 = full.layer1, full.layer2
        self.layer3, self.layer4 = full.layer3, full.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> layer4 activations ``(B, 512, H/32, W/32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class SmallConvNet(nn.Module):
    """A 5-layer CNN that trains on two CPU cores (stride 16, 128 channels).

    Each block is conv3x3 -> GroupNorm(8 groups) -> ReLU; channels 3-32-64-96-128-128, strides
    2-2-2-2-1, so a 120 x 90 image gives an 8 x 6 map. GroupNorm (not BatchNorm) keeps training
    and evaluation outputs identical and needs no statistics synchronised across processes.
    """

    out_channels = 128
    ignored_weight_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 96, 128, 128),
        strides: tuple[int, ...] = (2, 2, 2, 2, 1),
    ) -> None:
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError(f"need one stride per block, got {channels=} and {strides=}")
        layers: list[nn.Module] = []
        in_channels = 3
        for out, stride in zip(channels, strides, strict=True):
            layers += [
                nn.Conv2d(in_channels, out, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.GroupNorm(8, out),
                nn.ReLU(inplace=True),
            ]
            in_channels = out
        self.features = nn.Sequential(*layers)
        self.out_channels = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> features ``(B, 128, ceil(H/16), ceil(W/16))``."""
        return self.features(x)


@register_backbone("vgg16")
def _vgg16() -> nn.Module:
    return VGG16Conv53()


@register_backbone("vgg16_prerelu")
def _vgg16_prerelu() -> nn.Module:
    return VGG16Conv53(final_relu=False)


@register_backbone("resnet18")
def _resnet18() -> nn.Module:
    return ResNet18Trunk()


@register_backbone("small")
def _small() -> nn.Module:
    return SmallConvNet()


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a local ``.safetensors`` or torch (``.pth``/``.pt``/``.bin``) file.

    A torch checkpoint holding ``{"state_dict": ...}`` is unwrapped. Torch files are read with
    ``weights_only=True`` (no code from the file is executed).

    Raises:
        WeightsNotFoundError: the file does not exist.
        ValueError: unknown suffix, unreadable file or content that is not a tensor mapping.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsNotFoundError(
            f"weights file {str(file)!r} does not exist. Pretrained weights are never downloaded: "
            "fetch the file on a machine with internet (see docs/models.md, e.g. the URL of "
            "torchvision.models.VGG16_Weights.IMAGENET1K_V1) and pass its local path."
        )
    suffix = file.suffix.lower()
    if suffix not in _WEIGHT_SUFFIXES:
        raise ValueError(f"weights file {str(file)!r}: suffix must be one of {_WEIGHT_SUFFIXES}")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(file), device="cpu")
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt / truncated / not a state dict: one clear message
        raise ValueError(f"cannot read weights file {str(file)!r}: {error}") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(f"weights file {str(file)!r} does not hold a mapping name -> tensor")
    return dict(loaded)


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike[str]) -> None:
    """Copy the weights of a local state-dict file into ``backbone`` (in place).

    Keys may carry a DDP ``module.`` prefix; keys under the backbone's
    ``ignored_weight_prefixes`` (the classifier head of the full torchvision model) are dropped.
    Every remaining key must match the backbone's own keys and shapes exactly.

    Raises:
        WeightsNotFoundError: the file does not exist.
        ValueError: unreadable file, or missing / unexpected keys / shape mismatches (the first
            few are listed).
    """
    load_backbone_state(backbone, read_state_dict(path), path)


def load_backbone_state(
    backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike[str]
) -> None:
    """Copy a state dict already read from ``source`` into ``backbone`` (in place).

    The same rules and messages as :func:`load_backbone_weights` (``source`` names the file).
    """
    path = source
    ignored = tuple(getattr(backbone, "ignored_weight_prefixes", ()))
    cleaned: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        key = key.removeprefix("module.")
        if ignored and key.startswith(ignored):
            continue
        cleaned[key] = tensor
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in cleaned]
    unexpected = [k for k in cleaned if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(cleaned[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in cleaned and cleaned[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"weights file {str(path)!r} does not fit backbone {type(backbone).__name__}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}, {len(wrong_shape)} shape mismatches {wrong_shape[:5]}. Pass the "
            "full torchvision model's state dict or this backbone's own."
        )
    backbone.load_state_dict(cleaned, strict=True)
    logger.info("loaded %d tensors from %s into %s", len(cleaned), path, type(backbone).__name__)
