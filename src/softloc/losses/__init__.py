"""Losses: functions of a tuple's descriptors (B, D) and geometric distances (B, B) in metres.

Losses know nothing of images or files. Build them directly or by name::

    from softloc.losses import SoftContrastiveLoss, create_loss, create_influence

    loss = SoftContrastiveLoss(influence=create_influence("sigmoid", steepness=0.8))
    value = loss(descriptors, distances)   # (B, D) L2-normalised, (B, B) metres
"""

from .functional import soft_contrastive_loss, triplet_loss
from .influence import (
    InfluenceFunction,
    LinearInfluence,
    SigmoidInfluence,
    StepInfluence,
    TanhInfluence,
)
from .pairwise import (
    ContrastiveLoss,
    GeneralizedContrastiveLoss,
    LogRatioLoss,
    MultiSimilarityLoss,
    OffTheShelf,
)
from .pointnetvlad import HuberDistanceTripletLoss, LazyQuadrupletLoss, QuadrupletLoss
from .registry import (
    available_influences,
    available_losses,
    create_influence,
    create_loss,
    loss_options_from_config,
    loss_trains,
    register_influence,
    register_loss,
)
from .soft_contrastive import SoftContrastiveLoss
from .triplet import LazyTripletLoss, TripletLoss

__all__ = [
    "ContrastiveLoss",
    "GeneralizedContrastiveLoss",
    "HuberDistanceTripletLoss",
    "InfluenceFunction",
    "LazyQuadrupletLoss",
    "LazyTripletLoss",
    "LogRatioLoss",
    "MultiSimilarityLoss",
    "OffTheShelf",
    "QuadrupletLoss",
    "LinearInfluence",
    "SigmoidInfluence",
    "SoftContrastiveLoss",
    "StepInfluence",
    "TanhInfluence",
    "TripletLoss",
    "available_influences",
    "available_losses",
    "create_influence",
    "create_loss",
    "loss_options_from_config",
    "loss_trains",
    "register_influence",
    "register_loss",
    "soft_contrastive_loss",
    "triplet_loss",
]
