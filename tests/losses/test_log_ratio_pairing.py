"""LogRatioLoss(pairing="authors"): the element-wise pairing of the authors' TensorFlow code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from softloc.losses import LogRatioLoss, create_loss
from softloc.losses.pairwise import log_ratio_loss


def one_two_two_tuple() -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor + 2 near + 2 far on a line; unit descriptors at angles giving e = 1, 2, 3, 4.

    e(a, f) = 2 - 2 cos(angle): 60 deg -> 1, 90 -> 2, 120 -> 3, 180 -> 4. Metric distances to
    the anchor 2, 4 (near) and 20, 40 m (far): g = 4, 16, 400, 1600.
    """
    angles = torch.tensor([0.0, 60.0, 90.0, 120.0, 180.0], dtype=torch.float64) * math.pi / 180
    descriptors = torch.stack([angles.cos(), angles.sin()], dim=1)
    x = torch.tensor([0.0, 2.0, 4.0, 20.0, 40.0], dtype=torch.float64)
    return descriptors, (x[:, None] - x[None, :]).abs()


def test_authors_pairing_by_hand_on_a_1_2_2_tuple() -> None:
    descriptors, distances = one_two_two_tuple()
    # Pair (near i, far j): log(e_i / e_j) - log(g_near_j / g_far_j) for the authors,
    # log(e_i / e_j) - log(g_near_i / g_far_j) as intended.
    #   (1,1): log(1/3) - log(4/400)   = ln(100/3)  (both)
    #   (2,1): log(2/3) - log(4/400)   = ln(200/3)  authors; log(2/3) - log(16/400) = ln(50/3)
    #   (1,2): log(1/4) - log(16/1600) = ln(25)     authors; log(1/4) - log(4/1600) = ln(100)
    #   (2,2): log(2/4) - log(16/1600) = ln(50)     (both)
    authors = np.mean(np.log([100 / 3, 200 / 3, 25, 50]) ** 2)
    intended = np.mean(np.log([100 / 3, 50 / 3, 100, 50]) ** 2)
    options = {"near_radius": 10.0, "far_radius": 15.0, "eps": 1e-12}
    got_authors = LogRatioLoss(**options, pairing="authors")(descriptors, distances)
    got_intended = LogRatioLoss(**options)(descriptors, distances)
    assert got_authors.item() == pytest.approx(authors, rel=1e-9)
    assert got_intended.item() == pytest.approx(intended, rel=1e-9)
    assert abs(authors - intended) > 0.1  # 13.90 against 14.18


def tf_logratio_in_numpy(anchor, near, far, near_metres, far_metres) -> float:
    """The authors' logratio_loss written with numpy's broadcasting (TensorFlow's rules):
    a batch of one tuple; features (1, 1, D), (1, P, D), (1, N, D); squared metric distances
    shaped (1, P, 1) and (1, N, 1) as their training script feeds them."""
    a, pos, neg = anchor[None, None], near[None], far[None]
    squared_pos_dists = (near_metres**2)[None, :, None]
    squared_neg_dists = (far_metres**2)[None, :, None]
    pos_residuals = ((a - pos) ** 2).sum(axis=2)  # (1, P)
    neg_residuals = ((a - neg) ** 2).sum(axis=2)  # (1, N)
    feat_ratio = np.log(pos_residuals / neg_residuals.transpose())  # (N, P)
    dist_ratio = np.log(squared_pos_dists / squared_neg_dists.transpose())  # (1, P, 1)
    squared_diffs = (feat_ratio - dist_ratio) ** 2  # (1, N, P)
    return float(squared_diffs.mean(axis=1).mean(axis=1).mean(axis=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_authors_pairing_equals_their_broadcasting_for_six_and_six(seed) -> None:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(13, 8))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    near_metres = rng.uniform(0.5, 9.5, size=6)
    far_metres = rng.uniform(15.0, 200.0, size=6)
    x = np.concatenate([[0.0], near_metres, far_metres])
    distances = torch.tensor(np.abs(x[:, None] - x[None, :]))
    expected = tf_logratio_in_numpy(features[0], features[1:7], features[7:], near_metres,
                                    far_metres)
    ours = log_ratio_loss(torch.tensor(features), distances, near_radius=10.0,
                          far_radius=15.0, eps=1e-12, pairing="authors")
    assert ours.item() == pytest.approx(expected, rel=1e-9)
    intended = log_ratio_loss(torch.tensor(features), distances, near_radius=10.0,
                              far_radius=15.0, eps=1e-12)
    assert abs(intended.item() - expected) > 1e-3


def test_authors_pairing_refuses_unequal_counts_and_says_why() -> None:
    descriptors, distances = one_two_two_tuple()
    loss = LogRatioLoss(near_radius=10.0, far_radius=15.0, pairing="authors")
    with pytest.raises(ValueError, match="element by element.*2 near and 1 far"):
        loss(descriptors[:4], distances[:4, :4])


def test_pairing_option_is_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="pairing"):
        create_loss("log_ratio", pairing="tf")
    with pytest.raises(ValueError, match="pairs='near_far'"):
        create_loss("log_ratio", pairing="authors", pairs="all")
    assert LogRatioLoss().options["pairing"] == "intended"
