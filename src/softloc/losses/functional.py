"""Pure-function forms of the losses (the modules in this package are thin wrappers).

Every loss takes one training tuple:

- ``descriptors``: (B, D) float tensor, one descriptor per image of the tuple. They are
  expected L2-normalised; the losses normalise them again (a no-op on normalised input, and
  what the authors' ``wms_loss`` does too), so a forgotten normalisation cannot break them.
- ``distances``: (B, B) geometric distances in metres between the images' camera positions,
  finite and ``>= 0``. The diagonal is ignored. Symmetry is not required: row ``i`` always
  uses ``distances[i, j]`` for the pair (i, j).

Computation runs in float32 at least (float16 / bfloat16 descriptors are promoted), on the
descriptors' device; ``distances`` may be a CPU tensor or an array and is moved there.
Bad input raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["soft_contrastive_loss", "split_by_anchor", "triplet_loss"]

Influence = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

SOFT_CONTRASTIVE_FORMS = ("ms", "plain")
SOFT_CONTRASTIVE_REDUCTIONS = ("mean", "none")
TRIPLET_POSITIVES = ("hardest", "closest")
TRIPLET_REDUCTIONS = ("sum", "mean", "max", "none")


# ----------------------------------------------------------------------------- validation


def _real(name: str, value: object, *, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite float, optionally ``> minimum`` (strict) or ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number!r}")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        bound = ">" if strict else ">="
        raise ValueError(f"{name} must be {bound} {minimum}, got {number!r}")
    return number


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)


def check_soft_contrastive_args(
    alpha: float, beta: float, lamb: float, eps: float, mining: bool, form: str, reduction: str
) -> None:
    """Validate the soft contrastive hyper-parameters; raise ValueError on the first bad one."""
    _real("alpha", alpha, minimum=0.0, strict=True)
    _real("beta", beta, minimum=0.0, strict=True)
    _real("lamb", lamb)
    _real("eps", eps, minimum=0.0)
    if not isinstance(mining, bool):
        raise ValueError(f"mining must be True or False, got {mining!r}")
    _choice("form", form, SOFT_CONTRASTIVE_FORMS)
    _choice("reduction", reduction, SOFT_CONTRASTIVE_REDUCTIONS)


def check_triplet_args(
    margin: float, near_radius: float, far_radius: float, positive: str, reduction: str
) -> None:
    """Validate the triplet hyper-parameters; raise ValueError on the first bad one."""
    _real("margin", margin, minimum=0.0)
    near = _real("near_radius", near_radius, minimum=0.0, strict=True)
    far = _real("far_radius", far_radius, minimum=0.0, strict=True)
    if far < near:
        raise ValueError(
            f"far_radius ({far} m) must be >= near_radius ({near} m): an image cannot be "
            "both near and far"
        )
    _choice("positive", positive, TRIPLET_POSITIVES)
    _choice("reduction", reduction, TRIPLET_REDUCTIONS)


def prepare_tuple(
    descriptors: torch.Tensor, distances: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one tuple and return (normalised descriptors, distances) in a common dtype.

    Args:
        descriptors: (B, D) floating tensor, B >= 2.
        distances: (B, B) metres, finite, >= 0 (tensor or array-like).

    Returns:
        ``(descriptors, distances)``: descriptors L2-normalised in float32 or wider (autograd
        flows through), distances as a tensor of the same dtype on the same device.

    Raises:
        ValueError: wrong type, shape, tuple size, or non-finite / negative values.
    """
    if not isinstance(descriptors, torch.Tensor):
        raise ValueError(
            f"descriptors must be a torch.Tensor of shape (B, D), got {type(descriptors).__name__}"
        )
    if descriptors.ndim != 2:
        raise ValueError(
            f"descriptors must have shape (B, D), got {tuple(descriptors.shape)}; "
            "flatten a batch of tuples into one tuple per call"
        )
    if not descriptors.is_floating_point():
        raise ValueError(f"descriptors must be floating point, got {descriptors.dtype}")
    size, dim = descriptors.shape
    if size < 2:
        raise ValueError(f"a tuple needs at least 2 descriptors (B >= 2), got B = {size}")
    if dim < 1:
        raise ValueError("descriptors have dimension D = 0")
    try:
        distances = torch.as_tensor(distances, device=descriptors.device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"distances must be a (B, B) array of metres: {error}") from error
    if tuple(distances.shape) != (size, size):
        raise ValueError(
            f"distances must have shape (B, B) = ({size}, {size}) to match descriptors "
            f"{tuple(descriptors.shape)}, got {tuple(distances.shape)}"
        )
    if distances.dtype == torch.bool or distances.is_complex():
        raise ValueError(f"distances must be real numbers in metres, got dtype {distances.dtype}")

    work_dtype = torch.promote_types(descriptors.dtype, torch.float32)
    distances = distances.to(work_dtype)
    # One device synchronisation for all value checks.
    descriptors_finite, distances_finite, distances_non_negative = torch.stack(
        [
            torch.isfinite(descriptors).all(),
            torch.isfinite(distances).all(),
            (distances >= 0).all(),
        ]
    ).tolist()
    if not descriptors_finite:
        raise ValueError(
            "descriptors contain NaN or inf; the model has probably diverged "
            "(lower the learning rate or check the input images)"
        )
    if not distances_finite:
        raise ValueError("distances contain NaN or inf; every camera position must be known")
    if not distances_non_negative:
        raise ValueError("distances must be >= 0 metres; got negative values")
    return F.normalize(descriptors.to(work_dtype), p=2.0, dim=1), distances


