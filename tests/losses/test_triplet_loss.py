"""TripletLoss: a value worked by hand, PML's TripletMarginLoss, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import MeanReducer, SumReducer

from softloc.losses import TripletLoss
from softloc.losses.functional import triplet_loss

# Anchor a = (1, 0). Near (3 m, 10 m): p1 = (0.8, 0.6), p2 = (0.6, 0.8) with squared
# descriptor distances |a - p1|^2 = 0.2^2 + 0.6^2 = 0.4 and |a - p2|^2 = 0.4^2 + 0.8^2 = 0.8.
# Image 4 at 18 m lies between the radii (12 m, 25 m) and is ignored, although its descriptor
# equals the anchor's. Far (40, 50, 60 m): n1 = (0, 1) -> 2.0, n2 = (0.6, -0.8) -> 0.8,
# n3 = (0.8, -0.6) -> 0.4.
DESCRIPTORS = torch.tensor(
    [[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [0.6, -0.8], [0.8, -0.6]],
    dtype=torch.float64,
)
ANCHOR_METRES = torch.tensor([0.0, 3.0, 10.0, 18.0, 40.0, 50.0, 60.0], dtype=torch.float64)
DISTANCES = (ANCHOR_METRES[:, None] - ANCHOR_METRES[None, :]).abs()


def test_hand_value_hardest_positive():
    loss = TripletLoss(margin=0.1, near_radius=12.0, far_radius=25.0, positive="hardest")
    # hardest near = p2 (0.8): hinges [0.1 + 0.8 - 2.0]+ = 0, [0.1 + 0.8 - 0.8]+ = 0.1,
    # [0.1 + 0.8 - 0.4]+ = 0.5 -> sum 0.6, mean 0.2, max 0.5.
    assert loss(DESCRIPTORS, DISTANCES).item() == pytest.approx(0.6, rel=1e-12)
    hinges = TripletLoss(0.1, 12.0, 25.0, "hardest", reduction="none")(DESCRIPTORS, DISTANCES)
    assert hinges.tolist() == pytest.approx([0.0, 0.1, 0.5], abs=1e-12)
    assert TripletLoss(0.1, 12.0, 25.0, "hardest", reduction="mean")(
        DESCRIPTORS, DISTANCES
    ).item() == pytest.approx(0.2, rel=1e-12)
    assert TripletLoss(0.1, 12.0, 25.0, "hardest", reduction="max")(
        DESCRIPTORS, DISTANCES
    ).item() == pytest.approx(0.5, rel=1e-12)


def test_hand_value_closest_positive_is_the_default():
    # closest near = p1 (0.4): hinges 0, [0.1 + 0.4 - 0.8]+ = 0, [0.1 + 0.4 - 0.4]+ = 0.1.
    loss = TripletLoss(margin=0.1, near_radius=12.0, far_radius=25.0)
    assert loss.positive == "closest"
    assert loss(DESCRIPTORS, DISTANCES).item() == pytest.approx(0.1, rel=1e-12)


def test_lazy_triplet_takes_the_largest_hinge():
    from softloc.losses import LazyTripletLoss, create_loss

    # closest near (0.4): hinges 0, 0, 0.1 -> max 0.1; hardest (0.8): 0, 0.1, 0.5 -> 0.5.
    lazy = create_loss("lazy_triplet", near_radius=12.0, far_radius=25.0)
    assert isinstance(lazy, LazyTripletLoss) and lazy.reduction == "max"
    assert lazy(DESCRIPTORS, DISTANCES).item() == pytest.approx(0.1, rel=1e-12)
    hardest = LazyTripletLoss(0.1, 12.0, 25.0, positive="hardest")
    assert hardest(DESCRIPTORS, DISTANCES).item() == pytest.approx(0.5, rel=1e-12)


def random_tuple(seed: int, n_near: int = 4, n_far: int = 6):
    generator = torch.Generator().manual_seed(seed)
    descriptors = torch.randn(1 + n_near + n_far, 8, generator=generator, dtype=torch.float64)
    near = 14.0 * torch.rand(n_near, generator=generator, dtype=torch.float64)
    far = 15.0 + 500.0 * torch.rand(n_far, generator=generator, dtype=torch.float64)
    metres = torch.cat([torch.zeros(1, dtype=torch.float64), near, far])
    angles = 6.283 * torch.rand(len(metres), generator=generator, dtype=torch.float64)
    positions = torch.stack([metres * angles.cos(), metres * angles.sin()], dim=1)
    return descriptors, torch.cdist(positions, positions), n_near


@pytest.mark.parametrize(
    ("reduction", "reducer"), [("sum", SumReducer()), ("mean", MeanReducer())]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pml_triplet_margin_loss_on_hardest_positive_triplets(seed, reduction, reducer):
    descriptors, distances, n_near = random_tuple(seed)
    unit = descriptors.numpy() / np.linalg.norm(descriptors.numpy(), axis=1, keepdims=True)
    squared = ((unit - unit[0]) ** 2).sum(axis=1)
    hardest = 1 + int(np.argmax(squared[1 : 1 + n_near]))  # rows 1..n_near are near
    far = torch.arange(1 + n_near, len(descriptors))
    triplets = (torch.zeros_like(far), torch.full_like(far, hardest), far)

    ours_input = descriptors.clone().requires_grad_(True)
    pml_input = descriptors.clone().requires_grad_(True)
    ours = TripletLoss(margin=0.3, positive="hardest", reduction=reduction)(
        ours_input, distances
    )
    pml = TripletMarginLoss(margin=0.3, distance=LpDistance(power=2), reducer=reducer)(
        pml_input, indices_tuple=triplets
    )
    ours.backward()
    pml.backward()
    assert ours.item() > 0, "choose data where some triplet violates the margin"
    assert ours.item() == pytest.approx(pml.item(), rel=1e-10)
    torch.testing.assert_close(ours_input.grad, pml_input.grad, rtol=1e-8, atol=1e-12)


def test_gradcheck_float64():
    descriptors, distances, _ = random_tuple(3, n_near=3, n_far=3)
    descriptors.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda d: triplet_loss(d, distances, margin=1.0, positive="hardest"),
        (descriptors,),
        eps=1e-6,
        atol=1e-7,
    )


def test_only_row_zero_of_distances_matters():
    descriptors, distances, _ = random_tuple(4)
    scrambled = distances.clone()
    scrambled[1:] = 1234.5
    loss = TripletLoss(margin=0.5)
    assert loss(descriptors, scrambled).item() == pytest.approx(
        loss(descriptors, distances).item(), rel=1e-12
    )


@pytest.mark.parametrize(
    ("metres", "counts"),
    [([0.0, 3.0, 5.0], "2 near and 0 far"), ([0.0, 30.0, 40.0], "0 near and 2 far")],
)
def test_tuple_without_near_or_far_raises(metres, counts):
    metres = torch.tensor(metres)
    distances = (metres[:, None] - metres[None, :]).abs()
    with pytest.raises(ValueError, match=f"at least one near image.*{counts}"):
        TripletLoss()(torch.randn(len(metres), 4), distances)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"margin": -0.1}, "margin"),
        ({"near_radius": 0.0}, "near_radius"),
        ({"near_radius": 20.0, "far_radius": 10.0}, "far_radius"),
        ({"positive": "random"}, "positive"),
        ({"reduction": "median"}, "reduction"),
    ],
)
def test_bad_hyper_parameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TripletLoss(**kwargs)


@pytest.mark.parametrize(
    ("descriptors", "distances", "message"),
    [
        (torch.randn(1, 4), torch.zeros(1, 1), "B >= 2"),
        (torch.randn(3, 4), torch.zeros(3, 4), "shape \\(B, B\\)"),
        (torch.randn(3, 4), torch.tensor([[0.0, 1.0, float("nan")]] * 3), "NaN"),
    ],
)
def test_bad_input_raises(descriptors, distances, message):
    with pytest.raises(ValueError, match=message):
        TripletLoss()(descriptors, distances)
