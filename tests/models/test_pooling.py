"""Pooling: GeM against closed forms, NetVLAD against a naive loop, k-means initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softloc.models import GeM, NetVLAD, available_poolings, create_pooling, gem


def test_registry() -> None:
    assert set(available_poolings()) >= {"gem", "netvlad"}
    assert create_pooling("netvlad", dim=8, num_clusters=3).out_dim == 24
    assert create_pooling("gem", dim=8).out_dim == 8
    with pytest.raises(ValueError, match="known poolings"):
        create_pooling("mac2", dim=8)
    with pytest.raises(ValueError, match="invalid arguments"):
        create_pooling("gem", dim=8, clusters=3)


def test_gem_with_p1_is_average_pooling() -> None:
    x = torch.rand(2, 5, 4, 3, dtype=torch.float64) + 0.1
    torch.testing.assert_close(gem(x, p=1.0), F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_gem_by_hand() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)
    torch.testing.assert_close(gem(x, p=3.0), torch.tensor([[expected]], dtype=torch.float64))


def test_gem_module_is_normalised_and_learns_p() -> None:
    pool = GeM(p=3.0, dim=5)
    x = torch.rand(2, 5, 4, 3)
    out = pool(x)
    torch.testing.assert_close(out, F.normalize(gem(x, 3.0), dim=-1))
    out.sum().backward()
    assert pool.p.grad is not None and torch.isfinite(pool.p.grad).all()
    fixed = GeM(p=2.0, learnable=False)
    assert "p" in dict(fixed.named_buffers()) and not list(fixed.parameters())
    with pytest.raises(ValueError, match="positive"):
        GeM(p=0.0)


def naive_netvlad(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """NetVLAD written as explicit loops over images, positions and clusters."""
    batch, channels, height, width = x.shape
    clusters = centroids.shape[0]
    out = []
    for b in range(batch):
        vlad = torch.zeros(clusters, channels, dtype=x.dtype)
        for i in range(height):
            for j in range(width):
                feature = x[b, :, i, j] / x[b, :, i, j].norm()
                logits = torch.stack([weight[k] @ feature + bias[k] for k in range(clusters)])
                assignment = torch.exp(logits) / torch.exp(logits).sum()
                for k in range(clusters):
                    vlad[k] += assignment[k] * (feature - centroids[k])
        for k in range(clusters):
            vlad[k] = vlad[k] / vlad[k].norm()
        flat = vlad.flatten()
        out.append(flat / flat.norm())
    return torch.stack(out)


def test_netvlad_matches_naive_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    pool = NetVLAD(num_clusters=4, dim=5).double()
    with torch.no_grad():
        pool.assignment.weight.normal_(generator=generator)
        pool.assignment.bias.normal_(generator=generator)
        pool.centroids.normal_(generator=generator)
    x = torch.randn(2, 5, 3, 2, dtype=torch.float64, generator=generator)
    expected = naive_netvlad(
        x, pool.assignment.weight[:, :, 0, 0], pool.assignment.bias, pool.centroids
    )
    actual = pool(x)
    assert actual.shape == (2, 20)
    torch.testing.assert_close(actual, expected)


def test_netvlad_gradcheck() -> None:
    pool = NetVLAD(num_clusters=3, dim=4, alpha=1.0).double()
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pool, (x,))


def test_kmeans_init_puts_centroids_at_cluster_means() -> None:
    generator = torch.Generator().manual_seed(0)
    directions = torch.eye(6)[:3] * torch.tensor([[1.0], [2.0], [0.5]])  # norms do not matter
    labels = torch.arange(3).repeat_interleave(40)
    features = directions[labels] + 0.02 * torch.randn(120, 6, generator=generator)
    pool = NetVLAD(num_clusters=3, dim=6, alpha=50.0)
    pool.init_from_features(features, seed=0)
    normalised = F.normalize(features.double(), dim=1)
    means = torch.stack([normalised[labels == k].mean(0) for k in range(3)]).float()
    match = torch.cdist(means, pool.centroids.detach()).argmin(dim=1)
    assert sorted(match.tolist()) == [0, 1, 2]
    torch.testing.assert_close(pool.centroids.detach()[match], means, atol=1e-5, rtol=0)
    # w = 2 alpha c, b = -alpha ||c||^2: the assignment is softmax(-alpha ||x - c||^2)
    x = normalised[:5].float()
    logits = pool.assignment(x[:, :, None, None])[:, :, 0, 0]
    distances = torch.cdist(x, pool.centroids.detach()).pow(2)
    torch.testing.assert_close(logits.softmax(1), (-50.0 * distances).softmax(1), atol=1e-4, rtol=0)


def test_kmeans_init_rejects_bad_features() -> None:
    pool = NetVLAD(num_clusters=4, dim=3)
    with pytest.raises(ValueError, match="at least num_clusters=4"):
        pool.init_from_features(torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        pool.init_from_features(torch.randn(10, 5))
    with pytest.raises(ValueError, match="NaN"):
        pool.init_from_features(torch.full((10, 3), float("nan")))


def test_netvlad_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match=r"expects \(B, 8, H, W\)"):
        NetVLAD(num_clusters=2, dim=8)(torch.rand(1, 4, 2, 2))
