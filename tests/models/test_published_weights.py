"""Published weights read from local files in their exact formats, checked by forward passes.

Each test writes a small file in the publisher's own layout (scipy ``savemat`` of a MatConvNet
SimpleNN struct as hloc reads it, a pytorch-NetVlad ``checkpoint.pth.tar``, torchvision state
dicts) with random tensors of VGG16's true shapes (few clusters, tiny images to stay fast) and
compares softloc's model with a forward pass written here from the maths of the original.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy.io import savemat
from torch import nn

from softloc.cli import main
from softloc.models import WeightsNotFoundError, create_model, load_model
from softloc.models.published import (
    PublishedWeightsError,
    convert_weights,
    model_from_weights,
    read_published_weights,
)

CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_AFTER = {1, 3, 6, 9}  # VGG16 max-pools after conv1_2, conv2_2, conv3_3, conv4_3
NAMES = ("1_1 1_2 2_1 2_2 3_1 3_2 3_3 4_1 4_2 4_3 5_1 5_2 5_3").split()
K = 4  # clusters (the published models have 64; the layout is the same)
WHITENED = 16  # WPCA output size (4096 in the published models)
IMAGES = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(5))  # in [0, 1]


def _vgg_convs(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """13 random (OUT x IN x 3 x 3, OUT) convolutions, He-scaled so activations stay O(1)."""
    generator = torch.Generator().manual_seed(seed)
    convs, in_channels = [], 3
    for out in CHANNELS:
        std = (2.0 / (9 * in_channels)) ** 0.5
        weight = torch.randn(out, in_channels, 3, 3, generator=generator) * std
        convs.append((weight, torch.randn(out, generator=generator) * 0.1))
        in_channels = out
    return convs


def _vgg_reference(x: torch.Tensor, convs, final_relu: bool) -> torch.Tensor:
    """VGG16 conv1_1 ... conv5_3: 3x3 convolutions (padding 1), ReLUs, 2x2 max-pools."""
    for i, (weight, bias) in enumerate(convs):
        x = F.conv2d(x, weight, bias, padding=1)
        if i < 12 or final_relu:
            x = torch.relu(x)
        if i in POOL_AFTER:
            x = F.max_pool2d(x, 2)
    return x


def _l2(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / x.pow(2).sum(dim=dim, keepdim=True).sqrt()


def _cell(items) -> np.ndarray:
    """A MATLAB cell array (what savemat writes for an object array)."""
    cell = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        cell[i] = item
    return cell


def _write_matconvnet(path: Path, convs, assign, offsets, wpca, wpca_bias, average,
                      final_relu: bool = False) -> None:
    """The NetVLAD authors' network as struct layers (netvlad_tf_open's net_class2struct.m):
    conv/relu/pool of VGG16, preL2, vlad_core {assignment, offsets = -centroids}, intra-norm,
    postL2, WPCA {1 x 1 x IN x OUT, OUT}, finalL2; filters H x W x IN x OUT."""
    layers: list[dict] = []
    for i, (weight, bias) in enumerate(convs):
        layers.append({
            "name": f"conv{NAMES[i]}", "type": "conv", "pad": np.ones(4), "stride": np.ones(2),
            "weights": _cell([weight.permute(2, 3, 1, 0).numpy(), bias.numpy()]),
        })
        if i < 12 or final_relu:
            layers.append({"name": f"relu{NAMES[i]}", "type": "relu", "leak": 0.0})
        if i in POOL_AFTER:
            layers.append({"name": f"pool{NAMES[i][0]}", "type": "pool", "method": "max",
                           "pool": np.array([2.0, 2.0]), "stride": np.array([2.0, 2.0]),
                           "pad": np.zeros(4)})
    norm = np.array([1024.0, 1e-12, 1.0, 0.5])
    layers += [
        {"name": "preL2", "type": "normalize", "param": norm},
        {"name": "vlad_core", "type": "custom", "K": float(K), "D": 512.0,
         "weights": _cell([assign.reshape(1, 1, 512, K), offsets.reshape(1, 1, 512, K)])},
        {"name": "vlad_intranorm", "type": "normalize", "param": norm},
        {"name": "postL2", "type": "custom"},
        {"name": "WPCA", "type": "conv", "pad": 0.0, "stride": 1.0,
         "weights": _cell([wpca.reshape(1, 1, *wpca.shape), wpca_bias])},
        {"name": "finalL2", "type": "custom"},
    ]
    net = {"layers": _cell(layers), "meta": {"normalization": {"averageImage": average}}}
    savemat(str(path), {"net": net})


def _matconvnet_reference(images, convs, assign, offsets, wpca, wpca_bias, rgb) -> torch.Tensor:
    """The MatConvNet forward pass: 0-255 RGB minus the mean pixel, VGG16 to conv5_3 (no ReLU),
    preL2, y[k, d] = sum_n a_k(x_n) (x_n + offset[d, k]) with a = softmax_k(assign^T x), intra-norm
    over d, MATLAB's column-major flattening of 1 x K x D (entry d * K + k), L2, WPCA, L2."""
    x = images * 255.0 - torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)
    local = _l2(_vgg_reference(x, convs, final_relu=False).flatten(2), dim=1)  # (B, D, N)
    a = torch.einsum("dk,bdn->bkn", torch.from_numpy(assign), local).softmax(dim=1)
    offsets_t = torch.from_numpy(offsets)
    y = torch.einsum("bkn,bdn->bkd", a, local) + a.sum(2)[:, :, None] * offsets_t.T[None]
    y = _l2(y, dim=2)
    flat = torch.stack([y[:, k, d] for d in range(512) for k in range(K)], dim=1)
    flat = _l2(flat, dim=1)
    return _l2(flat @ torch.from_numpy(wpca) + torch.from_numpy(wpca_bias), dim=1)


