"""The explicit near cut-off: w_near is exactly 0 from it on, in every dtype and on every
device, so the soft loss no longer depends on how float32 subnormals are handled."""

from __future__ import annotations

import math

import pytest
import torch

from softloc.config import load_config
from softloc.losses import (
    LinearInfluence,
    SigmoidInfluence,
    SoftContrastiveLoss,
    StepInfluence,
    TanhInfluence,
    create_influence,
)
from softloc.train import build_loss

DTYPES = [torch.float32, torch.float64]


def test_default_cutoffs_worked_by_hand() -> None:
    # sigmoid: w_near ~ exp(-a (d - b)) leaves the normal float32 range (2^-126) at
    # a (d - b) = 126 ln 2 = 87.3365; d = 15 + 87.3365 / 0.8 = 124.1707 m.
    assert SigmoidInfluence().near_cutoff == pytest.approx(124.1707, abs=1e-4)
    assert SigmoidInfluence(0.5, 10.0).near_cutoff == pytest.approx(10 + 87.33654 / 0.5)
    # tanh: 7.90531110763549805 x 15 m = 118.5797 m.
    assert TanhInfluence().near_cutoff == pytest.approx(118.5797, abs=1e-4)
    assert TanhInfluence(scale=10.0).near_cutoff == pytest.approx(79.0531, abs=1e-4)
    assert LinearInfluence(radius=20.0).near_cutoff == 20.0
    assert StepInfluence(threshold=12.0).near_cutoff == 12.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "influence", [SigmoidInfluence(), TanhInfluence()], ids=["sigmoid", "tanh"]
)
def test_near_weight_is_positive_just_before_and_zero_from_the_cutoff(influence, dtype):
    cutoff = influence.near_cutoff
    distances = torch.tensor([cutoff - 0.01, cutoff, cutoff + 0.01, 130.0, 1e4], dtype=dtype)
    w_near, w_far = influence(distances)
    assert w_near[0].item() > 0.0
    assert w_near[1:].tolist() == [0.0] * 4
    assert w_far[1:].tolist() == [1.0] * 4


def test_infinite_cutoff_gives_the_pure_formula() -> None:
    distances = torch.tensor([100.0, 124.5, 130.0, 500.0], dtype=torch.float64)
    w_near, w_far = SigmoidInfluence(near_cutoff=math.inf)(distances)
    expected = [1 / (1 + math.exp(0.8 * (d - 15))) for d in distances.tolist()]
    assert w_near.tolist() == pytest.approx(expected, rel=1e-12)
    assert w_near[1].item() > 0.0 and w_near[3].item() > 0.0  # beyond the default cut-off
    assert w_far.tolist() == pytest.approx([1 - w for w in expected], rel=1e-12)
    t_near, _ = TanhInfluence(near_cutoff=float("inf"))(distances)
    assert t_near.tolist() == pytest.approx(
        [1 - math.tanh(d / 15) for d in distances.tolist()], rel=1e-6, abs=1e-300
    )
    assert t_near[1].item() > 0.0  # 124.5 m > 118.58 m


def test_pure_float32_and_float64_disagree_on_near_pairs_without_a_cutoff() -> None:
    """Why the cut-off exists: the formula alone gives different positive sets per dtype."""
    distances = torch.tensor([126.0, 200.0])
    pure = SigmoidInfluence(near_cutoff=math.inf)
    assert (pure(distances)[0] > 0).tolist() == [False, False]  # float32
    assert (pure(distances.double())[0] > 0).tolist() == [True, True]  # float64


def layout_with_far_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """A tuple whose pairs lie at 0-140 m, several between 118 and 136 m."""
    x = torch.tensor([0.0, 3.0, 7.0, 12.0, 20.0, 119.0, 121.5, 124.0, 125.0, 127.0, 131.0,
                      136.0], dtype=torch.float64)
    positions = torch.stack([x, 0.3 * torch.arange(len(x), dtype=torch.float64)], dim=1)
    generator = torch.Generator().manual_seed(5)
    descriptors = torch.randn(len(x), 16, generator=generator, dtype=torch.float64)
    descriptors[5:] += 1.5  # similar far images: their near-side terms matter
    return descriptors, torch.cdist(positions, positions)


@pytest.mark.parametrize("mining", [False, True])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "linear", "step"])
def test_float32_and_float64_give_the_same_loss_and_near_pairs(name, mining) -> None:
    descriptors, distances = layout_with_far_pairs()
    between = (distances > 118) & (distances < 136)
    assert between.sum() >= 10
    influence = create_influence(name)
    near64 = influence(distances)[0] > 0
    near32 = influence(distances.float())[0] > 0
    assert torch.equal(near64, near32)
    loss = SoftContrastiveLoss(influence, mining=mining, lamb=0.5)
    wide = loss(descriptors, distances).item()
    narrow = loss(descriptors.float(), distances.float()).item()
    assert narrow == pytest.approx(wide, rel=2e-5)


def test_without_cutoff_the_dtypes_give_different_losses() -> None:
    """The 0.1-9 % effect of the issue, on the layout above: the check above can fail."""
    descriptors, distances = layout_with_far_pairs()
    loss = SoftContrastiveLoss(SigmoidInfluence(near_cutoff=math.inf), mining=False, lamb=0.5)
    wide = loss(descriptors, distances).item()
    narrow = loss(descriptors.float(), distances.float()).item()
    assert abs(narrow - wide) > 1e-3 * abs(wide)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_cpu_and_gpu_give_the_same_loss(name) -> None:
    descriptors, distances = layout_with_far_pairs()
    loss = SoftContrastiveLoss(create_influence(name), lamb=0.5)
    cpu = loss(descriptors.float(), distances.float()).item()
    gpu = loss(descriptors.float().cuda(), distances.float().cuda()).item()
    assert gpu == pytest.approx(cpu, rel=2e-5)


@pytest.mark.parametrize("value", [0.0, -5.0, float("nan"), "far", True, [1.0]])
def test_bad_cutoff_raises_value_error(value) -> None:
    with pytest.raises(ValueError, match="near_cutoff"):
        SigmoidInfluence(near_cutoff=value)


def test_cutoff_comes_from_the_run_configuration(tmp_path) -> None:
    config = load_config(None, ["loss.influence=tanh",
                                "loss.influence_options={scale: 10.0, near_cutoff: 50.0}"])
    assert build_loss(config).influence.near_cutoff == 50.0
    # YAML reads "inf" as a string and ".inf" as the float: both mean "no cut-off".
    for spelling in ("inf", ".inf"):
        config = load_config(None, [f"loss.influence_options={{near_cutoff: {spelling}}}"])
        assert math.isinf(build_loss(config).influence.near_cutoff)
    assert build_loss(load_config(None, [])).influence.near_cutoff == pytest.approx(124.1707,
                                                                                   abs=1e-4)
