"""The paper's baselines: values worked by hand, PML where it has the same loss, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning.losses import ContrastiveLoss as PMLContrastiveLoss
from pytorch_metric_learning.losses import MultiSimilarityLoss as PMLMultiSimilarityLoss
from pytorch_metric_learning.miners import MultiSimilarityMiner
from pytorch_metric_learning.reducers import SumReducer

from softloc.losses import (
    ContrastiveLoss,
    GeneralizedContrastiveLoss,
    HuberDistanceTripletLoss,
    LazyQuadrupletLoss,
    LogRatioLoss,
    MultiSimilarityLoss,
    QuadrupletLoss,
    create_loss,
    loss_trains,
)


def line(metres: list[float]) -> torch.Tensor:
    """(B, B) distances of cameras placed along a straight line at ``metres``."""
    x = torch.tensor(metres, dtype=torch.float64)
    return (x[:, None] - x[None, :]).abs()


# Anchor a = (1, 0); near p1 (3 m) and p2 (10 m) with squared descriptor distances 0.4, 0.8;
# row 3 (18 m) lies between the radii 12 / 25 m and is ignored; far n1 (40 m) 2.0, n2 (50 m)
# 0.8, n3 (60 m) 0.4.
DESCRIPTORS = torch.tensor(
    [[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [0.6, -0.8], [0.8, -0.6]],
    dtype=torch.float64,
)
DISTANCES = line([0.0, 3.0, 10.0, 18.0, 40.0, 50.0, 60.0])
RADII = {"near_radius": 12.0, "far_radius": 25.0}


# -------------------------------------------------------------------------- quadruplet


# Anchor, p1, p2, n1 = (0, 1) at 40 m, n2 = (0.6, -0.8) at 50 m, other o = (0.8, -0.6) at 80 m.
# e(o, n1) = 0.8^2 + 1.6^2 = 3.2, e(o, n2) = 0.2^2 + 0.2^2 = 0.08.
QUAD = DESCRIPTORS[[0, 1, 2, 4, 5, 6]]


def test_quadruplet_hand_values():
    distances = line([0.0, 3.0, 10.0, 40.0, 50.0, 80.0])
    # closest near 0.4: first term [0.1 + 0.4 - 2.0]+ + [0.1 + 0.4 - 0.8]+ = 0;
    # second [0.2 + 0.4 - 3.2]+ + [0.2 + 0.4 - 0.08]+ = 0.52.
    assert QuadrupletLoss(**RADII)(QUAD, distances).item() == pytest.approx(0.52, rel=1e-12)
    # hardest near 0.8: first 0 + 0.1, second 0 + 0.92 -> 1.02; lazy: 0.1 + 0.92 as well.
    hardest = QuadrupletLoss(positive="hardest", **RADII)(QUAD, distances)
    assert hardest.item() == pytest.approx(1.02, rel=1e-12)
    lazy = LazyQuadrupletLoss(positive="hardest", **RADII)(QUAD, distances)
    assert lazy.item() == pytest.approx(1.02, rel=1e-12)


def test_quadruplet_sum_and_max_differ_when_two_hinges_are_active():
    distances = line([0.0, 3.0, 10.0, 40.0, 50.0, 80.0])
    descriptors = QUAD.clone()
    # n1 now as close to the anchor as p1
    descriptors[3] = torch.tensor([0.8, -0.6], dtype=torch.float64)
    # hardest near 0.8: first [0.9 - 0.4]+ + [0.9 - 0.8]+ = 0.6 (max 0.5);
    # second: e(o, n1) = 0 -> 1.0, e(o, n2) = 0.08 -> 0.92: sum 1.92 (max 1.0).
    summed = QuadrupletLoss(positive="hardest", **RADII)(descriptors, distances)
    lazy = LazyQuadrupletLoss(positive="hardest", **RADII)(descriptors, distances)
    assert summed.item() == pytest.approx(0.6 + 1.92, rel=1e-12)
    assert lazy.item() == pytest.approx(0.5 + 1.0, rel=1e-12)


def test_quadruplet_ignores_far_images_near_the_extra_one():
    # The extra far image at 55 m is within 25 m of n1 (40 m) and n2 (50 m): no second term.
    distances = line([0.0, 3.0, 10.0, 40.0, 50.0, 55.0])
    assert QuadrupletLoss(positive="hardest", **RADII)(QUAD, distances).item() == (
        pytest.approx(0.1, rel=1e-12)
    )


def test_quadruplet_needs_the_last_row_far_from_the_anchor():
    with pytest.raises(ValueError, match="last row as the extra far image"):
        QuadrupletLoss(**RADII)(QUAD, line([0.0, 3.0, 10.0, 40.0, 50.0, 5.0]))


# ------------------------------------------------------------------ Huber distance triplet


@pytest.mark.parametrize("delta", [1.0, 0.1])
def test_huber_distance_triplet_hand_value(delta):
    # Triplet part (closest near, sum): 0.1 (see test_triplet_loss). Near: descriptor
    # 0.4 / 2 = 0.2 and 0.8 / 2 = 0.4 against metric 3^2 / 12^2 and 10^2 / 12^2.
    def huber(x):
        return 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)

    regression = (huber(0.2 - 9 / 144) + huber(0.4 - 100 / 144)) / 2
    loss = HuberDistanceTripletLoss(lam=0.5, delta=delta, **RADII)
    assert loss(DESCRIPTORS, DISTANCES).item() == pytest.approx(0.1 + 0.5 * regression, rel=1e-12)


def test_huber_distance_triplet_with_zero_lambda_is_the_triplet_loss():
    triplet = create_loss("triplet", **RADII)(DESCRIPTORS, DISTANCES)
    assert HuberDistanceTripletLoss(lam=0.0, **RADII)(DESCRIPTORS, DISTANCES).item() == (
        pytest.approx(triplet.item(), rel=1e-12)
    )


# ------------------------------------------------------------------------------ log-ratio


def test_log_ratio_hand_value():
    near = [(0.4, 9.0), (0.8, 100.0)]  # (squared descriptor, squared metric distance)
    far = [(2.0, 1600.0), (0.8, 2500.0), (0.4, 3600.0)]
    terms = [(math.log(e / f) - math.log(g / h)) ** 2 for e, g in near for f, h in far]
    loss = LogRatioLoss(eps=1e-15, **RADII)
    assert loss(DESCRIPTORS, DISTANCES).item() == pytest.approx(sum(terms) / 6, rel=1e-9)

    rows = near + [(0.0, 324.0)] + far  # 'all' pairs: every non-anchor row, in row order
    dense = [
        (math.log((rows[i][0] + 1e-15) / (rows[j][0] + 1e-15)) - math.log(rows[i][1] / rows[j][1]))
        ** 2
        for i in range(len(rows))
        for j in range(i + 1, len(rows))
    ]
    loss = LogRatioLoss(eps=1e-15, pairs="all", **RADII)
    assert loss(DESCRIPTORS, DISTANCES).item() == pytest.approx(sum(dense) / len(dense), rel=1e-9)


def test_log_ratio_is_zero_when_descriptor_distances_are_proportional():
    # Squared descriptor distances 1e-4 d^2 from the anchor: every log-ratio matches.
    metres = torch.tensor([0.0, 3.0, 8.0, 30.0, 60.0], dtype=torch.float64)
    angles = 2 * torch.asin(0.01 * metres / 2)  # chord length 0.01 d on the unit circle
    descriptors = torch.stack([angles.cos(), angles.sin()], dim=1)
    loss = LogRatioLoss(near_radius=10.0, far_radius=20.0, eps=1e-15)
    assert loss(descriptors, line(metres.tolist())).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------- contrastive


def random_tuple(seed: int, n_near: int = 4, n_far: int = 5):
    """Near rows 1..n_near within 10 m, far rows beyond 30 m, non-negative descriptors."""
    generator = torch.Generator().manual_seed(seed)
    near = 10.0 * torch.rand(n_near, generator=generator, dtype=torch.float64)
    far = 30.0 + 200.0 * torch.rand(n_far, generator=generator, dtype=torch.float64)
    metres = torch.cat([torch.zeros(1, dtype=torch.float64), near, far])
    descriptors = torch.rand(len(metres), 6, generator=generator, dtype=torch.float64)
    return descriptors, (metres[:, None] - metres[None, :]).abs(), n_near


def anchor_pairs(n_near: int, size: int):
    near = torch.arange(1, 1 + n_near)
    far = torch.arange(1 + n_near, size)
    return torch.zeros_like(near), near, torch.zeros_like(far), far


def test_contrastive_hand_value():
    # Near: 0.5 * 0.4 + 0.5 * 0.8; far L2 distances sqrt(2), sqrt(0.8), sqrt(0.4): only the
    # last is under the 0.7 margin.
    expected = 0.6 + 0.5 * (0.7 - math.sqrt(0.4)) ** 2
    assert ContrastiveLoss(**RADII)(DESCRIPTORS, DISTANCES).item() == pytest.approx(expected)
    mean = ContrastiveLoss(reduction="mean", **RADII)(DESCRIPTORS, DISTANCES).item()
    assert mean == pytest.approx(expected / 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrastive_power_one_equals_pml(seed):
    # PML reduces the positive and the negative pairs separately and adds them, so only the
    # sum reduction coincides.
    descriptors, distances, n_near = random_tuple(seed)
    ours_input = descriptors.clone().requires_grad_(True)
    pml_input = descriptors.clone().requires_grad_(True)
    ours = ContrastiveLoss(margin=0.9, pos_margin=0.05, power=1.0, near_radius=15.0,
                           far_radius=15.0, reduction="sum")(ours_input, distances)
    pairs = anchor_pairs(n_near, len(descriptors))
    pml = PMLContrastiveLoss(pos_margin=0.05, neg_margin=0.9, reducer=SumReducer())(
        pml_input, torch.zeros(len(descriptors)), indices_tuple=pairs
    )
    # Ours carries Hadsell's factor 1/2 on every pair.
    ours.backward()
    pml.backward()
    assert ours.item() > 0
    assert 2 * ours.item() == pytest.approx(pml.item(), rel=1e-10)
    torch.testing.assert_close(2 * ours_input.grad, pml_input.grad, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------- generalized contrastive


def test_generalized_contrastive_hand_value():
    # psi = 1 - d / 15: p1 (3 m) 0.8, p2 (10 m) 1/3, others 0; margin 0.5. (Row 3 equals the
    # anchor; the loss floors L2 distances at 1e-6 for a finite gradient, hence rel=1e-5.)
    lengths = [math.sqrt(v) for v in (0.4, 0.8, 0.0, 2.0, 0.8, 0.4)]
    psis = [0.8, 1 / 3, 0.0, 0.0, 0.0, 0.0]
    terms = [
        p * 0.5 * d * d + (1 - p) * 0.5 * max(0.5 - d, 0.0) ** 2
        for p, d in zip(psis, lengths, strict=True)
    ]
    loss = GeneralizedContrastiveLoss(margin=0.5, radius=15.0)
    assert loss(DESCRIPTORS, DISTANCES).item() == pytest.approx(sum(terms) / 6, rel=1e-5)


def test_generalized_contrastive_with_binary_labels_is_the_contrastive_loss():
    # Radius tiny: psi = 1 only at 0 m (here the anchor's duplicate at 0 m), else 0.
    descriptors, distances, n_near = random_tuple(3)
    distances[0, 1] = distances[1, 0] = 0.0
    gcl = GeneralizedContrastiveLoss(margin=0.7, radius=1e-3)(descriptors, distances)
    unit = torch.nn.functional.normalize(descriptors, dim=1)
    lengths = (unit[1:] - unit[0]).norm(dim=1)
    expected = (0.5 * lengths[0] ** 2 + (0.5 * (0.7 - lengths[1:]).clamp(min=0) ** 2).sum()) / len(
        lengths
    )
    assert gcl.item() == pytest.approx(expected.item(), rel=1e-10)


# ----------------------------------------------------------------------- multi-similarity


def tuple_labels(n_near: int, n_far: int) -> torch.Tensor:
    """The authors' labels: anchor and near images share one, every far image its own."""
    return torch.tensor([0] * (1 + n_near) + list(range(1, 1 + n_far)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_similarity_without_miner_equals_pml(seed):
    descriptors, distances, n_near = random_tuple(seed)
    labels = tuple_labels(n_near, len(descriptors) - 1 - n_near)
    ours_input = descriptors.clone().requires_grad_(True)
    pml_input = descriptors.clone().requires_grad_(True)
    ours = MultiSimilarityLoss(near_radius=15.0, far_radius=15.0, mining=False)(
        ours_input, distances
    )
    pml = PMLMultiSimilarityLoss(alpha=2.0, beta=50.0, base=1.0)(pml_input, labels)
    ours.backward()
    pml.backward()
    assert ours.item() == pytest.approx(pml.item(), rel=1e-10)
    torch.testing.assert_close(ours_input.grad, pml_input.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_similarity_with_miner_equals_pml_on_the_rows_with_positives(seed):
    # PML's miner keeps no pair of a row without positives (every far row here); the
    # authors' ms_loss keeps all its negatives. On the anchor and near rows they agree.
    descriptors, distances, n_near = random_tuple(seed)
    size = len(descriptors)
    labels = tuple_labels(n_near, size - 1 - n_near)
    a1, p, a2, n = MultiSimilarityMiner(epsilon=0.1)(descriptors, labels)
    ours_input = descriptors.clone().requires_grad_(True)
    pml_input = descriptors.clone().requires_grad_(True)
    per_row = MultiSimilarityLoss(15.0, 15.0, mining=True, eps=0.1, reduction="none")(
        ours_input, distances
    )
    ours = per_row[: 1 + n_near].sum()
    pml = size * PMLMultiSimilarityLoss(alpha=2.0, beta=50.0, base=1.0)(
        pml_input, labels, indices_tuple=(a1, p, a2, n)
    )
    ours.backward()
    pml.backward()
    assert ours.item() == pytest.approx(pml.item(), rel=1e-10)
    torch.testing.assert_close(
        ours_input.grad[: 1 + n_near], pml_input.grad[: 1 + n_near], rtol=1e-8, atol=1e-12
    )
    assert (per_row[1 + n_near :] > 0).all(), "far rows keep their negatives (authors' rule)"


def test_multi_similarity_leaves_out_rows_between_the_radii():
    # Row 3 (18 m) is neither near (< 12 m) nor far (>= 25 m): dropping it changes nothing.
    loss = MultiSimilarityLoss(mining=False, **RADII)
    keep = [0, 1, 2, 4, 5, 6]
    assert loss(DESCRIPTORS, DISTANCES).item() == pytest.approx(
        loss(DESCRIPTORS[keep], DISTANCES[keep][:, keep]).item(), rel=1e-12
    )


# --------------------------------------------------------------------- shared behaviour


def test_off_the_shelf_does_not_train():
    assert not loss_trains("off_the_shelf") and loss_trains("triplet")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("contrastive", {"margin": -1.0}, "margin"),
        ("contrastive", {"power": 0.0}, "power"),
        ("contrastive", {"reduction": "max"}, "reduction"),
        ("generalized_contrastive", {"radius": 0.0}, "radius"),
        ("generalized_contrastive", {"pairs": "some"}, "pairs"),
        ("log_ratio", {"pairs": "some"}, "pairs"),
        ("log_ratio", {"near_radius": 20.0, "far_radius": 10.0}, "far_radius"),
        ("multi_similarity", {"alpha": 0.0}, "alpha"),
        ("quadruplet", {"second_margin": -0.2}, "second_margin"),
        ("huber_distance_triplet", {"lam": -1.0}, "lam"),
        ("huber_distance_triplet", {"delta": 0.0}, "delta"),
    ],
)
def test_bad_hyper_parameters_raise(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_loss(name, **kwargs)


@pytest.mark.parametrize(
    "name", ["quadruplet", "huber_distance_triplet", "log_ratio", "contrastive", "multi_similarity"]
)
def test_tuple_without_far_images_raises(name):
    with pytest.raises(ValueError, match="far image"):
        create_loss(name, **RADII)(DESCRIPTORS[:3], DISTANCES[:3, :3])


@pytest.mark.parametrize(
    "name",
    ["quadruplet", "lazy_quadruplet", "huber_distance_triplet", "log_ratio", "contrastive",
     "generalized_contrastive", "multi_similarity"],
)
def test_gradcheck_float64(name):
    descriptors, distances, _ = random_tuple(5, n_near=3, n_far=3)
    descriptors = (descriptors - 0.5).requires_grad_(True)
    options = {} if name == "generalized_contrastive" else {"near_radius": 15.0, "far_radius": 15.0}
    if "quadruplet" in name or name == "contrastive":
        options["margin"] = 1.5
    loss = create_loss(name, **options)
    assert torch.autograd.gradcheck(lambda d: loss(d, distances), (descriptors,), eps=1e-6,
                                    atol=1e-6)
