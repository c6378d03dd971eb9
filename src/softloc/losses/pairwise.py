"""Pair-based baselines: contrastive, generalized contrastive, log-ratio, multi-similarity,
and the ``off_the_shelf`` placeholder (no training).

All take one tuple (descriptors (B, D), metric distances (B, B) in metres) with the anchor in
row 0. See docs/losses.md for the equations and where each one follows or differs from its
paper.
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
    prepare_tuple,
    soft_contrastive_loss,
    split_by_anchor,
)
from .options import OptionsLoss
from .registry import TUPLE_RADII, register_loss

__all__ = [
    "ContrastiveLoss",
    "GeneralizedContrastiveLoss",
    "LogRatioLoss",
    "MultiSimilarityLoss",
    "OffTheShelf",
    "contrastive_loss",
    "generalized_contrastive_loss",
    "log_ratio_loss",
    "multi_similarity_loss",
]

PAIR_REDUCTIONS = ("sum", "mean")
LOG_RATIO_PAIRINGS = ("intended", "authors")


def _check_radii(near_radius: float, far_radius: float) -> None:
    check_triplet_args(0.0, near_radius, far_radius, "closest", "sum")


def contrastive_loss(
    descriptors: torch.Tensor,
    distances: torch.Tensor,
    margin: float = 0.7,
    pos_margin: float = 0.0,
    power: float = 2.0,
    near_radius: float = 15.0,
    far_radius: float = 15.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """Contrastive loss (Hadsell et al. 2006; Radenovic et al. 2018) over the anchor's pairs.

    With ``D_j = ||f_0 - f_j||`` (L2, not squared) on normalised descriptors::

        L = R( {0.5 [D_j - pos_margin]+^power : j near} u {0.5 [margin - D_j]+^power : j far} )

    ``R`` sums (``"sum"``, cirtorch's ``ContrastiveLoss``) or averages over those pairs.
    ``power=2`` and ``pos_margin=0`` is the Hadsell / Radenovic form; ``power=1`` is PML's.
    """
    _check_radii(near_radius, far_radius)
    _real("margin", margin, minimum=0.0)
    _real("pos_margin", pos_margin, minimum=0.0)
    _real("power", power, minimum=0.0, strict=True)
    _choice("reduction", reduction, PAIR_REDUCTIONS)
    descriptors, distances = prepare_tuple(descriptors, distances)
    is_near, is_far = split_by_anchor(distances, near_radius, far_radius, "the contrastive loss")
    # sqrt of a clamped square: the L2 distance, with a finite gradient at 0 via the eps.
    squared = (descriptors[1:] - descriptors[:1]).pow(2).sum(dim=1)
    lengths = squared.clamp(min=1e-12).sqrt()
    terms = torch.cat(
        [
            0.5 * F.relu(lengths[is_near] - pos_margin).pow(power),
            0.5 * F.relu(margin - lengths[is_far]).pow(power),
        ]
    )
    return terms.sum() if reduction == "sum" else terms.mean()


def generalized_contrastive_loss(
    descriptors: torch.Tensor,
    distances: torch.Tensor,
    margin: float = 0.5,
    radius: float = 15.0,
    pairs: str = "anchor",
) -> torch.Tensor:
    """Generalized contrastive loss (Leyva-Vallina, Strisciuglio, Petkov, CVPR 2023).

    Each pair gets a graded similarity ``psi_ij = max(0, 1 - d_ij / radius)`` in [0, 1] from
    the metric distance (the paper uses the overlap of the two cameras' fields of view)::

        L = mean_pairs( psi 0.5 D^2 + (1 - psi) 0.5 [margin - D]+^2 ),  D = ||f_i - f_j||

    over the anchor's pairs (``pairs="anchor"``) or every pair i < j (``"all"``).
    """
    _real("margin", margin, minimum=0.0)
    _real("radius", radius, minimum=0.0, strict=True)
    _choice("pairs", pairs, ("anchor", "all"))
    descriptors, distances = prepare_tuple(descriptors, distances)
    if pairs == "anchor":
        rows = torch.zeros(len(descriptors) - 1, dtype=torch.long, device=descriptors.device)
        cols = torch.arange(1, len(descriptors), device=descriptors.device)
    else:
        rows, cols = torch.triu_indices(len(descriptors), len(descriptors), 1).to(
            descriptors.device
        )
    squared = (descriptors[rows] - descriptors[cols]).pow(2).sum(dim=1)
    lengths = squared.clamp(min=1e-12).sqrt()
    psi = (1.0 - distances[rows, cols] / radius).clamp(min=0.0)
    terms = psi * 0.5 * squared + (1.0 - psi) * 0.5 * F.relu(margin - lengths).pow(2)
    return terms.mean()


def log_ratio_loss(
    descriptors: torch.Tensor,
    distances: torch.Tensor,
    near_radius: float = 15.0,
    far_radius: float = 15.0,
    pairs: str = "near_far",
    eps: float = 1e-6,
    pairing: str = "intended",
) -> torch.Tensor:
    """Log-ratio loss (Kim, Kim, Cho, Kwak, CVPR 2019) with the anchor in row 0.

    With squared descriptor distances ``e_j = ||f_0 - f_j||^2`` and squared metric distances
    ``g_j = d_0j^2``::

        L = mean_{(i, j)} ( log((e_i + eps) / (e_j + eps)) - log((g_i + eps) / (g_j + eps)) )^2

    over (near i, far j) pairs (``pairs="near_far"``, the authors' ``logratio_loss``) or over
    every pair i < j of non-anchor rows (``"all"``, the paper's dense triplet sampling).

    ``pairing="authors"`` (with ``pairs="near_far"`` only) reproduces what the authors' code
    computes instead: its ``tf.div(squared_pos_dists, tf.transpose(squared_neg_dists))``
    divides the k-th near image's squared metric distance by the k-th far image's, element by
    element, and that ratio is then broadcast over the descriptor ratios, so the pair
    (near i, far j) uses ``log(g_{near j} / g_{far j})``, near image j's metric distance in
    place of near image i's. That needs as many near as far images (P == N, where their code
    runs); otherwise ``ValueError``.
    """
    _check_radii(near_radius, far_radius)
    _choice("pairs", pairs, ("near_far", "all"))
    _choice("pairing", pairing, LOG_RATIO_PAIRINGS)
    if pairing == "authors" and pairs != "near_far":
        raise ValueError(
            "pairing='authors' reproduces the authors' logratio_loss, which uses (near, far) "
            "pairs only; use pairs='near_far' with it, or pairing='intended'"
        )
    _real("eps", eps, minimum=0.0, strict=True)
    descriptors, distances = prepare_tuple(descriptors, distances)
    is_near, is_far = split_by_anchor(distances, near_radius, far_radius, "the log-ratio loss")
    log_feature = ((descriptors[1:] - descriptors[:1]).pow(2).sum(dim=1) + eps).log()
    log_metric = (distances[0, 1:].pow(2) + eps).log()
    if pairs == "near_far":
        feature_ratio = log_feature[is_near][:, None] - log_feature[is_far][None, :]
        if pairing == "authors":
            metric_ratio = _authors_metric_ratio(log_metric[is_near], log_metric[is_far])
        else:
            metric_ratio = log_metric[is_near][:, None] - log_metric[is_far][None, :]
    else:
        i, j = torch.triu_indices(len(log_feature), len(log_feature), 1).to(log_feature.device)
        feature_ratio = log_feature[i] - log_feature[j]
        metric_ratio = log_metric[i] - log_metric[j]
    return (feature_ratio - metric_ratio).pow(2).mean()


def _authors_metric_ratio(log_near: torch.Tensor, log_far: torch.Tensor) -> torch.Tensor:
    """(P, N) metric log-ratios as the authors' code pairs them: entry (i, j) is
    ``log g_{near j} - log g_{far j}`` (the same for every near image i).

    Raises:
        ValueError: P != N; the element-wise division of their code needs equal counts.
    """
    n_near, n_far = len(log_near), len(log_far)
    if n_near != n_far:
        raise ValueError(
            "pairing='authors' reproduces the authors' tf.div(squared_pos_dists, "
            "tf.transpose(squared_neg_dists)), which divides the k-th near image's squared "
            "metric distance by the k-th far image's, element by element; that is defined "
            f"only for as many near as far images, and this tuple has {n_near} near and "
            f"{n_far} far (set tuples.n_near = tuples.n_far, or use pairing='intended')"
        )
    per_far = log_near - log_far
    return per_far[None, :].expand(n_near, n_far)


def multi_similarity_loss(
    descriptors: torch.Tensor,
    distances: torch.Tensor,
    near_radius: float = 15.0,
    far_radius: float = 15.0,
    alpha: float = 2.0,
    beta: float = 50.0,
    lamb: float = 1.0,
    eps: float = 0.1,
    mining: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-similarity loss (Wang et al. CVPR 2019) with hard labels in the tuple setting.

    Labels as the authors set them for their ``ms_loss`` baseline: the anchor and its near
    images share one label, every far image has a label of its own; rows between the radii
    are left out. Then the soft contrastive loss machinery with 0/1 weights (same label:
    positive, different: negative): see :func:`soft_contrastive_loss` (same ``alpha``,
    ``beta``, ``lamb``, ``eps``, ``mining``; with ``reduction="none"`` the per-row losses of
    the kept rows, anchor first).
    """
    _check_radii(near_radius, far_radius)
    descriptors, distances = prepare_tuple(descriptors, distances)
    is_near, is_far = split_by_anchor(distances, near_radius, far_radius, "multi-similarity")
    keep = torch.cat([is_near.new_ones(1), is_near | is_far])
    labels = torch.arange(len(descriptors), device=descriptors.device)
    labels[1:][is_near] = 0
    labels = labels[keep]
    same = (labels[:, None] == labels[None, :]).to(descriptors.dtype)

    def label_weights(_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return same, 1.0 - same

    return soft_contrastive_loss(
        descriptors[keep], distances[keep][:, keep], label_weights, alpha=alpha, beta=beta,
        lamb=lamb, eps=eps, mining=mining, form="ms", reduction=reduction,
    )


def _validated(function, **options):
    """Run ``function`` once on a tiny valid tuple so bad options fail at construction."""
    near = options.get("near_radius", options.get("radius", 15.0))
    far = options.get("far_radius", near)
    # As many near as far rows, so the log-ratio loss's pairing="authors" can run too.
    metres = torch.tensor(
        [0.0, 0.5 * near, 0.25 * near, far + 1.0, far + 2.0], dtype=torch.float64
    )
    distances = (metres[:, None] - metres[None, :]).abs()
    function(torch.eye(5, dtype=torch.float64), distances, **options)
    return options


@register_loss("contrastive")
class ContrastiveLoss(OptionsLoss):
    """Contrastive loss, Hadsell et al. / Radenovic et al. form; see :func:`contrastive_loss`.

    Args:
        margin: negative margin on the L2 distance (0.7, cirtorch's default).
        pos_margin: positive margin (0). power: 2 (Hadsell / Radenovic) or 1 (PML).
        near_radius, far_radius: metres (``tuples.*`` in a run).
        reduction: ``"sum"`` over pairs (cirtorch) or ``"mean"``.
    """

    function = staticmethod(contrastive_loss)
    from_config: ClassVar[dict[str, str]] = TUPLE_RADII

    def __init__(
        self,
        margin: float = 0.7,
        pos_margin: float = 0.0,
        power: float = 2.0,
        near_radius: float = 15.0,
        far_radius: float = 15.0,
        reduction: str = "sum",
    ) -> None:
        super().__init__(**_validated(
            contrastive_loss, margin=margin, pos_margin=pos_margin, power=power,
            near_radius=near_radius, far_radius=far_radius, reduction=reduction,
        ))


@register_loss("generalized_contrastive")
class GeneralizedContrastiveLoss(OptionsLoss):
    """Generalized contrastive loss (Leyva-Vallina et al. CVPR 2023), graded labels from the
    metric distance; see :func:`generalized_contrastive_loss`.

    Args:
        margin: 0.5. radius: the similarity reaches 0 at this distance (``tuples.far_radius``
            in a run). pairs: ``"anchor"`` or ``"all"``.
    """

    function = staticmethod(generalized_contrastive_loss)
    from_config: ClassVar[dict[str, str]] = {"radius": "tuples.far_radius"}

    def __init__(self, margin: float = 0.5, radius: float = 15.0, pairs: str = "anchor") -> None:
        super().__init__(**_validated(
            generalized_contrastive_loss, margin=margin, radius=radius, pairs=pairs
        ))


@register_loss("log_ratio")
class LogRatioLoss(OptionsLoss):
    """Log-ratio loss (Kim et al. CVPR 2019); see :func:`log_ratio_loss`.

    Args:
        near_radius, far_radius: metres (``tuples.*`` in a run).
        pairs: ``"near_far"`` (the authors' baseline) or ``"all"`` (dense). eps: 1e-6.
        pairing: ``"intended"`` (default: the formula of the paper) or ``"authors"`` (the
            element-wise pairing their TensorFlow code computes; needs as many near as far
            images in every tuple).
    """

    function = staticmethod(log_ratio_loss)
    from_config: ClassVar[dict[str, str]] = TUPLE_RADII

    def __init__(
        self,
        near_radius: float = 15.0,
        far_radius: float = 15.0,
        pairs: str = "near_far",
        eps: float = 1e-6,
        pairing: str = "intended",
    ) -> None:
        super().__init__(**_validated(
            log_ratio_loss, near_radius=near_radius, far_radius=far_radius, pairs=pairs,
            eps=eps, pairing=pairing,
        ))


@register_loss("multi_similarity")
class MultiSimilarityLoss(OptionsLoss):
    """Multi-similarity loss with hard labels in the tuple setting (Wang et al. CVPR 2019);
    see :func:`multi_similarity_loss`.

    Args:
        near_radius, far_radius: metres (``tuples.*`` in a run).
        alpha, beta, lamb, eps: 2, 50, 1, 0.1 (the authors' ``ms_loss`` defaults).
        mining: the multi-similarity miner (on by default); off gives the plain loss.
        reduction: ``"mean"`` over rows, or ``"none"``.
    """

    function = staticmethod(multi_similarity_loss)
    from_config: ClassVar[dict[str, str]] = TUPLE_RADII

    def __init__(
        self,
        near_radius: float = 15.0,
        far_radius: float = 15.0,
        alpha: float = 2.0,
        beta: float = 50.0,
        lamb: float = 1.0,
        eps: float = 0.1,
        mining: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(**_validated(
            multi_similarity_loss, near_radius=near_radius, far_radius=far_radius, alpha=alpha,
            beta=beta, lamb=lamb, eps=eps, mining=mining, reduction=reduction,
        ))


@register_loss("off_the_shelf")
class OffTheShelf(nn.Module):
    """No localization training: the Trainer skips its steps and keeps the initial weights.

    The paper's first row. Called on a tuple it returns a zero that still depends on the
    descriptors (so a caller that does back-propagate gets zero gradients, not an error).
    """

    trains: ClassVar[bool] = False

    def forward(self, descriptors: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """Zero, connected to the graph."""
        descriptors, _ = prepare_tuple(descriptors, distances)
        return descriptors.sum() * 0.0