def _normalised(model, images: torch.Tensor) -> torch.Tensor:
    """What softloc's image pipeline feeds the model: (x - mean) / std from the model's meta."""
    pre = model.meta["preprocessing"]
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    return (images - mean) / std


@pytest.fixture(scope="module")
def netvlad_mat(tmp_path_factory):
    """A MatConvNet NetVLAD file, its tensors and the reference descriptors of IMAGES."""
    rng = np.random.default_rng(2)
    convs = _vgg_convs(seed=3)
    assign = rng.normal(0, 5.0, (512, K)).astype(np.float32)
    offsets = rng.normal(0, 0.05, (512, K)).astype(np.float32)
    wpca = rng.normal(0, 1.0, (512 * K, WHITENED)).astype(np.float32)
    wpca_bias = rng.normal(0, 0.1, WHITENED).astype(np.float32)
    average = np.full((4, 4, 3), 7.0)
    average[0, 0] = [123.7, 116.8, 103.9]  # hloc and netvlad_tf_open use pixel [0, 0]
    path = tmp_path_factory.mktemp("mat") / "Pitts30K_struct.mat"
    _write_matconvnet(path, convs, assign, offsets, wpca, wpca_bias, average)
    expected = _matconvnet_reference(IMAGES, convs, assign, offsets, wpca, wpca_bias,
                                     average[0, 0])
    return path, expected


def test_matconvnet_netvlad_forward_equals_the_original_maths(netvlad_mat) -> None:
    path, expected = netvlad_mat
    model = model_from_weights(path).eval()
    assert model.meta["backbone"] == "vgg16_prerelu" and model.meta["out_dim"] == WHITENED
    assert model.meta["pooling_kwargs"]["num_clusters"] == K
    with torch.no_grad():
        actual = model(_normalised(model, IMAGES))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=2e-5)
    assert not torch.allclose(actual[0], actual[1], atol=1e-3)  # the images are told apart


