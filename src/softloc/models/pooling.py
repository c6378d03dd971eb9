"""Global pooling of a feature map into one L2-normalised descriptor (cirtorch style).

Each pooling is a plain function plus a thin ``nn.Module``; modules are built by name through
:func:`create_pooling`, take the backbone's channel count ``dim`` and expose ``out_dim``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from softloc.registry import Registry

logger = logging.getLogger(__name__)

PoolingFactory = Callable[..., nn.Module]

POOLINGS: Registry[PoolingFactory] = Registry("pooling")


register_pooling = POOLINGS.register


def available_poolings() -> list[str]:
    """Names accepted by :func:`create_pooling`, sorted."""
    return POOLINGS.names()


def get_pooling_factory(name: str) -> PoolingFactory:
    """The registered pooling class (or factory) called ``name``.

    Raises:
        ValueError: unknown name (the known ones are listed).
    """
    return POOLINGS.get(name)


def create_pooling(name: str, dim: int, **kwargs: Any) -> nn.Module:
    """Build a pooling layer by name for feature maps with ``dim`` channels.

    Raises:
        ValueError: unknown name or invalid keyword arguments.
    """
    factory = get_pooling_factory(name)
    try:
        return factory(dim=dim, **kwargs)
    except TypeError as error:
        raise ValueError(f"invalid arguments {kwargs} for pooling {name!r}: {error}") from error


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling: ``(mean_hw clamp(x, eps)^p)^(1/p)``, not normalised.

    p = 1 is average pooling, p -> infinity max pooling.

    Args:
        x: feature map ``(B, C, H, W)``, non-negative in practice (after a ReLU).
        p: exponent, a float or a one-element tensor (learnable).
        eps: lower clamp keeping the power differentiable at zero.

    Returns:
        ``(B, C)`` pooled features.
    """
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


@register_pooling("gem")
class GeM(nn.Module):
    """GeM pooling followed by L2 normalisation; ``out_dim = dim``.

    Args:
        p: initial exponent (3 in Radenovic et al.).
        eps: lower clamp of the features.
        learnable: train ``p`` as a parameter (else a fixed buffer).
        dim: channel count of the input; only used to report ``out_dim``.
    """

    def __init__(
        self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True, dim: int | None = None
    ) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be positive, got {p}")
        exponent = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(exponent)
        else:
            self.register_buffer("p", exponent)
        self.eps = eps
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``(B, C, H, W)`` -> L2-normalised descriptors ``(B, C)``."""
        return F.normalize(gem(x, self.p, self.eps), dim=-1)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}, dim={self.out_dim}"


@register_pooling("netvlad")
class NetVLAD(nn.Module):
    """NetVLAD (Arandjelovic et al., CVPR 2016): soft-assigned residual aggregation.

    For local features x_n (L2-normalised first when ``normalize_input``) and centroids c_k,
    ``a_k(x_n) = softmax_k(w_k . x_n + b_k)`` and ``V[k] = sum_n a_k(x_n) (x_n - c_k)``; each
    ``V[k]`` is L2-normalised (intra-normalisation), then the flattened ``(K * C)`` vector is.

    Args:
        num_clusters: K.
        dim: channel count C of the input feature map.
        alpha: sharpness of the soft assignment used by :meth:`init_from_features`.
        normalize_input: L2-normalise every local feature over channels first.
    """

    def __init__(
        self,
        num_clusters: int = 64,
        dim: int = 512,
        alpha: float = 100.0,
        normalize_input: bool = True,
    ) -> None:
        super().__init__()
        if num_clusters < 1 or dim < 1:
            raise ValueError(
                f"NetVLAD needs num_clusters >= 1 and dim >= 1, got {num_clusters=}, {dim=}"
            )
        if alpha <= 0:
            raise ValueError(f"NetVLAD alpha must be positive, got {alpha}")
        self.num_clusters = num_clusters
        self.dim = dim
        self.alpha = float(alpha)
        self.normalize_input = normalize_input
        self.assignment = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))
        self.out_dim = num_clusters * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``(B, C, H, W)`` -> L2-normalised descriptors ``(B, K * C)``."""
        if x.ndim != 4 or x.shape[1] != self.dim:
            raise ValueError(
                f"NetVLAD expects (B, {self.dim}, H, W) features, got {tuple(x.shape)}"
            )
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        soft_assign = self.assignment(x).flatten(2).softmax(dim=1)  # (B, K, N)
        local = x.flatten(2)  # (B, C, N)
        weighted_sum = torch.einsum("bkn,bcn->bkc", soft_assign, local)
        mass = soft_assign.sum(dim=2).unsqueeze(-1)  # (B, K, 1)
        vlad = weighted_sum - mass * self.centroids.unsqueeze(0)  # (B, K, C)
        vlad = F.normalize(vlad, dim=2).flatten(1)
        return F.normalize(vlad, dim=1)

    @torch.no_grad()
    def init_from_features(
        self, features: torch.Tensor | np.ndarray, seed: int = 0, n_init: int = 3
    ) -> None:
        """Set centroids by k-means on sampled local features, and the assignment from them.

        Follows the NetVLAD paper (and pytorch-NetVLAD's "vladv2"): features are L2-normalised
        (if ``normalize_input``), ``c_k`` are the k-means centres, and the 1x1 convolution gets
        ``w_k = 2 alpha c_k``, ``b_k = -alpha ||c_k||^2``, so that the soft assignment equals
        ``softmax_k(-alpha ||x - c_k||^2)`` (the ``||x||^2`` term cancels in the softmax).

        Args:
            features: ``(N, C)`` local features with N >= K (e.g. sampled backbone activations).
            seed: k-means random state (results are reproducible).
            n_init: k-means restarts.

        Raises:
            ValueError: wrong shape, too few or non-finite features.
        """
        from sklearn.cluster import KMeans

        data = torch.as_tensor(features).detach().to("cpu", torch.float64)
        if data.ndim != 2 or data.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}), got {tuple(data.shape)}")
        if data.shape[0] < self.num_clusters:
            raise ValueError(
                f"k-means needs at least num_clusters={self.num_clusters} features, got "
                f"{data.shape[0]}; sample more images or features per image"
            )
        if not torch.isfinite(data).all():
            raise ValueError("features for NetVLAD initialisation contain NaN or inf")
        if self.normalize_input:
            data = F.normalize(data, dim=1)
        kmeans = KMeans(n_clusters=self.num_clusters, n_init=n_init, random_state=seed)
        kmeans.fit(data.numpy())
        centres = torch.from_numpy(kmeans.cluster_centers_)
        weight = (2.0 * self.alpha * centres)[:, :, None, None]
        bias = -self.alpha * centres.pow(2).sum(dim=1)
        self.centroids.copy_(centres)
        self.assignment.weight.copy_(weight)
        self.assignment.bias.copy_(bias)
        logger.info(
            "NetVLAD centroids from k-means on %d features (K=%d, inertia %.4g)",
            data.shape[0],
            self.num_clusters,
            kmeans.inertia_,
        )

    def extra_repr(self) -> str:
        return (
            f"num_clusters={self.num_clusters}, dim={self.dim}, alpha={self.alpha}, "
            f"normalize_input={self.normalize_input}"
        )