# ----------------------------------------------------------------------- soft contrastive


def _log1p_sum_exp(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise ``log(1 + sum_j exp(logits_ij))``, stable; ``-inf`` entries count as absent.

    Args:
        logits: (B, B); masked entries are ``-inf``.

    Returns:
        (B,); exactly 0 for a row whose entries are all ``-inf`` (with zero, finite gradient).
    """
    zero_column = logits.new_zeros(logits.shape[0], 1)
    return torch.logsumexp(torch.cat([logits, zero_column], dim=1), dim=1)


@torch.no_grad()
def _mine_pairs(
    similarity: torch.Tensor,
    w_near: torch.Tensor,
    w_far: torch.Tensor,
    not_self: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft multi-similarity mining of ``wms_loss``: which pairs each row keeps.

    Per row i, with ``s+ = w_near * sim`` and ``s- = w_far * sim`` (self-pair excluded):

    - hardest negative ``N_i = max_j s-_ij``;
    - strongest positive ``M_i = max_j s+_ij``;
    - hardest positive ``P_i = M_i + min(0, min_j w_near_ij (sim_ij - M_i))``
      ``= min(M_i, min_j [s+_ij + (1 - w_near_ij) M_i])``: a soft minimum over positives in
      which a pair of weight w counts as its own ``s+`` blended with ``M_i``; with 0/1 weights
      it is the usual minimum positive similarity;
    - keep a positive if ``s+_ij < N_i + eps`` and a negative if ``s-_ij > P_i - eps``.

    Returns:
        ``(keep_near, keep_far)``, (B, B) booleans, before the ``w > 0`` test.
    """
    zero = similarity.new_zeros(())
    s_near = torch.where(not_self, w_near * similarity, zero)
    s_far = torch.where(not_self, w_far * similarity, zero)
    hardest_negative = s_far.amax(dim=1, keepdim=True)
    strongest_positive = s_near.amax(dim=1, keepdim=True)
    # The zero left on the diagonal is the "min(0, ...)": P_i never exceeds M_i.
    shortfall = torch.where(not_self, w_near * (similarity - strongest_positive), zero)
    hardest_positive = strongest_positive + shortfall.amin(dim=1, keepdim=True)
    keep_near = s_near < hardest_negative + eps
    keep_far = s_far > hardest_positive - eps
    return keep_near, keep_far


def soft_contrastive_loss(
    descriptors: torch.Tensor,
    distances: torch.Tensor,
    influence: Influence,
    alpha: float = 2.0,
    beta: float = 50.0,
    lamb: float = 1.0,
    eps: float = 0.1,
    mining: bool = True,
    form: str = "ms",
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft contrastive loss of Thoma et al. (NeurIPS 2020) on one tuple.

    Every ordered pair (i, j), i != j, is both a positive and a negative pair, with soft
    similarities ``s+_ij = w_near(d_ij) * max(0, f_i . f_j)`` and
    ``s-_ij = w_far(d_ij) * max(0, f_i . f_j)``. A pair takes part on a side only if its weight
    there is > 0 (and, with ``mining``, it passes :func:`_mine_pairs`). Per row i:

    - ``form="ms"``: ``(1/alpha) log(1 + sum_j exp(-alpha (s+_ij - lamb)))
      + (1/beta) log(1 + sum_j exp(beta (s-_ij - lamb)))``;
    - ``form="plain"``: ``sum_j s-_ij - sum_j s+_ij``;

    then the mean over all B rows (a row without kept pairs contributes 0), as the authors'
    ``wms_loss`` does.

    Args:
        descriptors: (B, D), B >= 2, L2-normalised (normalised again here).
        distances: (B, B) metres between camera positions, finite, >= 0.
        influence: callable mapping distances to ``(w_near, w_far)`` of the same shape,
            e.g. :class:`~softloc.losses.SigmoidInfluence`.
        alpha: positive-side scale (> 0).
        beta: negative-side scale (> 0).
        lamb: similarity offset ``lambda``.
        eps: mining margin (>= 0), used only with ``mining``.
        mining: apply the soft multi-similarity pair mining.
        form: ``"ms"`` (multi-similarity aggregation) or ``"plain"`` (sum of s- minus s+).
        reduction: ``"mean"`` (scalar) or ``"none"`` (the (B,) per-row losses).

    Returns:
        A scalar (``reduction="mean"``) or a (B,) tensor, float32 or wider.

    Raises:
        ValueError: bad hyper-parameters, shapes or values, or an influence function that
            returns weights of the wrong shape.
    """
    check_soft_contrastive_args(alpha, beta, lamb, eps, mining, form, reduction)
    descriptors, distances = prepare_tuple(descriptors, distances)
    w_near, w_far = _influence_weights(influence, distances)

    size = descriptors.shape[0]
    not_self = ~torch.eye(size, dtype=torch.bool, device=descriptors.device)
    similarity = (descriptors @ descriptors.T).clamp(min=0.0)
    s_near = w_near * similarity
    s_far = w_far * similarity
    keep_near = not_self & (w_near > 0)
    keep_far = not_self & (w_far > 0)
    if mining:
        mined_near, mined_far = _mine_pairs(similarity.detach(), w_near, w_far, not_self, eps)
        keep_near = keep_near & mined_near
        keep_far = keep_far & mined_far

    if form == "ms":
        minus_inf = similarity.new_tensor(-math.inf)
        near_logits = torch.where(keep_near, -alpha * (s_near - lamb), minus_inf)
        far_logits = torch.where(keep_far, beta * (s_far - lamb), minus_inf)
        per_row = _log1p_sum_exp(near_logits) / alpha + _log1p_sum_exp(far_logits) / beta
    else:
        zero = similarity.new_zeros(())
        per_row = torch.where(keep_far, s_far, zero).sum(dim=1) - torch.where(
            keep_near, s_near, zero
        ).sum(dim=1)
    return per_row.mean() if reduction == "mean" else per_row


def _influence_weights(
    influence: Influence, distances: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the influence function and check it returned two (B, B) tensors."""
    if not callable(influence):
        raise ValueError(
            f"influence must be callable (distances -> (w_near, w_far)), got {influence!r}"
        )
    weights = influence(distances)
    if not (isinstance(weights, (tuple, list)) and len(weights) == 2):
        raise ValueError("influence must return a pair (w_near, w_far)")
    w_near, w_far = (torch.as_tensor(w, device=distances.device) for w in weights)
    for name, w in (("w_near", w_near), ("w_far", w_far)):
        if w.shape != distances.shape:
            raise ValueError(
                f"influence returned {name} of shape {tuple(w.shape)}; expected the shape of "
                f"distances {tuple(distances.shape)}"
            )
    return w_near.to(distances.dtype), w_far.to(distances.dtype)


# ----------------------------------------------------------------------------- triplet


def split_by_anchor(
    distances: torch.Tensor, near_radius: float, far_radius: float, who: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Near and far masks over rows ``1 .. B-1`` by their distance to the anchor (row 0).

    Near: ``d_0j < near_radius``; far: ``d_0j >= far_radius``; rows in between are in neither.

    Raises:
        ValueError: no near or no far row (such a tuple carries no signal for ``who``; returning
            0 silently would hide a sampler bug).
    """
    anchor_distances = distances[0, 1:]
    is_near = anchor_distances < near_radius
    is_far = anchor_distances >= far_radius
    n_near, n_far = torch.stack([is_near.sum(), is_far.sum()]).tolist()
    if n_near == 0 or n_far == 0:
        raise ValueError(
            f"{who} needs at least one near image (< {near_radius} m from the "
            f"anchor in row 0) and one far image (>= {far_radius} m); this tuple has "
            f"{n_near} near and {n_far} far"
        )
    return is_near, is_far


def pick_positive(near_squared: torch.Tensor, positive: str) -> torch.Tensor:
    """The squared descriptor distance of the chosen near image: largest or smallest."""
    return near_squared.max() if positive == "hardest" else near_squared.min()


def triplet_loss(
    descriptors: torch.Tensor,
    distances: torch.Tensor,
    margin: float = 0.1,
    near_radius: float = 15.0,
    far_radius: float = 15.0,
    positive: str = "closest",
    reduction: str = "sum",
) -> torch.Tensor:
    """PointNetVLAD-style triplet loss on one tuple whose anchor is row 0.

    With ``a`` the anchor, ``e(x, y) = ||x - y||^2`` on L2-normalised descriptors, near images
    ``N = {j >= 1 : d_0j < near_radius}`` and far images ``F = {k >= 1 : d_0k >= far_radius}``
    (images in between are ignored), the loss is the reduction over k in F of
    ``max(0, margin + e(a, p) - e(a, f_k))`` where ``p`` is the near image closest to the
    anchor in descriptor space (``positive="closest"``, the default: PointNetVLAD's
    ``best_pos_distance``, which the authors' ``triplet`` baseline calls) or the farthest one
    (``positive="hardest"``, the authors' ``evil_triplet_loss``).

    Args:
        descriptors: (B, D); row 0 is the anchor (the tuple sampler puts the anchor first, then
            the near images, then the far ones, but only row 0 is special here).
        distances: (B, B) metres; only row 0 is read.
        margin: hinge margin (>= 0), in squared-descriptor-distance units (range [0, 4]).
        near_radius: metres; images closer than this to the anchor are near.
        far_radius: metres (>= near_radius); images at least this far are far.
        positive: ``"hardest"`` or ``"closest"`` near image.
        reduction: over far images, ``"sum"`` (PointNetVLAD ``triplet_loss``), ``"mean"``,
            ``"max"`` (PointNetVLAD ``lazy_triplet_loss``) or ``"none"`` (the per-far hinges,
            in the order of the far rows).

    Returns:
        A scalar, or a (n_far,) tensor for ``reduction="none"``.

    Raises:
        ValueError: bad arguments, or a tuple without any near or any far image.
    """
    check_triplet_args(margin, near_radius, far_radius, positive, reduction)
    descriptors, distances = prepare_tuple(descriptors, distances)
    is_near, is_far = split_by_anchor(distances, near_radius, far_radius, "the triplet loss")
    squared = (descriptors[1:] - descriptors[:1]).pow(2).sum(dim=1)
    positive_squared = pick_positive(squared[is_near], positive)
    hinges = F.relu(margin + positive_squared - squared[is_far])
    if reduction == "sum":
        return hinges.sum()
    if reduction == "mean":
        return hinges.mean()
    if reduction == "max":
        return hinges.max()
    return hinges
