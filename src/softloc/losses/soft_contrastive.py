"""The soft contrastive loss module (a thin wrapper over :mod:`.functional`)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from . import functional
from .influence import SigmoidInfluence
from .registry import create_influence, register_loss

__all__ = ["SoftContrastiveLoss"]


@register_loss("soft_contrastive")
class SoftContrastiveLoss(nn.Module):
    """Soft contrastive loss (Thoma, Paudel, Van Gool, NeurIPS 2020).

    Called as ``loss(descriptors, distances)`` on one tuple; see
    :func:`softloc.losses.functional.soft_contrastive_loss` for the equation and
    docs/losses.md for where it follows and differs from the authors' ``wms_loss``.

    Args:
        influence: an influence function (distances in metres -> ``(w_near, w_far)``), or the
            registered name of one built with its defaults (``"sigmoid"``, ``"linear"``,
            ``"tanh"``, ``"step"``). Default: ``SigmoidInfluence(steepness=0.8,
            midpoint=15.0)``.
        influence_options: keyword arguments for an influence given by name
            (``softloc train`` passes ``loss.influence`` and ``loss.influence_options``).
        alpha: positive-side scale (> 0), default 2.
        beta: negative-side scale (> 0), default 50.
        lamb: similarity offset ``lambda``, default 1.
        eps: mining margin (>= 0), default 0.1.
        mining: soft multi-similarity pair mining, default on.
        form: ``"ms"`` (default) or ``"plain"``.
        reduction: ``"mean"`` (default, a scalar) or ``"none"`` (per-row (B,) losses).

    Raises:
        ValueError: on bad hyper-parameters (at construction) or bad input (at call).
    """

    from_config: ClassVar[dict[str, str]] = {
        "influence": "loss.influence",
        "influence_options": "loss.influence_options",
    }

    def __init__(
        self,
        influence: nn.Module | functional.Influence | str | None = None,
        influence_options: dict[str, Any] | None = None,
        alpha: float = 2.0,
        beta: float = 50.0,
        lamb: float = 1.0,
        eps: float = 0.1,
        mining: bool = True,
        form: str = "ms",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        functional.check_soft_contrastive_args(alpha, beta, lamb, eps, mining, form, reduction)
        if influence_options and not isinstance(influence, str):
            raise ValueError("influence_options apply only to an influence given by name")
        if influence is None:
            influence = SigmoidInfluence()
        elif isinstance(influence, str):
            influence = create_influence(influence, **(influence_options or {}))
        elif not callable(influence):
            raise ValueError(
                "influence must be an influence function, a registered name, or None; "
                f"got {influence!r}"
            )
        self.influence = influence
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.lamb = float(lamb)
        self.eps = float(eps)
        self.mining = mining
        self.form = form
        self.reduction = reduction

    def forward(self, descriptors: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """Loss of one tuple.

        Args:
            descriptors: (B, D), B >= 2, L2-normalised.
            distances: (B, B) metres between camera positions, finite, >= 0.

        Returns:
            A scalar, or (B,) per-row losses with ``reduction="none"``.
        """
        return functional.soft_contrastive_loss(
            descriptors,
            distances,
            self.influence,
            alpha=self.alpha,
            beta=self.beta,
            lamb=self.lamb,
            eps=self.eps,
            mining=self.mining,
            form=self.form,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, lamb={self.lamb}, eps={self.eps}, "
            f"mining={self.mining}, form={self.form!r}, reduction={self.reduction!r}"
        )