def test_convert_cli_writes_a_model_that_map_build_loads(netvlad_mat, tmp_path, capsys) -> None:
    path, expected = netvlad_mat
    out = tmp_path / "netvlad_pitts30k.safetensors"
    assert main(["-q", "weights", "convert", str(path), "--to", str(out),
                 "--image-size", "64x48"]) == 0
    model, sidecar = load_model(out)
    assert sidecar["extra"]["converted_from"]["format"] == "matconvnet-netvlad"
    assert model.meta["preprocessing"]["image_size"] == [64, 48]
    with torch.no_grad():
        torch.testing.assert_close(model(_normalised(model, IMAGES)), expected,
                                   rtol=1e-4, atol=2e-5)
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    capsys.readouterr()
    assert main(["-q", "weights", "convert", str(path), "--to", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before  # nothing lost
    assert main(["-q", "weights", "convert", str(path), "--to", str(out), "--overwrite"]) == 0


def test_training_takes_the_netvlad_but_not_the_whitening(netvlad_mat) -> None:
    path, _ = netvlad_mat
    model = create_model("vgg16_netvlad", weights=path, image_size=(64, 48))
    assert model.whitening is None and model.out_dim == 512 * K
    centroids = model.pool.centroids.detach().clone()
    assert model.init_pooling([IMAGES]) == 0  # no k-means over the file's centroids
    assert torch.equal(model.pool.centroids, centroids)
    published = read_published_weights(path)
    assert published.netvlad is not None
    torch.testing.assert_close(centroids, published.netvlad["centroids"])


def _pytorch_netvlad_state(convs, centroids, weight, bias, parallel: bool) -> dict:
    """pytorch-NetVlad's model.state_dict(): encoder = vgg16().features[:-2], pool = NetVLAD
    (``conv.bias`` only with --vladv2); with --nGPU > 1 both are wrapped in DataParallel."""
    encoder = "encoder.module." if parallel else "encoder."
    pool = "pool.module." if parallel else "pool."
    state = {}
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    for index, (w, b) in zip(indices, convs, strict=True):
        state[f"{encoder}{index}.weight"] = w
        state[f"{encoder}{index}.bias"] = b
    state[f"{pool}conv.weight"] = weight
    if bias is not None:
        state[f"{pool}conv.bias"] = bias
    state[f"{pool}centroids"] = centroids
    return state


@pytest.mark.parametrize(("vladv2", "parallel"), [(False, False), (True, True)])
def test_pytorch_netvlad_checkpoint_forward_equals_its_maths(tmp_path, vladv2, parallel) -> None:
    """v1 in torch's zip format; --vladv2 with DataParallel keys in the legacy (pre-1.6) one."""
    generator = torch.Generator().manual_seed(7)
    convs = _vgg_convs(seed=8)
    centroids = torch.randn(K, 512, generator=generator) * 0.05
    weight = torch.randn(K, 512, 1, 1, generator=generator) * 5.0
    bias = torch.randn(K, generator=generator) if vladv2 else None
    checkpoint = {  # what main.py's save_checkpoint writes, numpy scalars included
        "epoch": 3,
        "state_dict": _pytorch_netvlad_state(convs, centroids, weight, bias, parallel),
        "recalls": {1: np.float64(0.85), 5: np.float64(0.948)},
        "best_score": np.float64(0.948),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "parallel": parallel,
    }
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not parallel)

    # pytorch-NetVlad: ImageNet normalisation, VGG16 to conv5_3 without ReLU, L2 over channels,
    # softmax_k(w_k . x + b_k), V[k] = sum_n a_k (x_n - c_k), intra-norm, flatten K-major, L2
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    local = _l2(_vgg_reference((IMAGES - mean) / std, convs, final_relu=False).flatten(2), 1)
    scores = torch.einsum("kd,bdn->bkn", weight[:, :, 0, 0], local)
    if bias is not None:
        scores = scores + bias[None, :, None]
    a = scores.softmax(dim=1)
    vlad = torch.stack([
        (a[:, k : k + 1, :] * (local - centroids[k][None, :, None])).sum(-1) for k in range(K)
    ], dim=1)
    expected = _l2(_l2(vlad, dim=2).reshape(len(IMAGES), -1), dim=1)

    model = model_from_weights(path).eval()
    assert model.meta["backbone"] == "vgg16_prerelu" and model.whitening is None
    with torch.no_grad():
        actual = model(_normalised(model, IMAGES))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=2e-5)


def test_torchvision_vgg16_state_dict_becomes_a_gem_model(tmp_path) -> None:
    with torch.device("meta"):
        reference = torchvision.models.vgg16(weights=None)
    features = reference.features.to_empty(device="cpu")
    for (weight, bias), conv in zip(_vgg_convs(seed=11),
                                    [m for m in features if isinstance(m, nn.Conv2d)],
                                    strict=True):
        conv.weight.data.copy_(weight)
        conv.bias.data.copy_(bias)
    state = {  # the classifier keeps torchvision's keys and shapes, one shared zero each
        key: value if key.startswith("features.") else torch.zeros(()).expand(value.shape)
        for key, value in reference.state_dict().items()
    }
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    model = model_from_weights(path).eval()
    assert model.meta["name"] == "vgg16_gem" and model.meta["backbone"] == "vgg16"
    with torch.no_grad():
        conv5_3 = features.eval()[:30](_normalised(model, IMAGES))  # relu5_3 kept, pool5 not
        expected = _l2(conv5_3.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3), dim=1)
        actual = model(_normalised(model, IMAGES))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_torchvision_resnet18_state_dict_lands_in_the_trunk(tmp_path) -> None:
    torch.manual_seed(12)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), path)
    model = model_from_weights(path).eval()
    assert model.meta["name"] == "resnet18_gem"
    with torch.no_grad():
        x = _normalised(model, IMAGES)
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        x = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
        expected = _l2(x.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3), dim=1)
        actual = model(_normalised(model, IMAGES))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_a_bare_backbone_is_not_converted_into_a_random_netvlad(tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(PublishedWeightsError, match="holds no NetVLAD.*softloc train --weights"):
        convert_weights(path, tmp_path / "out.safetensors", name="resnet18_netvlad")
    assert not (tmp_path / "out.safetensors").exists()


# --- bad input: clear errors naming the file and the accepted formats -------------------------


def test_mat_without_net_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "other.mat"
    savemat(str(path), {"weights": np.zeros(3)})
    with pytest.raises(PublishedWeightsError, match=r"other\.mat.*without a 'net'.*Accepted"):
        read_published_weights(path)
    out = str(tmp_path / "o.safetensors")
    assert main(["-q", "weights", "convert", str(path), "--to", out]) == 2
    assert "other.mat" in capsys.readouterr().err


def test_not_a_matlab_file_is_refused(tmp_path) -> None:
    path = tmp_path / "broken.mat"
    path.write_bytes(b"this is not MATLAB" * 10)
    with pytest.raises(PublishedWeightsError, match=r"broken\.mat.*cannot read it as a MATLAB"):
        read_published_weights(path)


def test_mat_with_a_wrong_filter_shape_names_the_layer(tmp_path) -> None:
    convs = _vgg_convs(seed=1)
    convs[4] = (torch.zeros(256, 128, 5, 5), convs[4][1])
    rng = np.random.default_rng(0)
    path = tmp_path / "bad.mat"
    _write_matconvnet(path, convs, rng.normal(size=(512, K)).astype(np.float32),
                      np.zeros((512, K), np.float32), np.zeros((512 * K, 4), np.float32),
                      np.zeros(4, np.float32), np.zeros(3))
    with pytest.raises(PublishedWeightsError, match=r"bad\.mat.*conv3_1.*expected \(3, 3, 128"):
        read_published_weights(path)


def test_checkpoint_without_state_dict_is_refused(tmp_path) -> None:
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "best_score": 0.5, "optimizer": {"state": {}}}, path)
    with pytest.raises(PublishedWeightsError, match=r"checkpoint\.pth\.tar.*without 'state_dict'"):
        read_published_weights(path)


