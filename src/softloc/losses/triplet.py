"""The PointNetVLAD triplet losses (thin wrappers over :func:`.functional.triplet_loss`)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from . import functional
from .registry import TUPLE_RADII, register_loss

__all__ = ["LazyTripletLoss", "TripletLoss"]


@register_loss("triplet")
class TripletLoss(nn.Module):
    """PointNetVLAD triplet loss on one tuple with the anchor in row 0 (Uy & Lee, CVPR 2018).

    Tuple convention: row 0 is the anchor; the others are classified by their geometric
    distance to it: near if ``d < near_radius``, far if ``d >= far_radius``, ignored in
    between. (The tuple sampler puts the anchor first, then the near images, then the far
    ones.) The loss sums, over far images, ``max(0, margin + ||a - p||^2 - ||a - f||^2)`` on
    L2-normalised descriptors, ``p`` being the near image closest to the anchor in descriptor
    space (PointNetVLAD's ``best_pos_distance``). See
    :func:`softloc.losses.functional.triplet_loss`.

    Args:
        margin: hinge margin (>= 0), default 0.1, in squared descriptor distance.
        near_radius: metres, default 15 (``softloc train`` passes ``tuples.near_radius``).
        far_radius: metres (>= near_radius), default 15 (``tuples.far_radius``).
        positive: ``"closest"`` (default, PointNetVLAD's ``triplet_loss``) or ``"hardest"``
            (the authors' ``evil_triplet_loss``).
        reduction: over far images: ``"sum"`` (default, PointNetVLAD), ``"mean"``, ``"max"``
            (the lazy triplet loss) or ``"none"``.

    Raises:
        ValueError: on bad hyper-parameters (at construction) or at call on bad input or a
            tuple without near or far images.
    """

    from_config: ClassVar[dict[str, str]] = TUPLE_RADII
    default_reduction: ClassVar[str] = "sum"

    def __init__(
        self,
        margin: float = 0.1,
        near_radius: float = 15.0,
        far_radius: float = 15.0,
        positive: str = "closest",
        reduction: str | None = None,
    ) -> None:
        super().__init__()
        reduction = self.default_reduction if reduction is None else reduction
        functional.check_triplet_args(margin, near_radius, far_radius, positive, reduction)
        self.margin = float(margin)
        self.near_radius = float(near_radius)
        self.far_radius = float(far_radius)
        self.positive = positive
        self.reduction = reduction

    def forward(self, descriptors: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """Loss of one tuple.

        Args:
            descriptors: (B, D), anchor in row 0, L2-normalised.
            distances: (B, B) metres; only row 0 (anchor to the others) is used.

        Returns:
            A scalar, or the (n_far,) hinges with ``reduction="none"``.
        """
        return functional.triplet_loss(
            descriptors,
            distances,
            margin=self.margin,
            near_radius=self.near_radius,
            far_radius=self.far_radius,
            positive=self.positive,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, near_radius={self.near_radius}, "
            f"far_radius={self.far_radius}, positive={self.positive!r}, "
            f"reduction={self.reduction!r}"
        )


@register_loss("lazy_triplet")
class LazyTripletLoss(TripletLoss):
    """PointNetVLAD's lazy triplet loss: the largest hinge over far images instead of the sum.

    Same arguments as :class:`TripletLoss`; ``reduction`` defaults to ``"max"``.
    """

    default_reduction: ClassVar[str] = "max"
