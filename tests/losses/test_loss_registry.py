"""Registry: build by name, errors on unknown names, smoke test of every registered loss."""

from __future__ import annotations

import pytest
import torch

from softloc.losses import (
    LinearInfluence,
    SoftContrastiveLoss,
    TripletLoss,
    available_influences,
    available_losses,
    create_influence,
    create_loss,
    register_influence,
    register_loss,
)


def test_names_are_listed():
    assert available_losses() == [
        "contrastive",
        "generalized_contrastive",
        "huber_distance_triplet",
        "lazy_quadruplet",
        "lazy_triplet",
        "log_ratio",
        "multi_similarity",
        "off_the_shelf",
        "quadruplet",
        "soft_contrastive",
        "triplet",
    ]
    assert available_influences() == ["linear", "sigmoid", "step", "tanh"]


def test_create_loss_returns_configured_modules():
    soft = create_loss("soft_contrastive", alpha=3.0, influence=LinearInfluence(radius=20.0))
    assert isinstance(soft, SoftContrastiveLoss) and soft.alpha == 3.0
    assert isinstance(soft.influence, LinearInfluence) and soft.influence.radius == 20.0
    triplet = create_loss("triplet", margin=0.2)
    assert isinstance(triplet, TripletLoss) and triplet.margin == 0.2


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown loss 'hinge'.*soft_contrastive, triplet"):
        create_loss("hinge")
    with pytest.raises(ValueError, match="known influence functions: linear, sigmoid, step"):
        create_influence("gaussian")


def test_registering_a_taken_name_raises():
    with pytest.raises(ValueError, match="already registered to SoftContrastiveLoss"):
        register_loss("soft_contrastive")(type("Other", (torch.nn.Module,), {}))
    with pytest.raises(ValueError, match="already registered to SigmoidInfluence"):
        register_influence("sigmoid")(type("Other", (torch.nn.Module,), {}))
    with pytest.raises(ValueError, match="non-empty string"):
        register_loss("")


def test_unknown_constructor_argument_is_an_error():
    with pytest.raises(ValueError, match="bad arguments for loss 'triplet'.*accepts: margin"):
        create_loss("triplet", margn=0.2)
    with pytest.raises(ValueError, match="influence function 'linear'.*accepts: radius"):
        create_influence("linear", steepness=0.8)


@pytest.mark.parametrize("name", available_losses())
def test_every_registered_loss_on_a_standard_tuple(name):
    # Standard tuple: anchor first, 3 near images (< 15 m), then 4 far images (>= 15 m).
    metres = torch.tensor([0.0, 2.0, 6.0, 11.0, 20.0, 45.0, 300.0, 2500.0])
    positions = torch.stack([metres, torch.zeros_like(metres)], dim=1)
    # Descriptors close together: every margin is violated, so every loss has a gradient.
    noise = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    descriptors = (torch.ones(8, 16) + 0.05 * noise).requires_grad_(True)
    value = create_loss(name)(descriptors, torch.cdist(positions, positions))
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(descriptors.grad).all()
    if name == "off_the_shelf":  # trains nothing: zero loss, zero gradient
        assert value.item() == 0.0 and descriptors.grad.abs().sum() == 0
    else:
        assert descriptors.grad.abs().sum() > 0