def test_pytorch_netvlad_with_wrong_centroid_shape_is_refused(tmp_path) -> None:
    state = _pytorch_netvlad_state(_vgg_convs(seed=2), torch.zeros(K, 256),
                                   torch.zeros(K, 512, 1, 1), None, parallel=False)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(PublishedWeightsError, match=r"model_best.*pool.centroids \(4, 256\)"):
        read_published_weights(path)


def test_unknown_layout_and_missing_file(tmp_path) -> None:
    path = tmp_path / "mystery.pth"
    torch.save({"head.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(PublishedWeightsError, match=r"mystery\.pth.*none of the known layouts"):
        convert_weights(path, tmp_path / "o.safetensors")
    with pytest.raises(WeightsNotFoundError, match="never downloaded"):
        read_published_weights(tmp_path / "absent.mat")


# --- --weights in train and map build -----------------------------------------------------------


def test_map_build_weights_equals_convert_then_model(street, tmp_path) -> None:
    import json

    torch.manual_seed(13)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    common = ["--data", str(tmp_path), "--spacing", "4"]
    assert main(["-q", "map", "build", "--weights", str(path), "--out", str(tmp_path / "a"),
                 *common]) == 0
    converted = tmp_path / "resnet18.safetensors"
    assert main(["-q", "weights", "convert", str(path), "--to", str(converted)]) == 0
    assert main(["-q", "map", "build", "--model", str(converted), "--out", str(tmp_path / "b"),
                 *common]) == 0
    a = np.load(tmp_path / "a" / "descriptors.npy")
    b = np.load(tmp_path / "b" / "descriptors.npy")
    assert a.shape[1] == 512 and len(a) >= 4
    np.testing.assert_array_equal(a, b)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert str(path) in json.dumps(manifest)  # the source is the weights file, not a temp copy
    assert not list(tmp_path.glob("a/*.tmp"))


def test_train_weights_starts_from_the_pytorch_netvlad_model(street, tmp_path) -> None:
    from softloc.train import Trainer
    from tests.tiny_run import tiny_config

    generator = torch.Generator().manual_seed(21)
    convs = _vgg_convs(seed=22)
    centroids = torch.randn(K, 512, generator=generator) * 0.05
    weight = torch.randn(K, 512, 1, 1, generator=generator) * 5.0
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "state_dict": _pytorch_netvlad_state(convs, centroids, weight, None,
                                                                 parallel=False)}, path)
    config = tiny_config(tmp_path, "model.name=vgg16_netvlad", f"model.weights={path}",
                         "loss.name=off_the_shelf", "train.val_queries=2")
    final = Trainer(config, tmp_path / "run", progress=False).run()
    model, _ = load_model(final)
    torch.testing.assert_close(model.pool.centroids, centroids)  # not replaced by k-means
    reference = model_from_weights(path, image_size=(32, 24)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_normalised(model, IMAGES)),
                                   reference(_normalised(reference, IMAGES)))


def test_softloc_tensors_without_their_sidecar_are_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(create_model("small_gem").state_dict(), str(path))
    with pytest.raises(PublishedWeightsError, match=r"model\.safetensors.*without its sidecar"):
        read_published_weights(path)
