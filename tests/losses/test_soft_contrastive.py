"""SoftContrastiveLoss: values worked by hand, a naive loop, PML's multi-similarity loss,
gradients, invariances and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import MultiSimilarityLoss
from pytorch_metric_learning.miners import MultiSimilarityMiner

from softloc.losses import (
    LinearInfluence,
    SigmoidInfluence,
    SoftContrastiveLoss,
    StepInfluence,
    TanhInfluence,
)
from softloc.losses.functional import soft_contrastive_loss

# --------------------------------------------------------------------------- helpers


def pairwise_metres(positions: torch.Tensor) -> torch.Tensor:
    """(B, 2) positions in metres -> (B, B) Euclidean distances."""
    return torch.cdist(positions, positions)


def random_tuple(seed: int, size: int = 8, dim: int = 5, spread: float = 60.0):
    """Random float64 descriptors (some pairwise dot products negative) and distances."""
    generator = torch.Generator().manual_seed(seed)
    descriptors = torch.randn(size, dim, generator=generator, dtype=torch.float64)
    positions = spread * torch.rand(size, 2, generator=generator, dtype=torch.float64)
    return descriptors, pairwise_metres(positions)


# Closed forms written independently of softloc.losses.influence (python floats).
NAIVE_WEIGHTS = {
    "sigmoid": lambda d: (1 / (1 + math.exp(0.8 * (d - 15))), 1 / (1 + math.exp(0.8 * (15 - d)))),
    "linear": lambda d: (max(0.0, 1 - d / 15), min(1.0, d / 15)),
    "tanh": lambda d: (1 - math.tanh(d / 15), math.tanh(d / 15)),
    "step": lambda d: (float(d < 15), float(d >= 15)),
}
MODULES = {
    "sigmoid": SigmoidInfluence(),
    "linear": LinearInfluence(),
    "tanh": TanhInfluence(),
    "step": StepInfluence(),
}


def naive_wms_loss(
    descriptors, distances, weight, alpha, beta, lamb, eps, mining, form, self_pairs="excluded"
):
    """Double loop over pairs in python floats, following the authors' wms_loss.

    ``self_pairs="authors"``: as in their TensorFlow code, the self-pair enters the masks as
    ``w_near(d_ii) - 1`` on the positive side and ``w_far(d_ii)`` on the negative side.
    ``self_pairs="excluded"`` (softloc): it gets mask 0 on both sides.
    """
    rows = [np.asarray(r, dtype=float) for r in descriptors.tolist()]
    rows = [r / np.linalg.norm(r) for r in rows]
    size = len(rows)
    sim = [[max(0.0, float(rows[i] @ rows[j])) for j in range(size)] for i in range(size)]
    mask_pos = [[0.0] * size for _ in range(size)]
    mask_neg = [[0.0] * size for _ in range(size)]
    for i in range(size):
        for j in range(size):
            w_near, w_far = weight(float(distances[i][j]))
            if i != j:
                mask_pos[i][j], mask_neg[i][j] = w_near, w_far
            elif self_pairs == "authors":
                mask_pos[i][j], mask_neg[i][j] = w_near - 1.0, w_far
    total = 0.0
    for i in range(size):
        pos = [sim[i][j] * mask_pos[i][j] for j in range(size)]
        neg = [sim[i][j] * mask_neg[i][j] for j in range(size)]
        keep_pos = [mask_pos[i][j] > 0 for j in range(size)]
        keep_neg = [mask_neg[i][j] > 0 for j in range(size)]
        if mining:
            max_neg = max(neg)
            max_pos = max(pos)
            soft_min_pos = min((sim[i][j] - max_pos) * mask_pos[i][j] for j in range(size))
            soft_min_pos += max_pos
            for j in range(size):
                keep_pos[j] = keep_pos[j] and pos[j] < max_neg + eps
                keep_neg[j] = keep_neg[j] and neg[j] > soft_min_pos - eps
        if form == "plain":
            total += sum(neg[j] for j in range(size) if keep_neg[j])
            total -= sum(pos[j] for j in range(size) if keep_pos[j])
        else:
            pos_sum = sum(math.exp(-alpha * (pos[j] - lamb)) for j in range(size) if keep_pos[j])
            neg_sum = sum(math.exp(beta * (neg[j] - lamb)) for j in range(size) if keep_neg[j])
            total += math.log(1 + pos_sum) / alpha + math.log(1 + neg_sum) / beta
    return total / size


# ------------------------------------------------------------------ values worked by hand

# Tuple A: f0 = (1, 0), f1 = (0.6, 0.8), f2 = (0, 1)  ->  f0.f1 = 0.6, f0.f2 = 0, f1.f2 = 0.8.
# Distances d01 = 5 m, d02 = 20 m, d12 = 10 m; linear influence of radius 10 m gives
# w_near = 0.5, 0, 0 and w_far = 0.5, 1, 1, hence
#   s+01 = 0.3 (s+02 = s+12 = 0 with zero weight: no positive pair at all),
#   s-01 = 0.3, s-02 = 0 (weight 1, kept), s-12 = 0.8.
TUPLE_A = (
    torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64),
    torch.tensor([[0.0, 5.0, 20.0], [5.0, 0.0, 10.0], [20.0, 10.0, 0.0]], dtype=torch.float64),
)


def test_hand_value_ms_form_without_mining():
    loss = SoftContrastiveLoss(
        influence=LinearInfluence(radius=10.0), alpha=2.0, beta=50.0, lamb=0.5, mining=False
    )
    # alpha = 2, beta = 50, lambda = 0.5; per row (1/2) log(1 + sum e^{-2 (s+ - 0.5)})
    # + (1/50) log(1 + sum e^{50 (s- - 0.5)}):
    #   row 0: positive 0.3 -> e^{0.4};   negatives 0.3, 0 -> e^{-10}, e^{-25}
    #   row 1: positive 0.3 -> e^{0.4};   negatives 0.3, 0.8 -> e^{-10}, e^{15}
    #   row 2: no positive -> 0;          negatives 0, 0.8 -> e^{-25}, e^{15}
    e = math.exp
    row0 = math.log(1 + e(0.4)) / 2 + math.log(1 + e(-10) + e(-25)) / 50
    row1 = math.log(1 + e(0.4)) / 2 + math.log(1 + e(-10) + e(15)) / 50
    row2 = math.log(1 + e(-25) + e(15)) / 50
    assert loss(*TUPLE_A).item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-12)
    assert (row0 + row1 + row2) / 3 == pytest.approx(0.504339, abs=1e-6)


def test_hand_value_plain_form_without_mining():
    loss = SoftContrastiveLoss(influence=LinearInfluence(radius=10.0), mining=False, form="plain")
    # per row: sum of kept s- minus sum of kept s+
    #   row 0: (0.3 + 0) - 0.3 = 0;  row 1: (0.3 + 0.8) - 0.3 = 0.8;  row 2: (0 + 0.8) - 0 = 0.8
    assert loss(*TUPLE_A).item() == pytest.approx(1.6 / 3, rel=1e-12)


# Tuple B: f0 = (1, 0), f1 = (0.8, 0.6), f2 = (0.6, 0.8) -> f0.f1 = 0.8, f0.f2 = 0.6,
# f1.f2 = 0.96; d01 = 5 m, d02 = d12 = 20 m, step at 10 m: (0, 1) near, the rest far.
TUPLE_B = (
    torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]], dtype=torch.float64),
    torch.tensor([[0.0, 5.0, 20.0], [5.0, 0.0, 20.0], [20.0, 20.0, 0.0]], dtype=torch.float64),
)


def test_hand_value_with_and_without_mining():
    e, log = math.exp, math.log
    # Terms (alpha 2, beta 50, lambda 1): positive 0.8 -> e^{-2 (0.8 - 1)} = e^{0.4};
    # negative 0.6 -> e^{50 (0.6 - 1)} = e^{-20}; negative 0.96 -> e^{50 (0.96 - 1)} = e^{-2}.
    unmined_rows = [
        log(1 + e(0.4)) / 2 + log(1 + e(-20)) / 50,  # row 0: positive 1, negative 2
        log(1 + e(0.4)) / 2 + log(1 + e(-2)) / 50,  # row 1: positive 0, negative 2
        log(1 + e(-20) + e(-2)) / 50,  # row 2: negatives 0 and 1
    ]
    # Mining, eps = 0.1. Row 0: hardest negative 0.6, so the positive 0.8 >= 0.6 + 0.1 is
    # dropped; hardest positive 0.8, so the negative 0.6 <= 0.8 - 0.1 is dropped: row 0 = 0.
    # Row 1: 0.8 < 0.96 + 0.1 kept, 0.96 > 0.8 - 0.1 kept. Row 2 has no positive (hardest
    # positive 0), both negatives > -0.1 kept.
    mined_rows = [0.0, unmined_rows[1], unmined_rows[2]]
    influence = StepInfluence(threshold=10.0)
    unmined = SoftContrastiveLoss(influence=influence, mining=False)(*TUPLE_B)
    mined = SoftContrastiveLoss(influence=influence, mining=True, eps=0.1)(*TUPLE_B)
    assert unmined.item() == pytest.approx(sum(unmined_rows) / 3, rel=1e-12)
    assert mined.item() == pytest.approx(sum(mined_rows) / 3, rel=1e-12)
    per_row = SoftContrastiveLoss(influence=influence, reduction="none")(*TUPLE_B)
    assert per_row.tolist() == pytest.approx(mined_rows, rel=1e-12, abs=1e-15)


def test_hardest_positive_never_exceeds_strongest_positive():
    # Equilateral tuple at the sigmoid midpoint: every d_ij = 15 m, so w_near = w_far = 0.5,
    # and every f_i . f_j = 0.8 (f_k = (c, r cos t_k, r sin t_k), t_k = 0, 120, 240 degrees,
    # c^2 = 13/15 so that c^2 - r^2 / 2 = 0.8). Hence s+_ij = s-_ij = 0.4 for all pairs.
    # Mining, row i: hardest negative 0.4, positives kept (0.4 < 0.5). Strongest positive
    # M = 0.4; every off-diagonal shortfall 0.5 (0.8 - 0.4) = 0.2 > 0, so the hardest positive
    # is min(M, M + 0.2) = 0.4 and the negatives are kept (0.4 > 0.3).
    # With lambda = 0.4 every exponent is 0: row = log(1 + 2)/2 + log(1 + 2)/50.
    c = math.sqrt(13 / 15)
    r = math.sqrt(1 - c * c)
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
    descriptors = torch.stack([torch.full_like(angles, c), r * angles.cos(), r * angles.sin()], 1)
    distances = torch.full((3, 3), 15.0, dtype=torch.float64).fill_diagonal_(0.0)
    loss = SoftContrastiveLoss(SigmoidInfluence(0.8, 15.0), lamb=0.4, reduction="none")
    expected = math.log(3) / 2 + math.log(3) / 50
    assert loss(descriptors, distances).tolist() == pytest.approx([expected] * 3, rel=1e-9)


# --------------------------------------------------------------------- naive double loop


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("form", ["ms", "plain"])
@pytest.mark.parametrize("mining", [False, True])
@pytest.mark.parametrize("name", sorted(NAIVE_WEIGHTS))
def test_matches_naive_loop_float64(name, mining, form, seed):
    descriptors, distances = random_tuple(seed)
    hyper = {"alpha": 2.0, "beta": 50.0, "lamb": 0.6, "eps": 0.1, "mining": mining, "form": form}
    ours = soft_contrastive_loss(descriptors, distances, MODULES[name], **hyper)
    weight = NAIVE_WEIGHTS[name]
    expected = naive_wms_loss(descriptors, distances.tolist(), weight, **hyper)
    assert ours.dtype == torch.float64
    assert ours.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # The authors' self-pair handling moves the value by at most w_far(0) = 6.1e-6 (sigmoid).
    authors = naive_wms_loss(
        descriptors, distances.tolist(), weight, **hyper, self_pairs="authors"
    )
    assert ours.item() == pytest.approx(authors, abs=1e-5)


@pytest.mark.parametrize("mining", [False, True])
def test_float32_agrees_with_float64(mining):
    descriptors, distances = random_tuple(3, size=12, dim=16)
    loss = SoftContrastiveLoss(mining=mining, lamb=0.5)
    wide = loss(descriptors, distances)
    narrow = loss(descriptors.float(), distances.float())
    assert narrow.dtype == torch.float32
    assert narrow.item() == pytest.approx(wide.item(), rel=1e-5)


def test_half_precision_input_is_computed_in_float32():
    descriptors, distances = random_tuple(4)
    value = SoftContrastiveLoss(lamb=0.5)(descriptors.bfloat16(), distances)
    reference = SoftContrastiveLoss(lamb=0.5)(descriptors.bfloat16().float(), distances.float())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)


# ------------------------------------------------------ pytorch-metric-learning equivalence


def clustered_tuple(seed: int):
    """Three places; images of a place lie within 9 m, places at least 92 m apart.

    The step split at 15 m then equals "same label" exactly. Descriptors have non-negative
    entries, so every dot product is >= 0 and clamping similarities at 0 changes nothing.
    """
    x = torch.tensor([0.0, 4.0, 8.0, 100.0, 103.0, 200.0, 205.0, 209.0], dtype=torch.float64)
    positions = torch.stack([x, torch.zeros_like(x)], dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(3, 6, generator=generator, dtype=torch.float64)
    noise = torch.rand(8, 6, generator=generator, dtype=torch.float64)
    descriptors = centres[labels] + 0.5 * noise
    return descriptors, pairwise_metres(positions), labels


@pytest.mark.parametrize("lamb", [1.0, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_step_without_mining_equals_pml_multi_similarity(seed, lamb):
    descriptors, distances, labels = clustered_tuple(seed)
    ours_input = descriptors.clone().requires_grad_(True)
    pml_input = descriptors.clone().requires_grad_(True)
    ours = SoftContrastiveLoss(StepInfluence(15.0), alpha=2.0, beta=50.0, lamb=lamb, mining=False)
    pml = MultiSimilarityLoss(alpha=2.0, beta=50.0, base=lamb)
    ours_value = ours(ours_input, distances)
    pml_value = pml(pml_input, labels)
    ours_value.backward()
    pml_value.backward()
    assert ours_value.item() == pytest.approx(pml_value.item(), rel=1e-10)
    torch.testing.assert_close(ours_input.grad, pml_input.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_with_mining_equals_pml_miner_plus_loss(seed):
    # Every row has a positive and a negative here; PML's miner and the authors' mining then
    # agree (they differ for a row without positives: PML keeps none of its negatives).
    descriptors, distances, labels = clustered_tuple(seed)
    miner = MultiSimilarityMiner(epsilon=0.1)
    a1, p, a2, n = miner(descriptors, labels)
    n_positive_pairs = int(sum((labels == label).sum() ** 2 - (labels == label).sum()
                               for label in labels.unique()))
    n_negative_pairs = len(labels) ** 2 - len(labels) - n_positive_pairs
    assert len(a1) + len(a2) < n_positive_pairs + n_negative_pairs, "mining must drop a pair"

    ours_input = descriptors.clone().requires_grad_(True)
    pml_input = descriptors.clone().requires_grad_(True)
    ours = SoftContrastiveLoss(StepInfluence(15.0), eps=0.1, mining=True)
    ours_value = ours(ours_input, distances)
    pml_value = MultiSimilarityLoss(alpha=2.0, beta=50.0, base=1.0)(
        pml_input, labels, indices_tuple=(a1, p, a2, n)
    )
    ours_value.backward()
    pml_value.backward()
    assert ours_value.item() == pytest.approx(pml_value.item(), rel=1e-10)
    torch.testing.assert_close(ours_input.grad, pml_input.grad, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------ gradients, invariances


@pytest.mark.parametrize("form", ["ms", "plain"])
@pytest.mark.parametrize("mining", [False, True])
def test_gradcheck_float64(mining, form):
    descriptors, distances = random_tuple(5, size=5, dim=3, spread=40.0)
    descriptors.requires_grad_(True)

    def loss_of(d: torch.Tensor) -> torch.Tensor:
        return soft_contrastive_loss(
            d, distances, SigmoidInfluence(), lamb=0.5, mining=mining, form=form
        )

    assert torch.autograd.gradcheck(loss_of, (descriptors,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("mining", [False, True])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_invariant_to_permuting_the_tuple(name, mining):
    descriptors, distances = random_tuple(6, size=10)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    loss = SoftContrastiveLoss(MODULES[name], mining=mining, lamb=0.5)
    permuted = loss(descriptors[order], distances[order][:, order])
    assert permuted.item() == pytest.approx(loss(descriptors, distances).item(), rel=1e-12)


def _value_and_grad(descriptors: torch.Tensor, distances: torch.Tensor, **kwargs):
    leaf = descriptors.clone().requires_grad_(True)
    value = SoftContrastiveLoss(**kwargs)(leaf, distances)
    value.backward()
    return value, leaf.grad


@pytest.mark.parametrize("name", sorted(MODULES))
def test_kilometre_distances_give_finite_loss_and_gradients(name):
    generator = torch.Generator().manual_seed(7)
    positions = 5000.0 * torch.rand(10, 2, generator=generator)
    positions[1] = positions[0] + 3.0  # one close pair among kilometres
    descriptors = torch.randn(10, 8, generator=generator)
    value, grad = _value_and_grad(descriptors, pairwise_metres(positions), influence=MODULES[name])
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("mining", [False, True])
def test_identical_and_zero_descriptors_give_finite_gradients(mining):
    distances = pairwise_metres(torch.tensor([[0.0, 0.0], [3.0, 0.0], [30.0, 0.0], [1e4, 0.0]]))
    for descriptors in (torch.ones(4, 5), torch.zeros(4, 5)):
        value, grad = _value_and_grad(descriptors, distances, mining=mining)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_row_without_kept_pairs_gives_zero_and_finite_gradient():
    # Two near images with identical descriptors: no negative anywhere, and mining drops the
    # positive (s+ = 1 is not < 0 + eps). Every row is empty: the loss is exactly 0.
    distances = torch.tensor([[0.0, 5.0], [5.0, 0.0]])
    for form in ("ms", "plain"):
        value, grad = _value_and_grad(
            torch.ones(2, 3), distances, influence=StepInfluence(), form=form
        )
        assert value.item() == 0.0
        assert torch.isfinite(grad).all() and (grad == 0).all()


def test_accepts_numpy_distances_and_influence_by_name():
    descriptors, distances = random_tuple(8)
    by_name = SoftContrastiveLoss(influence="linear")(descriptors, distances.numpy())
    by_object = SoftContrastiveLoss(influence=LinearInfluence())(descriptors, distances)
    assert by_name.item() == pytest.approx(by_object.item(), rel=1e-12)


def test_training_steps_pull_near_pairs_together():
    # A property of a working loss: gradient steps on free descriptors make the near pair
    # (4 m apart) more similar than the far pairs (80 m, 160 m), although it starts less so.
    distances = pairwise_metres(torch.tensor([[0.0, 0.0], [4.0, 0.0], [80.0, 0.0], [160.0, 0.0]]))
    descriptors = torch.randn(4, 8, generator=torch.Generator().manual_seed(9))
    descriptors.requires_grad_(True)

    def anchor_similarities() -> list[float]:
        unit = torch.nn.functional.normalize(descriptors.detach(), dim=1)
        return (unit[0] @ unit.T).tolist()

    before = anchor_similarities()
    assert before[1] < min(before[2], before[3])
    optimiser = torch.optim.SGD([descriptors], lr=0.5)
    loss = SoftContrastiveLoss()
    initial_value = loss(descriptors, distances).item()
    for _ in range(100):
        optimiser.zero_grad()
        value = loss(descriptors, distances)
        value.backward()
        optimiser.step()
    after = anchor_similarities()
    assert value.item() < initial_value
    assert after[1] > before[1] + 0.2
    assert after[1] > max(after[2], after[3]) + 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_descriptors_with_cpu_distances_match_cpu():
    descriptors, distances = random_tuple(10, size=16, dim=32)
    loss = SoftContrastiveLoss(lamb=0.5)
    on_gpu = loss(descriptors.float().cuda(), distances.float())
    assert on_gpu.device.type == "cuda"
    assert on_gpu.item() == pytest.approx(loss(descriptors.float(), distances).item(), rel=1e-5)


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("descriptors", "distances", "message"),
    [
        (torch.randn(4), torch.zeros(4, 4), "shape \\(B, D\\)"),
        (torch.randn(2, 3, 4), torch.zeros(2, 2), "shape \\(B, D\\)"),
        (torch.randn(1, 4), torch.zeros(1, 1), "B >= 2"),
        (torch.randn(3, 4), torch.zeros(3, 2), "shape \\(B, B\\)"),
        (torch.randn(3, 4), torch.zeros(3), "shape \\(B, B\\)"),
        (torch.randn(3, 4), torch.tensor([[0, 1, float("nan")]] * 3), "NaN"),
        (torch.randn(3, 4), torch.tensor([[0, 1, float("inf")]] * 3), "NaN or inf"),
        (torch.randn(3, 4), torch.tensor([[0.0, -1.0, 2.0]] * 3), ">= 0"),
        (torch.full((3, 4), float("nan")), torch.zeros(3, 3), "diverged"),
        (torch.randint(0, 3, (3, 4)), torch.zeros(3, 3), "floating point"),
        ([[1.0, 0.0], [0.0, 1.0]], torch.zeros(2, 2), "torch.Tensor"),
    ],
)
def test_bad_input_raises_value_error(descriptors, distances, message):
    with pytest.raises(ValueError, match=message):
        SoftContrastiveLoss()(descriptors, distances)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"beta": -1.0}, "beta"),
        ({"lamb": float("nan")}, "lamb"),
        ({"eps": -0.1}, "eps"),
        ({"mining": "yes"}, "mining"),
        ({"form": "sum"}, "form"),
        ({"reduction": "sum"}, "reduction"),
        ({"influence": 3.0}, "influence"),
        ({"influence": "gaussian"}, "known influence functions: linear, sigmoid, step, tanh"),
    ],
)
def test_bad_hyper_parameters_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoftContrastiveLoss(**kwargs)


def test_influence_returning_wrong_shape_raises():
    def broken(distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return distances[0], distances[0]

    with pytest.raises(ValueError, match="w_near of shape"):
        soft_contrastive_loss(torch.randn(3, 2), torch.zeros(3, 3), broken)
