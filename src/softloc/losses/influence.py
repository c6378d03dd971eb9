"""Influence functions: geometric distance in metres -> (near weight, far weight).

In soft contrastive learning every pair of a tuple is at once a positive and a negative pair,
weighted by an influence function of the pair's geometric distance ``d``: ``w_near(d)`` (the
weight of the pair as a positive) falls from about 1 at ``d = 0`` to 0 far away, and
``w_far(d)`` (its weight as a negative) rises from about 0 to 1. For all four functions here
``w_near + w_far = 1`` for ``d >= 0``.

The sigmoid, linear and tanh functions follow the authors' TensorFlow code
(janinethoma/soft_contrastive_learning, ``model/losses.py``, ``wms_loss``, its
``wfunction='exp' | 'lin' | 'tanh'`` branches, with ``d_alpha`` = steepness and ``d_beta`` =
midpoint / radius / scale). The step function is not in their code: it recovers the hard split
of the classic losses and is used as a check against the multi-similarity loss.

Each function is a small ``nn.Module`` without parameters; call it on a tensor of distances
of any shape and get two tensors of that shape and dtype.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .registry import register_influence

__all__ = [
    "InfluenceFunction",
    "LinearInfluence",
    "SigmoidInfluence",
    "StepInfluence",
    "TanhInfluence",
]


def _positive_number(name: str, value: object, unit: str) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number ({unit}), got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0.0:
        raise ValueError(f"{name} must be a positive finite number ({unit}), got {number!r}")
    return number


def _as_float_tensor(distances: torch.Tensor) -> torch.Tensor:
    """Distances as a floating-point tensor (integers and array-likes are converted)."""
    tensor = torch.as_tensor(distances)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


class InfluenceFunction(nn.Module):
    """Base class: ``forward(distances) -> (w_near, w_far)``, both shaped like ``distances``.

    Subclasses implement :meth:`weights`; :meth:`forward` converts the input to a floating
    tensor first.
    """

    def forward(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of the pairs as positives and as negatives.

        Args:
            distances: geometric distances in metres, any shape; expected ``>= 0``.

        Returns:
            ``(w_near, w_far)``, each shaped like ``distances``, values in [0, 1] for
            distances ``>= 0``.
        """
        return self.weights(_as_float_tensor(distances))

    def weights(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute ``(w_near, w_far)`` from a floating tensor of distances in metres."""
        raise NotImplementedError


@register_influence("sigmoid")
class SigmoidInfluence(InfluenceFunction):
    """Logistic influence, the paper's default.

    ``w_near(d) = 1 / (1 + exp(a (d - b)))`` and ``w_far(d) = 1 / (1 + exp(a (b - d)))``, with
    ``a`` = steepness and ``b`` = midpoint, as the authors' ``wfunction='exp'`` branch. Both are
    computed with ``torch.sigmoid``, so distances of kilometres give exact 0 / 1 and never
    inf or NaN. At the midpoint both weights are 0.5. Note ``w_near(0)`` is slightly below 1
    (``1 - 6.1e-6`` for the defaults).

    In float32 ``w_near`` underflows to exactly 0 beyond about ``b + 103 / a`` metres (144 m
    for the defaults; about ``b + 745 / a`` in float64). A pair whose weight is exactly 0
    takes no part in the soft contrastive loss (as in the authors' code, which tests
    ``mask > 0``), so the loss value, not its gradient, can differ slightly between dtypes
    for such pairs.

    Args:
        steepness: ``a``, per metre (> 0). The authors' best model uses 0.8.
        midpoint: ``b``, metres (> 0), where both weights are 0.5. The authors use 15 m.
    """

    def __init__(self, steepness: float = 0.8, midpoint: float = 15.0) -> None:
        super().__init__()
        self.steepness = _positive_number("steepness", steepness, "per metre")
        self.midpoint = _positive_number("midpoint", midpoint, "metres")

    def weights(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :class:`SigmoidInfluence`."""
        logit = self.steepness * (distances - self.midpoint)
        return torch.sigmoid(-logit), torch.sigmoid(logit)

    def extra_repr(self) -> str:
        return f"steepness={self.steepness}, midpoint={self.midpoint}"


@register_influence("linear")
class LinearInfluence(InfluenceFunction):
    """Linear ramp: ``w_near = max(0, 1 - d / b)``, ``w_far = min(1, d / b)``.

    Identical to the authors' ``wfunction='lin'`` branch (they write it with ``tf.where(d < b,
    ...)``). Pairs at ``d >= b`` have ``w_near = 0`` exactly and so are no positive at all.

    Args:
        radius: ``b``, metres (> 0), where the near weight reaches 0.
    """

    def __init__(self, radius: float = 15.0) -> None:
        super().__init__()
        self.radius = _positive_number("radius", radius, "metres")

    def weights(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :class:`LinearInfluence`."""
        ratio = distances / self.radius
        return torch.clamp(1.0 - ratio, min=0.0), torch.clamp(ratio, max=1.0)

    def extra_repr(self) -> str:
        return f"radius={self.radius}"


@register_influence("tanh")
class TanhInfluence(InfluenceFunction):
    """Hyperbolic tangent: ``w_near = 1 - tanh(d / b)``, ``w_far = tanh(d / b)``.

    As the authors' ``wfunction='tanh'`` branch. ``w_far(b) = tanh(1) = 0.76``: the scale is
    not a midpoint (both weights are 0.5 at ``d = b * atanh(0.5) = 0.549 b``).

    Args:
        scale: ``b``, metres (> 0).
    """

    def __init__(self, scale: float = 15.0) -> None:
        super().__init__()
        self.scale = _positive_number("scale", scale, "metres")

    def weights(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :class:`TanhInfluence`."""
        far = torch.tanh(distances / self.scale)
        return 1.0 - far, far

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


@register_influence("step")
class StepInfluence(InfluenceFunction):
    """Hard split: ``w_near = 1[d < t]``, ``w_far = 1[d >= t]``.

    Not in the authors' code. With it the soft contrastive loss becomes the multi-similarity
    loss with "same place" labels (their ``ms_loss``), which makes it both a test and the
    ablation "all pairs, hard 0/1 weights".

    Args:
        threshold: ``t``, metres (> 0).
    """

    def __init__(self, threshold: float = 15.0) -> None:
        super().__init__()
        self.threshold = _positive_number("threshold", threshold, "metres")

    def weights(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :class:`StepInfluence`."""
        near = (distances < self.threshold).to(distances.dtype)
        far = (distances >= self.threshold).to(distances.dtype)
        return near, far

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
