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

**Near cut-off.** Every function has an explicit ``near_cutoff`` (metres): from that distance
on, ``w_near`` is exactly 0 and ``w_far`` exactly 1, on every device and in every dtype. The
soft contrastive loss lets a pair into its positive sum when ``w_near > 0`` (as the authors'
code does), and a pair with a tiny non-zero ``w_near`` adds about ``exp(alpha * lamb)`` to that
sum; without an explicit cut-off, *where* the formula's weight first rounds to 0 depends on
the dtype and on how the hardware handles subnormal numbers (torch float32 keeps the sigmoid
weight positive to 125.9 m, TensorFlow flushes it to 0 from 124.17 m). The defaults are the
distances where the authors' TensorFlow float32 code reaches 0 (docs/losses.md, "Near
cut-off"); ``near_cutoff=float("inf")`` gives the pure formula.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .registry import register_influence

__all__ = [
    "FLOAT32_NORMAL_EXPONENT",
    "TANH_FLOAT32_SATURATION",
    "InfluenceFunction",
    "LinearInfluence",
    "SigmoidInfluence",
    "StepInfluence",
    "TanhInfluence",
]

#: 2^-126 is the smallest normal float32: the sigmoid's w_near = exp(-a (d - b)) (far out)
#: leaves the normal range at a (d - b) = 126 ln 2, and TensorFlow flushes what lies below.
FLOAT32_NORMAL_EXPONENT = 126

#: TensorFlow's float32 tanh (Eigen's fast rational approximation, whose argument is clamped
#: at this value) returns exactly 1.0 from this argument on, as measured by running the
#: authors' code under TensorFlow 2 (issue 11).
TANH_FLOAT32_SATURATION = 7.90531110763549805


def _positive_number(name: str, value: object, unit: str) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number ({unit}), got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0.0:
        raise ValueError(f"{name} must be a positive finite number ({unit}), got {number!r}")
    return number


def _near_cutoff(value: object, default: float) -> float:
    """The near cut-off in metres: ``default`` for None, else a number > 0 (``inf`` allowed).

    Strings that spell a number (YAML reads ``inf`` as the string ``"inf"``; ``.inf`` is the
    YAML float) are accepted, so ``loss.influence_options={near_cutoff: inf}`` works.
    """
    if value is None:
        return default
    number: float
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(
                f"near_cutoff must be a number of metres > 0 or inf, got {value!r}"
            ) from None
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"near_cutoff must be a number of metres > 0 or inf, got {value!r}")
    else:
        number = float(value)
    if math.isnan(number) or number <= 0.0:
        raise ValueError(f"near_cutoff must be a number of metres > 0 or inf, got {number!r}")
    return number


def _as_float_tensor(distances: torch.Tensor) -> torch.Tensor:
    """Distances as a floating-point tensor (integers and array-likes are converted)."""
    tensor = torch.as_tensor(distances)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


