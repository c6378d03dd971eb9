from __future__ import annotations

import numpy as np
import torch

from softloc.models import create_model, load_model, save_model, thumbnail


def test_thumbnail_by_hand() -> None:
    # a 1-channel 2x4 image pooled to a 1x2 grid: block means 1.5 and 5.5, centred -2, +2
    x = torch.tensor([[[[1.0, 2.0, 5.0, 6.0], [1.0, 2.0, 5.0, 6.0]]]])
    out = thumbnail(x, grid=(1, 2))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 1.0]]) / np.sqrt(2))


def test_raw_pixels_model_matches_identical_images_and_round_trips(tmp_path) -> None:
    model = create_model("raw_pixels", image_size=(64, 48))
    assert model.out_dim == 3 * 24 * 32 and not list(model.parameters())
    images = torch.randn(3, 3, 48, 64)
    images[2] = images[0]
    out = model(images)
    assert torch.allclose(out.norm(dim=1), torch.ones(3))
    assert torch.allclose(out[0] @ out[2], torch.tensor(1.0))
    assert out[0] @ out[1] < 0.5
    loaded, _ = load_model(save_model(model, tmp_path / "raw.safetensors"))
    torch.testing.assert_close(loaded(images), out)
