"""PCA-whitening of descriptors: centre, project on the top principal axes, scale to unit
variance, L2-normalise. Fitted once on held-out descriptors, stored as buffers in the model.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# Eigenvalues below this fraction of the largest count as zero when deciding the rank.
_RANK_TOLERANCE = 1e-10


class PCAWhitening(nn.Module):
    """Learned linear map ``x -> normalize((x - mean) @ projection + bias)``.

    Buffers (saved in the state dict): ``mean`` ``(D,)``, ``projection`` ``(D, d)`` and
    ``bias`` ``(d,)``. A fitted whitening has zero ``bias``; a published one (the NetVLAD
    authors' ``WPCA`` layer, ``y = W x + b``) keeps its own, so it is mapped exactly. Files saved
    before ``bias`` existed load with a zero bias. Before :func:`fit_pca_whitening` sets them,
    the module is a plain truncation to the first ``d`` coordinates (zero mean, identity
    projection) so that a model can be rebuilt and then loaded.

    Args:
        in_dim: D, the input descriptor size.
        out_dim: d <= D, the whitened size.
    """

    mean: torch.Tensor
    projection: torch.Tensor
    bias: torch.Tensor

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if not 1 <= out_dim <= in_dim:
            raise ValueError(f"whitening needs 1 <= out_dim <= in_dim, got {out_dim=}, {in_dim=}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("projection", torch.eye(in_dim, out_dim))
        self.register_buffer("bias", torch.zeros(out_dim))

    @classmethod
    def fit(
        cls, descriptors: torch.Tensor | np.ndarray, dim: int, eps: float = 1e-9
    ) -> PCAWhitening:
        """Same as :func:`fit_pca_whitening`."""
        return fit_pca_whitening(descriptors, dim, eps=eps)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Whitened coordinates ``(N, d)`` of descriptors ``(N, D)``, not normalised.

        On the fit data they have zero mean and (up to ``eps``) identity covariance.
        """
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"whitening expects (..., {self.in_dim}) inputs, got {tuple(x.shape)}")
        centred = x - self.mean.to(x.dtype)
        return centred @ self.projection.to(x.dtype) + self.bias.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors ``(N, D)`` -> whitened, L2-normalised descriptors ``(N, d)``."""
        return F.normalize(self.project(x), dim=-1)

    def truncated(self, dim: int) -> PCAWhitening:
        """The whitening onto the first ``dim`` axes only.

        Axes are sorted by variance and each is scaled on its own, so this is exactly what
        :func:`fit_pca_whitening` to ``dim`` gives on the same data: a sweep over sizes fits
        once at the largest size and truncates (one eigen-decomposition instead of one per
        size).
        """
        if not 1 <= dim <= self.out_dim:
            raise ValueError(f"can truncate to 1..{self.out_dim} dimensions, got {dim}")
        smaller = PCAWhitening(self.in_dim, dim)
        smaller.mean.copy_(self.mean)
        smaller.projection.copy_(self.projection[:, :dim])
        smaller.bias.copy_(self.bias[:dim])
        return smaller.to(self.mean.device)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        """Accept state dicts written before ``bias`` existed (their bias is zero)."""
        if prefix + "mean" in state_dict and prefix + "bias" not in state_dict:
            state_dict[prefix + "bias"] = torch.zeros_like(self.bias)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )


def fit_pca_whitening(
    descriptors: torch.Tensor | np.ndarray, dim: int, eps: float = 1e-9
) -> PCAWhitening:
    """Fit PCA-whitening to ``dim`` dimensions on ``descriptors`` (computed in float64).

    The principal axes come from an eigen-decomposition of the covariance ``(D, D)`` when N >= D,
    or of the Gram matrix ``(N, N)`` when N < D (same axes, cheaper for NetVLAD-sized D). Axis
    ``k`` is scaled by ``1 / sqrt(lambda_k + eps * lambda_max)``: ``eps`` is relative, so the
    fit does not depend on the descriptors' scale. Signs are fixed (largest entry of each axis
    positive) so that refits give the same result.

    Args:
        descriptors: ``(N, D)`` held-out descriptors (the caller chooses them; mixed conditions
            work better than a single one).
        dim: d, the output size; at most the rank of the centred data (<= min(N - 1, D)).
        eps: relative regulariser of the eigenvalues.

    Returns:
        A fitted :class:`PCAWhitening` with float32 buffers.

    Raises:
        ValueError: wrong shape, non-finite values, or ``dim`` above the rank of the data.
    """
    data = torch.as_tensor(descriptors).detach().to("cpu", torch.float64)
    if data.ndim != 2:
        raise ValueError(f"descriptors must be a (N, D) matrix, got shape {tuple(data.shape)}")
    n, d_in = data.shape
    if dim < 1:
        raise ValueError(f"whitening dim must be >= 1, got {dim}")
    bound = min(n - 1, d_in)
    if dim > bound:
        raise ValueError(
            f"whitening dim={dim} exceeds min(N - 1, D) = {bound} for {n} descriptors of size "
            f"{d_in} (centred data has at most that rank); lower dim or fit on more descriptors"
        )
    if not torch.isfinite(data).all():
        raise ValueError("descriptors for the whitening fit contain NaN or inf")
    mean = data.mean(dim=0)
    centred = data - mean
    if n >= d_in:
        eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred / (n - 1))
        eigvals, axes = eigvals.flip(0), eigvecs.flip(1)
    else:
        gram_vals, gram_vecs = torch.linalg.eigh(centred @ centred.T / (n - 1))
        gram_vals, gram_vecs = gram_vals.flip(0)[:bound], gram_vecs.flip(1)[:, :bound]
        eigvals = gram_vals
        # covariance axis v = X^T u / ||X^T u||, with ||X^T u||^2 = (n - 1) lambda
        axes = centred.T @ gram_vecs / (gram_vals.clamp(min=0.0) * (n - 1)).sqrt().clamp(min=1e-300)
    largest = float(eigvals[0]) if len(eigvals) else 0.0
    rank = int((eigvals > _RANK_TOLERANCE * largest).sum()) if largest > 0 else 0
    if dim > rank:
        raise ValueError(
            f"whitening dim={dim} exceeds the rank {rank} of the centred descriptors "
            f"(N={n}, D={d_in}); lower dim or fit on more varied descriptors"
        )
    eigvals, axes = eigvals[:dim], axes[:, :dim]
    signs = torch.sign(axes.gather(0, axes.abs().argmax(dim=0, keepdim=True)))
    axes = axes * signs
    projection = axes / (eigvals + eps * largest).sqrt()
    whitening = PCAWhitening(d_in, dim)
    whitening.mean.copy_(mean.float())
    whitening.projection.copy_(projection.float())
    explained = float(eigvals.sum() / torch.clamp(centred.pow(2).sum() / (n - 1), min=1e-300))
    logger.info(
        "PCA-whitening %d -> %d fitted on %d descriptors (%.1f %% of the variance kept)",
        d_in,
        dim,
        n,
        100.0 * explained,
    )
    return whitening