class InfluenceFunction(nn.Module):
    """Base class: ``forward(distances) -> (w_near, w_far)``, both shaped like ``distances``.

    Subclasses implement :meth:`weights` (the pure formula) and set ``near_cutoff``
    (metres); :meth:`forward` converts the input to a floating tensor, computes the formula
    and sets ``w_near = 0``, ``w_far = 1`` wherever ``distance >= near_cutoff``.
    """

    near_cutoff: float = math.inf

    def forward(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of the pairs as positives and as negatives.

        Args:
            distances: geometric distances in metres, any shape; expected ``>= 0``.

        Returns:
            ``(w_near, w_far)``, each shaped like ``distances``, values in [0, 1] for
            distances ``>= 0``; exactly ``(0, 1)`` from ``near_cutoff`` on.
        """
        distances = _as_float_tensor(distances)
        w_near, w_far = self.weights(distances)
        if math.isinf(self.near_cutoff):
            return w_near, w_far
        beyond = distances >= self.near_cutoff
        return (
            torch.where(beyond, torch.zeros_like(w_near), w_near),
            torch.where(beyond, torch.ones_like(w_far), w_far),
        )

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

    ``w_near`` is exactly 0 from ``near_cutoff`` on, by default ``b + 126 ln 2 / a``
    (124.17 m for the defaults): there ``w_near`` falls below 2^-126, the smallest normal
    float32, and the authors' TensorFlow code (which flushes subnormals to 0) gives 0. Without
    the cut-off (``near_cutoff=inf``) torch float32 reaches 0 only at 125.9 m (subnormals
    kept) and float64 at 902.2 m, so the set of positive pairs, and with it the loss value,
    would depend on the dtype and the device.

    Args:
        steepness: ``a``, per metre (> 0). The authors' best model uses 0.8.
        midpoint: ``b``, metres (> 0), where both weights are 0.5. The authors use 15 m.
        near_cutoff: metres (> 0, or inf for none); default ``b + 126 ln 2 / a``.
    """

    def __init__(
        self, steepness: float = 0.8, midpoint: float = 15.0, near_cutoff: float | None = None
    ) -> None:
        super().__init__()
        self.steepness = _positive_number("steepness", steepness, "per metre")
        self.midpoint = _positive_number("midpoint", midpoint, "metres")
        self.near_cutoff = _near_cutoff(
            near_cutoff, self.midpoint + FLOAT32_NORMAL_EXPONENT * math.log(2.0) / self.steepness
        )

    def weights(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :class:`SigmoidInfluence`."""
        logit = self.steepness * (distances - self.midpoint)
        return torch.sigmoid(-logit), torch.sigmoid(logit)

    def extra_repr(self) -> str:
        return (
            f"steepness={self.steepness}, midpoint={self.midpoint}, "
            f"near_cutoff={self.near_cutoff}"
        )


@register_influence("linear")
class LinearInfluence(InfluenceFunction):
    """Linear ramp: ``w_near = max(0, 1 - d / b)``, ``w_far = min(1, d / b)``.

    Identical to the authors' ``wfunction='lin'`` branch (they write it with ``tf.where(d < b,
    ...)``). Pairs at ``d >= b`` have ``w_near = 0`` exactly and so are no positive at all.

    Args:
        radius: ``b``, metres (> 0), where the near weight reaches 0.
        near_cutoff: metres (> 0, or inf); default ``radius``, where the formula is 0 anyway.
    """

    def __init__(self, radius: float = 15.0, near_cutoff: float | None = None) -> None:
        super().__init__()
        self.radius = _positive_number("radius", radius, "metres")
        self.near_cutoff = _near_cutoff(near_cutoff, self.radius)

    def weights(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :class:`LinearInfluence`."""
        ratio = distances / self.radius
        return torch.clamp(1.0 - ratio, min=0.0), torch.clamp(ratio, max=1.0)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, near_cutoff={self.near_cutoff}"


@register_influence("tanh")
class TanhInfluence(InfluenceFunction):
    """Hyperbolic tangent: ``w_near = 1 - tanh(d / b)``, ``w_far = tanh(d / b)``.

    As the authors' ``wfunction='tanh'`` branch. ``w_far(b) = tanh(1) = 0.76``: the scale is
    not a midpoint (both weights are 0.5 at ``d = b * atanh(0.5) = 0.549 b``).

    ``w_near`` is exactly 0 from ``near_cutoff`` on, by default ``7.90531110763549805 * b``
    (118.58 m for b = 15 m): from that ratio on, TensorFlow's float32 tanh (Eigen's fast
    rational approximation, used by the authors' code) returns exactly 1.0. Without the
    cut-off torch float32 keeps ``1 - tanh`` positive to 135.2 m.

    Args:
        scale: ``b``, metres (> 0).
        near_cutoff: metres (> 0, or inf for none); default ``7.90531110763549805 * scale``.
    """

    def __init__(self, scale: float = 15.0, near_cutoff: float | None = None) -> None:
        super().__init__()
        self.scale = _positive_number("scale", scale, "metres")
        self.near_cutoff = _near_cutoff(near_cutoff, TANH_FLOAT32_SATURATION * self.scale)

    def weights(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :class:`TanhInfluence`."""
        far = torch.tanh(distances / self.scale)
        return 1.0 - far, far

    def extra_repr(self) -> str:
        return f"scale={self.scale}, near_cutoff={self.near_cutoff}"


@register_influence("step")
class StepInfluence(InfluenceFunction):
    """Hard split: ``w_near = 1[d < t]``, ``w_far = 1[d >= t]``.

    Not in the authors' code. With it the soft contrastive loss becomes the multi-similarity
    loss with "same place" labels (their ``ms_loss``), which makes it both a test and the
    ablation "all pairs, hard 0/1 weights".

    Args:
        threshold: ``t``, metres (> 0).
        near_cutoff: metres (> 0, or inf); default ``threshold``, where the formula is 0.
    """

    def __init__(self, threshold: float = 15.0, near_cutoff: float | None = None) -> None:
        super().__init__()
        self.threshold = _positive_number("threshold", threshold, "metres")
        self.near_cutoff = _near_cutoff(near_cutoff, self.threshold)

    def weights(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :class:`StepInfluence`."""
        near = (distances < self.threshold).to(distances.dtype)
        far = (distances >= self.threshold).to(distances.dtype)
        return near, far

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, near_cutoff={self.near_cutoff}"
