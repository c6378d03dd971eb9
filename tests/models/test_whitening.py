"""PCA-whitening: identity covariance, a hand-worked example, numpy PCA, rank errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softloc.models import PCAWhitening, fit_pca_whitening


def correlated_sample(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(3.0, 0.2, d)[:, None]
    return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)


@pytest.mark.parametrize(("n", "d", "dim"), [(500, 10, 6), (30, 60, 12), (30, 60, 29)])
def test_projection_of_fit_data_has_identity_covariance(n: int, d: int, dim: int) -> None:
    data = correlated_sample(n, d, seed=1)
    whitening = fit_pca_whitening(data, dim=dim)
    projected = whitening.project(torch.from_numpy(data)).numpy()
    assert projected.shape == (n, dim)
    np.testing.assert_allclose(projected.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(dim), atol=1e-4)


@pytest.mark.parametrize(("n", "d"), [(400, 8), (25, 40)])
def test_axes_match_numpy_pca(n: int, d: int) -> None:
    data = correlated_sample(n, d, seed=2)
    whitening = fit_pca_whitening(data, dim=5)
    _, singular, vt = np.linalg.svd(data - data.mean(0), full_matrices=False)
    variances = singular[:5] ** 2 / (n - 1)
    expected = vt[:5].T / np.sqrt(variances)
    actual = whitening.projection.double().numpy()
    signs = np.sign((expected * actual).sum(axis=0))  # PCA axes are defined up to sign
    np.testing.assert_allclose(actual, expected * signs, rtol=1e-4, atol=1e-6)


def test_hand_worked_example_and_held_out_projection() -> None:
    # Mean 0; variance 2/3 along x and 8/3 along y (N - 1 = 3), so y is the first axis.
    data = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    whitening = fit_pca_whitening(data, dim=2, eps=0.0)
    held_out = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    expected = torch.tensor([[1.0 / (8 / 3) ** 0.5, 0.0], [0.0, 3.0 / (2 / 3) ** 0.5]])
    torch.testing.assert_close(whitening.project(held_out), expected)
    torch.testing.assert_close(whitening(held_out), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_forward_is_unit_norm_and_fit_classmethod_agrees() -> None:
    data = torch.from_numpy(correlated_sample(200, 12, seed=3)).float()
    whitening = PCAWhitening.fit(data, dim=4)
    out = whitening(data[:7])
    assert out.shape == (7, 4)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(7))
    torch.testing.assert_close(whitening.projection, fit_pca_whitening(data, 4).projection)
    assert set(whitening.state_dict()) == {"mean", "projection", "bias"}
    assert not whitening.bias.any()  # a fitted whitening has no bias


def test_bias_is_added_after_the_projection_and_old_files_load_without_one() -> None:
    whitening = PCAWhitening(3, 2)
    whitening.mean.copy_(torch.tensor([1.0, 0.0, 0.0]))
    whitening.projection.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    whitening.bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[3.0, 1.0, 7.0]])
    torch.testing.assert_close(whitening.project(x), torch.tensor([[2.5, 1.0]]))  # by hand
    torch.testing.assert_close(whitening.truncated(1).project(x), torch.tensor([[2.5]]))
    old = {k: v for k, v in whitening.state_dict().items() if k != "bias"}  # before bias existed
    loaded = PCAWhitening(3, 2)
    loaded.bias.fill_(9.0)
    loaded.load_state_dict(old, strict=True)
    assert not loaded.bias.any()
    torch.testing.assert_close(loaded.project(x), torch.tensor([[2.0, 2.0]]))


def test_dim_above_sample_bound_is_rejected() -> None:
    data = correlated_sample(20, 50, seed=4)
    with pytest.raises(ValueError, match=r"dim=20 exceeds min\(N - 1, D\) = 19"):
        fit_pca_whitening(data, dim=20)
    with pytest.raises(ValueError, match=r"exceeds min\(N - 1, D\) = 50"):
        fit_pca_whitening(correlated_sample(100, 50, seed=4), dim=51)


def test_dim_above_rank_is_rejected() -> None:
    rng = np.random.default_rng(5)
    data = rng.normal(size=(100, 3)) @ rng.normal(size=(3, 10))  # rank 3
    fit_pca_whitening(data, dim=3)
    with pytest.raises(ValueError, match="exceeds the rank 3"):
        fit_pca_whitening(data, dim=4)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\) matrix"):
        fit_pca_whitening(np.zeros(10), dim=1)
    bad = correlated_sample(20, 4, seed=6)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_pca_whitening(bad, dim=2)
    with pytest.raises(ValueError, match="out_dim <= in_dim"):
        PCAWhitening(4, 5)
    with pytest.raises(ValueError, match=r"expects \(\.\.\., 4\)"):
        PCAWhitening(4, 2)(torch.zeros(3, 5))


@pytest.mark.parametrize("n", [40, 9])  # covariance branch (N >= D) and Gram branch (N < D)
def test_truncating_a_fit_equals_fitting_the_smaller_size(n: int) -> None:
    rng = np.random.default_rng(7)
    data = rng.normal(size=(n, 12)) * np.linspace(3.0, 0.5, 12)
    large = fit_pca_whitening(data, dim=8)
    for dim in (1, 3, 8):
        fresh = fit_pca_whitening(data, dim=dim)
        cut = large.truncated(dim)
        assert cut.out_dim == dim
        torch.testing.assert_close(cut.mean, fresh.mean)
        torch.testing.assert_close(cut.projection, fresh.projection, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="1..8"):
        large.truncated(9)
