"""Quadruplet losses (PointNetVLAD forms) and the Huber distance triplet loss.

All take one tuple with the anchor in row 0 and classify the other rows by their metric
distance to it (near: ``d < near_radius``, far: ``d >= far_radius``). ``e(x, y)`` is the
squared L2 distance between L2-normalised descriptors. See docs/losses.md.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .functional import (
    _choice,
    _real,
    check_triplet_args,
    pick_positive,
    prepare_tuple,
    split_by_anchor,
    triplet_loss,
)
from .options import OptionsLoss
from .registry import TUPLE_RADII, register_loss

__all__ = [
    "HuberDistanceTripletLoss",
    "LazyQuadrupletLoss",
    "QuadrupletLoss",
    "huber_distance_triplet_loss",
    "quadruplet_loss",
]


def quadruplet_loss(
    descriptors: torch.Tensor,
    distances: torch.Tensor,
    margin: float = 0.1,
    second_margin: float = 0.2,
    near_radius: float = 15.0,
    far_radius: float = 15.0,
    positive: str = "closest",
    reduction: str = "sum",
) -> torch.Tensor:
    """PointNetVLAD quadruplet loss on one tuple: anchor row 0, the *last* row the extra far image.

    With ``p`` the chosen near image, ``F`` the far rows except the last one and ``o`` the last
    row (which must be far from the anchor)::

        L = R_k [m1 + e(a, p) - e(a, f_k)]+  +  R_k [m2 + e(a, p) - e(o, f_k)]+

    ``R`` is the sum (``reduction="sum"``, PointNetVLAD's ``quadruplet_loss``) or the max
    (``"max"``, its ``lazy_quadruplet_loss``) over k in F. In the second term only far images
    at least ``far_radius`` from ``o`` take part (PointNetVLAD draws ``o`` away from every
    negative; our sampler keeps far images ``tuples.far_spacing`` apart, so pairs closer than
    the far radius are masked out, and the term is 0 if none is left).

    Raises:
        ValueError: bad arguments; no near image; fewer than two far images; the last row not
            far from the anchor.
    """
    check_triplet_args(margin, near_radius, far_radius, positive, reduction)
    _real("second_margin", second_margin, minimum=0.0)
    if reduction not in ("sum", "max"):
        raise ValueError(f"quadruplet reduction must be 'sum' or 'max', got {reduction!r}")
    descriptors, distances = prepare_tuple(descriptors, distances)
    if distances.shape[0] < 4:
        raise ValueError("the quadruplet loss needs an anchor, a near and two far images (B >= 4)")
    if not bool(distances[0, -1] >= far_radius):
        raise ValueError(
            f"the quadruplet loss takes the last row as the extra far image, but it lies "
            f"{float(distances[0, -1]):.1f} m from the anchor (< far_radius {far_radius} m)"
        )
    is_near, is_far = split_by_anchor(
        distances[:-1, :-1], near_radius, far_radius, "the quadruplet loss"
    )
    squared = (descriptors[1:-1] - descriptors[:1]).pow(2).sum(dim=1)
    positive_squared = pick_positive(squared[is_near], positive)
    far = descriptors[1:-1][is_far]
    first = F.relu(margin + positive_squared - squared[is_far])
    other_squared = (far - descriptors[-1:]).pow(2).sum(dim=1)
    usable = distances[-1, 1:-1][is_far] >= far_radius
    second = F.relu(second_margin + positive_squared - other_squared)[usable]
    if reduction == "sum":
        return first.sum() + second.sum()
    return first.max() + (second.max() if len(second) else second.sum())


def huber_distance_triplet_loss(
    descriptors: torch.Tensor,
    distances: torch.Tensor,
    margin: float = 0.1,
    lam: float = 0.5,
    near_radius: float = 15.0,
    far_radius: float = 15.0,
    max_descriptor_squared: float = 2.0,
    delta: float = 1.0,
    positive: str = "closest",
    reduction: str = "sum",
) -> torch.Tensor:
    """Triplet loss plus a Huber term regressing descriptor onto metric distances (Thoma 2020).

    ``L = triplet + lam * mean_{j near} huber(e(a, f_j) / f2max, d_0j^2 / near_radius^2)``,
    with the Huber loss of threshold ``delta`` (0.5 x^2 below it, delta (|x| - delta / 2)
    above), ``f2max = max_descriptor_squared`` (the authors use 2.0) and the metric distances
    normalised by the near radius (their ``MAX_POS_RADIUS``). The triplet part is
    :func:`~softloc.losses.functional.triplet_loss` with ``positive`` and ``reduction``.
    """
    _real("lam", lam, minimum=0.0)
    _real("max_descriptor_squared", max_descriptor_squared, minimum=0.0, strict=True)
    _real("delta", delta, minimum=0.0, strict=True)
    triplet = triplet_loss(
        descriptors, distances, margin, near_radius, far_radius, positive, reduction
    )
    descriptors, distances = prepare_tuple(descriptors, distances)
    is_near, _ = split_by_anchor(distances, near_radius, far_radius, "the distance loss")
    squared = (descriptors[1:] - descriptors[:1]).pow(2).sum(dim=1)[is_near]
    metric = distances[0, 1:][is_near].pow(2) / near_radius**2
    regression = F.huber_loss(squared / max_descriptor_squared, metric, delta=delta)
    return triplet + lam * regression


@register_loss("quadruplet")
class QuadrupletLoss(nn.Module):
    """PointNetVLAD quadruplet loss (Chen et al. CVPR 2017 in PointNetVLAD's form).

    The tuple's last row is the extra far image; see :func:`quadruplet_loss`.

    Args:
        margin: m1 (default 0.1). second_margin: m2 (default 0.2).
        near_radius, far_radius: metres (``tuples.*`` in a run).
        positive: ``"closest"`` (PointNetVLAD) or ``"hardest"`` near image.
    """

    from_config: ClassVar[dict[str, str]] = TUPLE_RADII
    reduction: ClassVar[str] = "sum"

    def __init__(
        self,
        margin: float = 0.1,
        second_margin: float = 0.2,
        near_radius: float = 15.0,
        far_radius: float = 15.0,
        positive: str = "closest",
    ) -> None:
        super().__init__()
        check_triplet_args(margin, near_radius, far_radius, positive, self.reduction)
        _real("second_margin", second_margin, minimum=0.0)
        self.margin = float(margin)
        self.second_margin = float(second_margin)
        self.near_radius = float(near_radius)
        self.far_radius = float(far_radius)
        self.positive = positive

    def forward(self, descriptors: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """Loss of one tuple (anchor row 0, extra far image last)."""
        return quadruplet_loss(
            descriptors, distances, self.margin, self.second_margin, self.near_radius,
            self.far_radius, self.positive, self.reduction,
        )


@register_loss("lazy_quadruplet")
class LazyQuadrupletLoss(QuadrupletLoss):
    """PointNetVLAD's lazy quadruplet loss: max instead of sum over far images in both terms."""

    reduction: ClassVar[str] = "max"


@register_loss("huber_distance_triplet")
class HuberDistanceTripletLoss(OptionsLoss):
    """Triplet + lambda * Huber distance regression (Thoma et al. 2020, "Geometrically
    mappable image features"; the authors' ``distance_triplet_loss`` with
    ``huber_distance_loss``). See :func:`huber_distance_triplet_loss`.

    Args:
        margin: triplet margin (0.1). lam: weight of the Huber term (0.5).
        near_radius, far_radius: metres (``tuples.*`` in a run).
        max_descriptor_squared: descriptor normalisation (2.0, as the authors).
        delta: Huber threshold (1.0, TensorFlow's default).
        positive, reduction: of the triplet part (PointNetVLAD: ``"closest"``, ``"sum"``).
    """

    function = staticmethod(huber_distance_triplet_loss)
    from_config: ClassVar[dict[str, str]] = TUPLE_RADII

    def __init__(
        self,
        margin: float = 0.1,
        lam: float = 0.5,
        near_radius: float = 15.0,
        far_radius: float = 15.0,
        max_descriptor_squared: float = 2.0,
        delta: float = 1.0,
        positive: str = "closest",
        reduction: str = "sum",
    ) -> None:
        check_triplet_args(margin, near_radius, far_radius, positive, reduction)
        _choice("reduction", reduction, ("sum", "mean", "max"))
        _real("lam", lam, minimum=0.0)
        _real("max_descriptor_squared", max_descriptor_squared, minimum=0.0, strict=True)
        _real("delta", delta, minimum=0.0, strict=True)
        super().__init__(
            margin=float(margin), lam=float(lam), near_radius=float(near_radius),
            far_radius=float(far_radius), max_descriptor_squared=float(max_descriptor_squared),
            delta=float(delta), positive=positive, reduction=reduction,
        )
