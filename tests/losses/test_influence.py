"""Influence functions against their closed forms, limits and monotonicity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from softloc.losses import (
    LinearInfluence,
    SigmoidInfluence,
    StepInfluence,
    TanhInfluence,
    create_influence,
)

ALL_DEFAULTS = [SigmoidInfluence(), LinearInfluence(), TanhInfluence(), StepInfluence()]
GRID = torch.tensor([0.0, 0.5, 5.0, 10.0, 14.9, 15.0, 15.1, 20.0, 60.0, 500.0, 1e4, 1e6])


def test_sigmoid_matches_closed_form_at_hand_picked_distances():
    influence = SigmoidInfluence(steepness=0.8, midpoint=15.0)
    distances = torch.tensor([0.0, 10.0, 15.0, 20.0], dtype=torch.float64)
    w_near, w_far = influence(distances)
    # 1 / (1 + exp(0.8 (d - 15))): d = 0 -> 1/(1+e^-12), d = 10 -> 1/(1+e^-4), 15 -> 1/2, ...
    expected_near = [1 / (1 + math.exp(-12)), 1 / (1 + math.exp(-4)), 0.5, 1 / (1 + math.exp(4))]
    expected_far = [1 / (1 + math.exp(12)), 1 / (1 + math.exp(4)), 0.5, 1 / (1 + math.exp(-4))]
    assert w_near.tolist() == pytest.approx(expected_near, rel=1e-12)
    assert w_far.tolist() == pytest.approx(expected_far, rel=1e-12)
    assert w_near[2].item() == 0.5 and w_far[2].item() == 0.5


def test_linear_matches_closed_form():
    w_near, w_far = LinearInfluence(radius=20.0)(torch.tensor([0.0, 5.0, 20.0, 30.0]))
    assert w_near.tolist() == pytest.approx([1.0, 0.75, 0.0, 0.0])
    assert w_far.tolist() == pytest.approx([0.0, 0.25, 1.0, 1.0])


def test_tanh_matches_closed_form():
    distances = torch.tensor([0.0, 15.0, 30.0], dtype=torch.float64)
    w_near, w_far = TanhInfluence(scale=15.0)(distances)
    assert w_far.tolist() == pytest.approx([0.0, math.tanh(1.0), math.tanh(2.0)], rel=1e-12)
    assert w_near.tolist() == pytest.approx([1.0, 1 - math.tanh(1.0), 1 - math.tanh(2.0)])


def test_step_splits_at_threshold():
    w_near, w_far = StepInfluence(threshold=15.0)(torch.tensor([0.0, 14.999, 15.0, 40.0]))
    assert w_near.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert w_far.tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("influence", ALL_DEFAULTS, ids=lambda f: type(f).__name__)
def test_limits_are_finite_and_reach_zero_and_one(influence, dtype):
    w_near, w_far = influence(GRID.to(dtype))
    assert w_near.dtype == dtype and w_far.shape == GRID.shape
    assert torch.isfinite(w_near).all() and torch.isfinite(w_far).all()
    assert w_near[0].item() == pytest.approx(1.0, abs=1e-5)
    assert w_far[0].item() == pytest.approx(0.0, abs=1e-5)
    assert w_near[-1].item() == 0.0
    assert w_far[-1].item() == 1.0
    assert ((w_near >= 0) & (w_near <= 1) & (w_far >= 0) & (w_far <= 1)).all()


@pytest.mark.parametrize("influence", ALL_DEFAULTS, ids=lambda f: type(f).__name__)
def test_monotone_and_complementary(influence):
    distances = torch.linspace(0.0, 200.0, 2001, dtype=torch.float64)
    w_near, w_far = influence(distances)
    assert (w_near.diff() <= 0).all(), "w_near must not increase with distance"
    assert (w_far.diff() >= 0).all(), "w_far must not decrease with distance"
    torch.testing.assert_close(w_near + w_far, torch.ones_like(distances))


def test_accepts_arrays_and_integers_and_keeps_shape():
    distances = np.array([[0, 20], [20, 0]])
    w_near, w_far = SigmoidInfluence()(distances)
    assert w_near.shape == (2, 2) and w_near.is_floating_point()
    assert w_far[0, 1].item() == pytest.approx(1 / (1 + math.exp(-4)))


def test_create_influence_passes_parameters():
    influence = create_influence("sigmoid", steepness=0.5, midpoint=10.0)
    assert isinstance(influence, SigmoidInfluence)
    w_near, _ = influence(torch.tensor([10.0]))
    assert w_near.item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: SigmoidInfluence(steepness=0.0),
        lambda: SigmoidInfluence(midpoint=-1.0),
        lambda: SigmoidInfluence(steepness=float("nan")),
        lambda: LinearInfluence(radius=0),
        lambda: TanhInfluence(scale=float("inf")),
        lambda: StepInfluence(threshold="15"),
        lambda: StepInfluence(threshold=True),
    ],
)
def test_bad_parameters_raise_value_error(build):
    with pytest.raises(ValueError, match="positive"):
        build()
