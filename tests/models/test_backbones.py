"""Backbones: registry, output shapes, and weights read from local files only."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from softloc.models import (
    WeightsNotFoundError,
    available_backbones,
    create_backbone,
    read_state_dict,
)

IMAGES = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))


def test_registry_lists_the_three_backbones() -> None:
    assert available_backbones() == ["raw", "resnet18", "small", "vgg16", "vgg16_prerelu"]


def test_unknown_backbone_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known backbones.*vgg16"):
        create_backbone("vgg19")


@pytest.mark.parametrize(
    ("name", "channels", "stride"), [("vgg16", 512, 16), ("resnet18", 512, 32), ("small", 128, 16)]
)
def test_feature_map_shape(name: str, channels: int, stride: int) -> None:
    backbone = create_backbone(name).eval()
    with torch.no_grad():
        features = backbone(IMAGES)
    assert backbone.out_channels == channels
    assert features.shape == (2, channels, math.ceil(48 / stride), math.ceil(64 / stride))
    assert (features >= 0).all()  # ends with a ReLU


def test_small_backbone_gives_8x6_map_for_120x90_images() -> None:
    backbone = create_backbone("small")
    assert backbone(torch.randn(1, 3, 90, 120)).shape == (1, 128, 6, 8)


def _torchvision_vgg16_state(path) -> nn.Sequential:
    """Save a randomly initialised torchvision VGG16's full state dict; return its features.

    The 120 M classifier weights keep torchvision's keys and shapes but share one zero (they are
    ignored by the loader), which keeps the test file small and fast.
    """
    with torch.device("meta"):
        reference = torchvision.models.vgg16(weights=None)
    features = reference.features.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(1)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            with torch.no_grad():
                module.weight.normal_(0.0, 0.05, generator=generator)
                module.bias.normal_(0.0, 0.05, generator=generator)
    state = {
        key: value if key.startswith("features.") else torch.zeros(()).expand(value.shape)
        for key, value in reference.state_dict().items()
    }
    assert any(key.startswith("classifier.") for key in state)
    torch.save(state, path)
    return features


def test_torchvision_vgg16_state_dict_gives_identical_conv5_3_features(tmp_path) -> None:
    path = tmp_path / "vgg16-random.pth"
    reference_features = _torchvision_vgg16_state(path).eval()
    backbone = create_backbone("vgg16", weights=path).eval()
    with torch.no_grad():
        expected = reference_features[:30](IMAGES)  # up to conv5_3 + ReLU, last pool dropped
        actual = backbone(IMAGES)
    assert torch.equal(actual, expected)


def test_own_keys_in_safetensors_with_ddp_prefix_load(tmp_path) -> None:
    source = create_backbone("small")
    path = tmp_path / "small.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_backbone("small", weights=path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(IMAGES), source.eval()(IMAGES))


def test_resnet18_ignores_the_fc_head(tmp_path) -> None:
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet18", weights=path).eval()
    trunk = nn.Sequential(*list(reference.children())[:-2])  # drop avgpool and fc
    with torch.no_grad():
        assert torch.equal(backbone(IMAGES), trunk(IMAGES))


def test_missing_weights_file_says_how_to_get_it(tmp_path) -> None:
    path = tmp_path / "nowhere" / "vgg16-397923af.pth"
    with pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth.*docs/models.md") as info:
        create_backbone("vgg16", weights=path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)


def test_mismatched_keys_are_listed(tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"missing keys \['features.0.weight'.*unexpected keys"):
        create_backbone("small", weights=path)


def test_mismatched_shapes_are_listed(tmp_path) -> None:
    state = create_backbone("small").state_dict()
    state["features.0.weight"] = torch.zeros(32, 3, 5, 5)
    path = tmp_path / "small.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"features.0.weight: file \(32, 3, 5, 5\)"):
        create_backbone("small", weights=path)


def test_corrupt_and_unsupported_files_are_named(tmp_path) -> None:
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read weights file.*broken.safetensors"):
        read_state_dict(corrupt)
    other = tmp_path / "weights.npz"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="suffix must be one of"):
        read_state_dict(other)
    not_a_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(ValueError, match="mapping name -> tensor"):
        read_state_dict(not_a_dict)


def test_checkpoint_with_state_dict_entry_is_unwrapped(tmp_path) -> None:
    state = create_backbone("small").state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state}, path)
    assert read_state_dict(path).keys() == state.keys()
