"""Grad-CAM of a retrieval: the package with our target against the formula done by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from softloc.explain.gradcam import (
    DescriptorDistanceTarget,
    gradcam_layer,
    pair_gradcam,
)
from softloc.models import create_model


class ChannelMean(nn.Module):
    """Backbone = identity 1x1 convolution + ReLU; head = mean over positions, L2-normalise.

    With non-negative images the feature map is the image itself, so the Grad-CAM of
    ``-||d_q - d_r||^2`` can be worked out by hand (see the test below).
    """

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 3, kernel_size=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        self.backbone = nn.Sequential(conv, nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x).mean(dim=(2, 3)), dim=1)


def halves(left: tuple[float, ...], right: tuple[float, ...], h: int = 8, w: int = 16):
    image = torch.zeros(1, 3, h, w)
    image[0, :, :, : w // 2] = torch.tensor(left).view(3, 1, 1)
    image[0, :, :, w // 2 :] = torch.tensor(right).view(3, 1, 1)
    return image


def test_heat_is_where_the_two_images_agree() -> None:
    # Query: left half channel 0, right half channel 1; reference: left channel 0, right
    # channel 2. By hand: d_q = (1, 1, 0)/sqrt2, d_r = (1, 0, 1)/sqrt2, and the gradient of
    # -||d_q - d_r||^2 = 2 d_q.d_r - 2 with respect to the mean feature m_q is
    # 2 (d_r - (d_q.d_r) d_q) / |m_q|, proportional to (0.5, -0.5, 1). Mean pooling spreads
    # it evenly, so the Grad-CAM weights are that vector and the map is
    # ReLU(w . A): +0.5 on the left half (channel 0, shared), -0.5 -> 0 on the right half
    # (channel 1, the query's own). The reference's map is its mirror image: (0.5, 1, -0.5)
    # gives +0.5 on the shared left half, -0.5 -> 0 on its own right half.
    model = ChannelMean()
    query = halves((1, 0, 0), (0, 1, 0))
    reference = halves((1, 0, 0), (0, 0, 1))
    query_heat, reference_heat, distance = pair_gradcam(model, query, reference)
    assert query_heat.shape == reference_heat.shape == (8, 16)
    assert distance == pytest.approx(2 - 2 * 0.5, abs=1e-6)  # |d_q - d_r|^2 = 2 - 2 cos
    for heat in (query_heat, reference_heat):
        np.testing.assert_allclose(heat[:, :8], 1.0, atol=1e-5)  # min-max scaled to [0, 1]
        np.testing.assert_allclose(heat[:, 8:], 0.0, atol=1e-5)


def manual_gradcam(model, image: torch.Tensor, other: torch.Tensor) -> np.ndarray:
    """Grad-CAM written from the formula with autograd: no hooks, no package."""
    features = model.forward_features(image).detach().requires_grad_(True)
    score = -((model.forward_head(features)[0] - other) ** 2).sum()
    (grad,) = torch.autograd.grad(score, features)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    return (cam / (cam.max() + 1e-7)).detach().numpy()


def test_package_matches_the_formula_on_a_small_cnn() -> None:
    torch.manual_seed(0)
    model = create_model("small_gem", image_size=(64, 48)).eval()
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(1, 3, 48, 64, generator=generator)
    reference = query.clone()
    reference[..., :, 32:] = torch.randn(1, 3, 48, 32, generator=generator)  # right half new
    query_heat, reference_heat, _ = pair_gradcam(model, query, reference)
    with torch.no_grad():
        d_q, d_r = model(query)[0], model(reference)[0]
    expected_q = manual_gradcam(model, query, d_r)
    expected_r = manual_gradcam(model, reference, d_q)
    assert query_heat.shape == (48, 64)
    assert query_heat.std() > 0.05 and reference_heat.std() > 0.05  # not constant
    # pytorch-grad-cam upsamples with OpenCV, we with torch: equal up to interpolation details
    assert np.corrcoef(query_heat.ravel(), expected_q.ravel())[0, 1] > 0.98
    assert np.corrcoef(reference_heat.ravel(), expected_r.ravel())[0, 1] > 0.98
    assert np.abs(query_heat - expected_q).mean() < 0.03
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_target_and_layer() -> None:
    target = DescriptorDistanceTarget(np.array([1.0, 0.0]))
    assert float(target(torch.tensor([0.0, 1.0]))) == pytest.approx(-2.0)
    assert gradcam_layer(create_model("raw_pixels")) is None
    model = create_model("small_netvlad", image_size=(32, 24))
    assert gradcam_layer(model) is model.backbone
    with pytest.raises(ValueError, match="no convolutional layer"):
        pair_gradcam(create_model("raw_pixels"), torch.zeros(1, 3, 24, 32),
                     torch.zeros(1, 3, 24, 32))
    with pytest.raises(ValueError, match="same size"):
        pair_gradcam(model, torch.zeros(1, 3, 24, 32), torch.zeros(1, 3, 24, 30))
