"""DescriptorModel: every preset's contract, meta rebuild, whitening, NetVLAD initialisation."""

from __future__ import annotations

import json

import pytest
import torch

from softloc.models import (
    DescriptorModel,
    PCAWhitening,
    available_models,
    create_model,
    fit_pca_whitening,
    model_from_meta,
)

# Tiny images (H=48, W=64) keep every preset fast, VGG16 included.
IMAGES = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))


def test_presets() -> None:
    assert available_models() == [
        "raw_pixels",
        "resnet18_gem",
        "resnet18_netvlad",
        "small_gem",
        "small_netvlad",
        "vgg16_gem",
        "vgg16_netvlad",
    ]


@pytest.mark.parametrize("name", available_models())
def test_every_model_fulfils_the_contract(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    # forward only for the big ones (backward is slow on 2 CPU cores) and for raw_pixels,
    # which has no parameters
    heavy = not name.startswith("small")
    with torch.set_grad_enabled(not heavy):
        features = model.forward_features(IMAGES)
        descriptors = model(IMAGES)
    assert features.ndim == 4 and features.shape[:2] == (2, model.feature_dim)
    assert descriptors.shape == (2, model.out_dim)
    assert torch.isfinite(descriptors).all()
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(2))
    grid = model.meta["pooling_kwargs"].get("grid", [1, 1])
    expected_dim = {
        "gem": 1,
        "netvlad": model.meta["pooling_kwargs"].get("num_clusters"),
        "thumbnail": grid[0] * grid[1],
    }
    assert model.out_dim == model.feature_dim * expected_dim[model.meta["pooling"]]
    if not heavy:
        (descriptors[:, : descriptors.shape[1] // 2].sum() - descriptors[1].max()).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_out_dim_and_image_size_of_presets() -> None:
    small = create_model("small_netvlad")
    assert small.out_dim == 16 * 128
    assert small.meta["preprocessing"]["image_size"] == [120, 90]
    assert create_model("vgg16_netvlad").out_dim == 64 * 512


def test_meta_is_json_and_rebuilds_the_same_model() -> None:
    model = create_model("small_netvlad", pooling_kwargs={"alpha": 20.0}, image_size=(96, 72))
    meta = json.loads(json.dumps(model.meta))
    assert meta["pooling_kwargs"] == {"num_clusters": 16, "alpha": 20.0, "normalize_input": True}
    assert meta["preprocessing"] == {
        "image_size": [96, 72],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    rebuilt = model_from_meta(meta)
    assert rebuilt.meta == model.meta
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(IMAGES), model(IMAGES))


def test_meta_errors() -> None:
    meta = create_model("small_gem").meta
    with pytest.raises(ValueError, match=r"lacks \['pooling'\]"):
        model_from_meta({k: v for k, v in meta.items() if k != "pooling"})
    with pytest.raises(ValueError, match="out_dim=7"):
        model_from_meta({**meta, "out_dim": 7})
    with pytest.raises(ValueError, match="newer"):
        model_from_meta({**meta, "format_version": 99})
    meta["meta_is_a_copy"] = True
    assert "meta_is_a_copy" not in create_model("small_gem").meta


def test_create_model_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match="known models.*small_gem"):
        create_model("vgg19_netvlad")
    with pytest.raises(ValueError, match=r"cannot override \['whitening'\]"):
        create_model("small_gem", whitening=256)
    with pytest.raises(ValueError, match=r"unknown pooling 'max'; known poolings"):
        create_model("small_gem", pooling="max")
    with pytest.raises(ValueError, match="invalid pooling_kwargs"):
        create_model("small_gem", pooling_kwargs={"num_clusters": 3})
    with pytest.raises(ValueError, match="must not set 'dim'"):
        create_model("small_gem", pooling_kwargs={"dim": 3})
    with pytest.raises(ValueError, match="image_size"):
        create_model("small_gem", image_size=(120,))
    with pytest.raises(ValueError, match="std must be three positive"):
        create_model("small_gem", std=(0.2, 0.0, 0.2))


def test_pooling_override_drops_the_preset_arguments() -> None:
    model = create_model("small_netvlad", pooling="gem")
    assert model.out_dim == 128 and model.meta["pooling"] == "gem"


def test_bad_images_are_rejected() -> None:
    model = create_model("small_gem")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(3, 48, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 48, 64))


def test_whitening_sets_out_dim_and_is_applied_after_pooling() -> None:
    model = create_model("small_gem").eval()
    with torch.no_grad():
        pooled = model(torch.randn(40, 3, 48, 64, generator=torch.Generator().manual_seed(1)))
        whitening = fit_pca_whitening(pooled, dim=8)
        model.set_whitening(whitening)
        out = model(IMAGES)
        expected = whitening(model.pool(model.forward_features(IMAGES)))
    assert model.out_dim == 8 and model.meta["whitening_dim"] == 8
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    model.set_whitening(None)
    assert model.out_dim == 128 and model.meta["whitening_dim"] is None
    with pytest.raises(ValueError, match="expects 64-d inputs but the pooling gives 128-d"):
        model.set_whitening(PCAWhitening(64, 8))


def test_init_pooling_runs_kmeans_on_backbone_features() -> None:
    model = create_model("small_netvlad", pooling_kwargs={"num_clusters": 4})
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(3, 3, 48, 64, generator=generator) for _ in range(4)]
    count = model.init_pooling(
        [batches[0], {"image": batches[1]}, *batches[2:]], features_per_image=5, max_features=40
    )
    # 3 images a batch, 5 features each: stops after the 3rd batch (45 >= 40), keeps 40.
    assert count == 40
    assert model.training
    pool = model.pool
    norms = pool.centroids.detach().norm(dim=1)
    assert (norms <= 1.0 + 1e-6).all()  # means of unit vectors
    torch.testing.assert_close(
        pool.assignment.weight.detach()[:, :, 0, 0], 2 * pool.alpha * pool.centroids.detach()
    )


def test_init_pooling_is_a_noop_for_gem() -> None:
    def unreadable():
        raise AssertionError("GeM must not read any batch")
        yield  # pragma: no cover

    assert create_model("small_gem").init_pooling(unreadable()) == 0


def test_init_pooling_without_batches() -> None:
    with pytest.raises(ValueError, match="no image batches"):
        create_model("small_netvlad").init_pooling([])


def test_custom_model_by_names() -> None:
    model = DescriptorModel("small", "netvlad", pooling_kwargs={"num_clusters": 2}, name="tiny")
    assert model.out_dim == 256 and model.meta["name"] == "tiny"
