from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softloc.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageError,
    ImageStore,
    load_image,
    to_tensor,
)


def test_load_resizes_and_normalises(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.full((30, 40, 3), 255, dtype=np.uint8)).save(path)
    image = load_image(path, size=(20, 10))
    assert image.shape == (10, 20, 3) and image.dtype == np.uint8
    tensor = to_tensor(image)
    assert tensor.shape == (1, 3, 10, 20)
    expected = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(tensor[0, 0], torch.full((10, 20), expected))


def test_missing_and_corrupt_images_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nope.png: image not found"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ImageError, match="bad.png: cannot decode"):
        load_image(bad)
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    store = ImageStore([good, bad, truncated], size=(8, 8))
    problems = store.check()
    assert len(problems) == 2 and "bad.png" in problems[0] and "truncated.png" in problems[1]


def test_store_batches_and_serves_from_the_disk_cache(street) -> None:
    from softloc.data.image_cache import store_for_places

    decoded = ImageStore([street.image_path(i) for i in range(len(street))], size=(16, 12))
    cached = store_for_places(street, (16, 12))
    batch = cached.batch([0, 3])
    assert batch.shape == (2, 3, 12, 16)
    torch.testing.assert_close(batch, decoded.batch([0, 3]), rtol=0, atol=0)
    (street.image_path(0)).unlink()
    assert cached.get(0).shape == (12, 16, 3)  # served from the cache file
    with pytest.raises(ImageError, match="image not found"):
        decoded.get(0)


def test_decompression_bomb_is_an_image_error(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 2,000 pixels: over twice the limit
    with pytest.raises(ImageError, match="big.png: image too large.*Pillow's limit of 500"):
        load_image(path)
