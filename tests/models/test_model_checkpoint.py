"""Checkpoints: round trip with whitening, sidecar contents, and every way a file can be bad."""

from __future__ import annotations

import json

import pytest
import torch

from softloc.models import (
    CheckpointError,
    create_model,
    fit_pca_whitening,
    load_model,
    save_model,
    sidecar_path,
)

IMAGES = torch.randn(3, 3, 48, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trained_model():
    """small_netvlad (4 clusters) with k-means centroids and a fitted 16-d whitening."""
    torch.manual_seed(0)
    model = create_model("small_netvlad", pooling_kwargs={"num_clusters": 4}).eval()
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(30, 3, 48, 64, generator=generator)
    model.init_pooling([sample], features_per_image=4)
    with torch.no_grad():
        model.set_whitening(fit_pca_whitening(model(sample), dim=16))
    return model


def test_round_trip_gives_identical_outputs(tmp_path, trained_model) -> None:
    path = save_model(trained_model, tmp_path / "run" / "model.safetensors", extra={"step": 7})
    assert path == tmp_path / "run" / "model.safetensors"
    model, sidecar = load_model(path)
    assert not model.training
    assert model.out_dim == 16 and model.whitening is not None
    assert sidecar["extra"] == {"step": 7}
    assert sidecar["meta"] == trained_model.meta
    with torch.no_grad():
        assert torch.equal(model(IMAGES), trained_model(IMAGES))
    for key, value in trained_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.json", "model.safetensors"]


def test_sidecar_path_is_accepted_and_gem_p_is_kept(tmp_path) -> None:
    model = create_model("small_gem")
    with torch.no_grad():
        model.pool.p.fill_(4.5)
    path = save_model(model, tmp_path / "gem.safetensors")
    loaded, sidecar = load_model(sidecar_path(path))
    assert loaded.pool.p.item() == 4.5 and sidecar["extra"] == {}


def test_save_rejects_bad_arguments(tmp_path) -> None:
    model = create_model("small_gem")
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_model(model, tmp_path / "model.pth")
    with pytest.raises(ValueError, match="JSON-able"):
        save_model(model, tmp_path / "model.safetensors", extra={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_missing_sidecar_is_reported(tmp_path) -> None:
    path = save_model(create_model("small_gem"), tmp_path / "m.safetensors")
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match=r"m\.json.*missing") as info:
        load_model(path)
    assert isinstance(info.value, ValueError)


def test_missing_weights_are_reported(tmp_path) -> None:
    path = save_model(create_model("small_gem"), tmp_path / "m.safetensors")
    path.unlink()
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*missing"):
        load_model(path)


def test_corrupt_weights_are_reported(tmp_path) -> None:
    path = save_model(create_model("small_gem"), tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*checksum"):
        load_model(path)
    sidecar = json.loads(sidecar_path(path).read_text())
    del sidecar["weights_sha256"]  # without the checksum the reader itself must fail clearly
    sidecar_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint weights.*m\.safetensors"):
        load_model(path)


def test_corrupt_sidecar_is_reported(tmp_path) -> None:
    path = save_model(create_model("small_gem"), tmp_path / "m.safetensors")
    sidecar_path(path).write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"m\.json.*corrupt"):
        load_model(path)


def test_weights_that_do_not_fit_the_meta_are_reported(tmp_path) -> None:
    path = save_model(create_model("small_gem"), tmp_path / "m.safetensors")
    sidecar = json.loads(sidecar_path(path).read_text())
    sidecar["meta"] = create_model("small_netvlad").meta
    sidecar_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="does not fit its own meta"):
        load_model(path)


def test_saving_again_replaces_both_files(tmp_path, trained_model) -> None:
    path = tmp_path / "m.safetensors"
    save_model(create_model("small_gem"), path, extra={"step": 1})
    save_model(trained_model, path, extra={"step": 2})
    model, sidecar = load_model(path)
    assert sidecar["extra"]["step"] == 2 and model.out_dim == 16


def test_interrupted_save_leaves_no_loadable_checkpoint(tmp_path, monkeypatch) -> None:
    import safetensors.torch

    path = save_model(create_model("small_gem"), tmp_path / "m.safetensors", extra={"step": 1})

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(create_model("small_gem"), path, extra={"step": 2})
    with pytest.raises(CheckpointError, match="missing"):
        load_model(path)  # the old sidecar is gone, so old weights are never mistaken for new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_model_saved_before_the_whitening_bias_existed_still_loads(tmp_path, trained_model) -> None:
    from safetensors.torch import load_file, save_file

    path = save_model(trained_model, tmp_path / "old" / "model.safetensors")
    state = load_file(str(path))
    del state["whitening.bias"]  # what softloc wrote before the bias buffer existed
    save_file(state, str(path))
    sidecar = json.loads(sidecar_path(path).read_text())
    del sidecar["weights_sha256"]
    sidecar_path(path).write_text(json.dumps(sidecar))
    model, _ = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), trained_model(IMAGES))
