"""Published models from local files: the NetVLAD authors', pytorch-NetVlad's, torchvision's.

People start from, and compare against, models others trained. Nothing is downloaded: the user
fetches the file and passes its path. :func:`read_published_weights` recognises the format by
content (not by name) and returns the tensors in softloc's layout; :func:`model_from_weights`
builds the :class:`~softloc.models.DescriptorModel` they describe; :func:`convert_weights` writes
it as a softloc model file (``softloc weights convert SRC --to OUT.safetensors``).

Formats (docs/models.md, "Published weights", says where each is published and its licence):

- ``matconvnet-netvlad``: the NetVLAD authors' VGG16 MatConvNet models
  (``vd16_pitts30k_conv5_3_vlad_preL2_intra_white.mat`` ...) with their layers stored as plain
  structs, as hloc distributes them (``Pitts30K_struct.mat``, made by netvlad_tf_open's
  ``net_class2struct.m``): conv layers, ``vlad_core`` (assignment and negated centroids), the
  ``WPCA`` whitening and ``meta.normalization.averageImage``.
- ``pytorch-netvlad``: Nanne/pytorch-NetVlad ``checkpoint.pth.tar`` / ``model_best.pth.tar``
  (``state_dict`` with ``encoder.N.*`` = VGG16 features cropped before relu5_3 and ``pool.*``).
- ``torchvision-vgg16`` / ``torchvision-resnet18``: a bare torchvision ImageNet state dict.
- ``softloc``: a softloc model file (``NAME.safetensors`` + ``NAME.json``), e.g. a converted one.

Where softloc follows the originals and where it differs is listed in docs/models.md.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softloc.models.backbones import WeightsNotFoundError, load_backbone_state
from softloc.models.descriptor import IMAGENET_MEAN, IMAGENET_STD, DescriptorModel
from softloc.models.whitening import PCAWhitening

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = (
    "the NetVLAD authors' MatConvNet .mat with struct layers (as hloc's Pitts30K_struct.mat), "
    "a pytorch-NetVlad checkpoint.pth.tar (state_dict with encoder.* and pool.*), "
    "a torchvision VGG16 or ResNet-18 ImageNet state dict (.pth), "
    "or a softloc model file (NAME.safetensors with NAME.json)"
)

# torchvision's vgg16().features indices of the 13 convolutions (conv1_1 ... conv5_3).
_VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
# MatConvNet layer types of VGG16 up to conv5_3 (its relu5_3 may follow).
_VGG16_MATCONVNET_TYPES = (
    ["conv", "relu", "conv", "relu", "pool"] * 2
    + ["conv", "relu", "conv", "relu", "conv", "relu", "pool"] * 2
    + ["conv", "relu", "conv", "relu", "conv"]
)


STATE_DICT_FORMAT = "state-dict"


class PublishedWeightsError(ValueError):
    """A weights file that cannot be read, or is none of the accepted formats."""


@dataclass(frozen=True)
class PublishedWeights:
    """What a published weights file holds, already in softloc's tensor layout.

    Attributes:
        source: the file.
        format: ``matconvnet-netvlad``, ``pytorch-netvlad``, ``torchvision-vgg16``,
            ``torchvision-resnet18`` or ``softloc``.
        backbone: the softloc backbone family the tensors fit (``vgg16`` or ``resnet18``;
            for ``softloc`` files the recorded backbone name).
        backbone_state: state dict of that backbone (keys ``features.N.*`` ...).
        final_relu: whether the network applies a ReLU after its last convolution (NetVLAD
            crops VGG16 at conv5_3 *before* relu5_3).
        netvlad: state dict of softloc's ``NetVLAD`` (``assignment.weight``,
            ``assignment.bias``, ``centroids``) or None.
        normalize_input: NetVLAD's L2-normalisation of the local features (``preL2``).
        whitening: state dict of :class:`PCAWhitening` (``mean``, ``projection``, ``bias``)
            or None.
        mean, std: image normalisation the weights were trained with (RGB, [0, 1] units).
        meta: the recorded model description of a ``softloc`` file, else None.
    """

    source: Path
    format: str
    backbone: str
    backbone_state: dict[str, torch.Tensor]
    final_relu: bool = True
    netvlad: dict[str, torch.Tensor] | None = None
    normalize_input: bool = True
    whitening: dict[str, torch.Tensor] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    meta: dict[str, Any] | None = field(default=None)

    @property
    def num_clusters(self) -> int | None:
        """K of the file's NetVLAD, or None without one."""
        return None if self.netvlad is None else int(self.netvlad["centroids"].shape[0])


def read_published_weights(path: str | os.PathLike[str]) -> PublishedWeights:
    """Recognise and read a published weights file (see the module docstring for formats).

    The format is told by content: a MATLAB file, or the key names of a torch / safetensors
    state dict. Torch files are read with ``weights_only=True`` (no code from the file runs).

    Raises:
        WeightsNotFoundError: the file does not exist.
        PublishedWeightsError: unreadable, unknown format, or tensors of the wrong shapes; the
            message names the file and the accepted formats.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsNotFoundError(
            f"weights file {str(file)!r} does not exist. Weights are never downloaded: fetch the "
            "file yourself (docs/models.md, 'Published weights', says where) and pass its path"
        )
    with file.open("rb") as handle:
        head = handle.read(128)
    if head.startswith(b"MATLAB") or file.suffix.lower() == ".mat":
        return _read_matconvnet(file)
    if file.suffix.lower() == ".safetensors" or file.suffix.lower() == ".json":
        return _read_safetensors(file)
    return _from_torch_state(file, _torch_state_dict(file))


def model_from_weights(
    weights: PublishedWeights | str | os.PathLike[str],
    name: str | None = None,
    *,
    with_whitening: bool = True,
    **overrides: Any,
) -> DescriptorModel:
    """The descriptor model a published file describes, with its tensors loaded.

    Args:
        weights: the file, or what :func:`read_published_weights` read from it.
        name: a preset of :func:`~softloc.models.available_models` to fit the file into; by
            default ``vgg16_netvlad`` for files with a NetVLAD, else ``<backbone>_gem``. A file
            with a NetVLAD fills the preset's NetVLAD (K from the file) and uses the backbone
            without its last ReLU when the file's network has none (``vgg16_prerelu``); into a
            preset with another pooling only the backbone is loaded.
        with_whitening: attach the file's whitening (the NetVLAD authors' WPCA) if it has one.
        **overrides: as :func:`~softloc.models.create_model` (``image_size``, ``mean``, ...);
            ``mean`` and ``std`` default to what the weights were trained with.

    Returns:
        The model (train mode, CPU). ``model.pooling_from_weights`` is True when the pooling
        came from the file, so that training does not re-initialise it by k-means.

    Raises:
        PublishedWeightsError: the file does not fit the preset (another backbone family, a
            NetVLAD of another K than asked for).
    """
    from softloc.models.descriptor import _PRESETS, create_model

    published = weights if isinstance(weights, PublishedWeights) else read_published_weights(
        weights
    )
    if published.format == "softloc" and name is None and published.meta is not None:
        return _softloc_model(published, with_whitening, overrides)
    if published.format == STATE_DICT_FORMAT and name is None:
        raise _error(published.source, f"its keys {sorted(published.backbone_state)[:6]} are "
                                       "none of the known layouts")
    if name is None:
        name = f"{published.backbone}_netvlad" if published.netvlad else f"{published.backbone}_gem"
    if name not in _PRESETS:
        raise PublishedWeightsError(f"unknown model {name!r} for weights {str(published.source)!r}")
    preset = _PRESETS[name]
    family = str(overrides.get("backbone", preset.backbone)).removesuffix("_prerelu")
    if published.format != STATE_DICT_FORMAT and family != published.backbone:
        raise PublishedWeightsError(
            f"weights file {str(published.source)!r} ({published.format}) holds a "
            f"{published.backbone} network but model {name!r} uses backbone {family!r}; pick "
            f"a {published.backbone}_* model"
        )
    pooling = str(overrides.get("pooling", preset.pooling))
    takes_pooling = pooling == "netvlad" and published.netvlad is not None
    options = dict(overrides)
    options.setdefault("mean", published.mean)
    options.setdefault("std", published.std)
    if takes_pooling:
        kwargs = dict(options.get("pooling_kwargs") or {})
        wanted = kwargs.get("num_clusters", published.num_clusters)
        if int(wanted) != published.num_clusters:
            raise PublishedWeightsError(
                f"weights file {str(published.source)!r} has a NetVLAD of "
                f"{published.num_clusters} clusters but num_clusters={wanted} was asked for; "
                "drop the num_clusters option"
            )
        kwargs.update(num_clusters=published.num_clusters,
                      normalize_input=published.normalize_input)
        options["pooling_kwargs"] = kwargs
        if not published.final_relu:
            options["backbone"] = f"{family}_prerelu"
    model = create_model(name, **options)
    model._name = name if not overrides else f"{name}+custom"  # the file's settings are no edit
    load_backbone_state(model.backbone, published.backbone_state, published.source)
    if takes_pooling:
        assert published.netvlad is not None
        model.pool.load_state_dict(published.netvlad, strict=True)
        model.pooling_from_weights = True
    if with_whitening and takes_pooling and published.whitening is not None:
        projection = published.whitening["projection"]
        whitening = PCAWhitening(int(projection.shape[0]), int(projection.shape[1]))
        whitening.load_state_dict(published.whitening, strict=True)
        model.set_whitening(whitening)
    logger.info(
        "model %s from %s (%s): backbone%s%s", name, published.source, published.format,
        " + NetVLAD" if takes_pooling else "",
        " + whitening" if model.whitening is not None else "",
    )
    return model


def convert_weights(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    name: str | None = None,
    overwrite: bool = False,
    image_size: tuple[int, int] | None = None,
) -> Path:
    """Write the model of a published file as a softloc model file (``OUT.safetensors`` +
    ``OUT.json``), written atomically; the sidecar's ``extra`` records the source and format.

    Raises:
        PublishedWeightsError: bad source, ``out`` not ending in ``.safetensors``, or ``out``
            (or its sidecar) already there without ``overwrite``.
    """
    from softloc.models.checkpoint import save_model, sidecar_path

    target = Path(out)
    if target.suffix != ".safetensors":
        raise PublishedWeightsError(f"--to {str(target)!r} must end in .safetensors")
    existing = [p for p in (target, sidecar_path(target)) if p.exists()]
    if existing and not overwrite:
        raise PublishedWeightsError(
            f"{str(existing[0])!r} already exists; pass --overwrite to replace it or choose "
            "another --to"
        )
    published = read_published_weights(source)
    overrides: dict[str, Any] = {} if image_size is None else {"image_size": image_size}
    model = model_from_weights(published, name, **overrides)
    if hasattr(model.pool, "init_from_features") and not model.pooling_from_weights:
        raise _error(
            published.source,
            f"it holds no NetVLAD for model {name!r} (a {published.format} backbone); convert it "
            f"to a GeM model (the default) or give it to `softloc train --weights`, which "
            "initialises NetVLAD by k-means",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    extra = {
        "converted_from": {"path": str(Path(source).resolve()), "format": published.format},
    }
    save_model(model, target, extra=extra)
    return target


@contextmanager
def converted_model_file(
    source: str | os.PathLike[str], image_size: tuple[int, int] | None = None
) -> Iterator[Path]:
    """A softloc model file converted from ``source`` in a temporary folder (removed after)."""
    with tempfile.TemporaryDirectory(prefix="softloc-weights-") as folder:
        yield convert_weights(source, Path(folder) / "model.safetensors", image_size=image_size)


def is_model_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a softloc model file (a ``.safetensors`` with its ``.json``)."""
    file = Path(path)
    return file.suffix in (".safetensors", ".json") and file.with_suffix(".json").is_file()


# --- MatConvNet (the NetVLAD authors' models) ------------------------------------------------


def _read_matconvnet(file: Path) -> PublishedWeights:
    """The NetVLAD authors' VGG16 MatConvNet network, as hloc and netvlad_tf_open read it."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(file), struct_as_record=False, squeeze_me=True)
    except NotImplementedError as error:  # a v7.3 (HDF5) file
        raise _error(file, f"MATLAB v7.3 files are not read ({error}); save it with -v7") from None
    except Exception as error:  # not a MATLAB file, truncated ...
        raise _error(file, f"cannot read it as a MATLAB file: {error}") from error
    if "net" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise _error(file, f"a MATLAB file without a 'net' variable (it holds {found})")
    net = mat["net"]
    layers = _matlab_list(getattr(net, "layers", None))
    if not layers:
        raise _error(file, "'net' has no readable 'layers' (not a MatConvNet SimpleNN network, "
                           "or one saved as a MATLAB object: see netvlad_tf_open's "
                           "matlab/net_class2struct.m)")
    if not all(hasattr(layer, "type") and hasattr(layer, "name") for layer in layers):
        raise _error(
            file,
            "its layers are MATLAB objects, not structs, which Python cannot read; use the "
            "struct version (hloc's Pitts30K_struct.mat) or convert the file in MATLAB with "
            "netvlad_tf_open's matlab/net_class2struct.m",
        )
    types = [str(layer.type) for layer in layers]
    vlad_at = next(
        (i for i, layer in enumerate(layers)
         if types[i] == "custom" and (hasattr(layer, "K") or "vlad" in str(layer.name).lower())),
        None,
    )
    if vlad_at is None:
        raise _error(file, "a MatConvNet network without a VLAD layer ('vlad_core')")
    trunk = [i for i in range(vlad_at) if types[i] != "normalize"]
    trunk_types = [types[i] for i in trunk]
    final_relu = trunk_types == [*_VGG16_MATCONVNET_TYPES, "relu"]
    if trunk_types != _VGG16_MATCONVNET_TYPES and not final_relu:
        raise _error(
            file,
            f"its layers before the VLAD are {' '.join(trunk_types)}, not VGG16 up to conv5_3; "
            "only the VGG16 (vd16_*) NetVLAD models are supported",
        )
    normalize_input = any(types[i] == "normalize" for i in range(vlad_at))
    backbone_state: dict[str, torch.Tensor] = {}
    convs = [layers[i] for i in trunk if types[i] == "conv"]
    in_channels = 3
    for index, out_channels, layer in zip(_VGG16_CONV_INDICES, _VGG16_CONV_CHANNELS, convs,
                                          strict=True):
        weights = _matlab_list(layer.weights)
        if len(weights) != 2:
            raise _error(file, f"conv layer {layer.name!r} has {len(weights)} weights, not 2")
        _check_conv_geometry(file, layer)
        kernel = _array(file, weights[0], (3, 3, in_channels, out_channels), layer.name)
        bias = _array(file, weights[1], (out_channels,), layer.name)
        # MatConvNet filters are H x W x IN x OUT; torch wants OUT x IN x H x W
        backbone_state[f"features.{index}.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        )
        backbone_state[f"features.{index}.bias"] = torch.from_numpy(bias)
        in_channels = out_channels
    netvlad, dim, clusters = _matconvnet_vlad(file, layers[vlad_at], in_channels)
    after = layers[vlad_at + 1 :]
    after_types = [(str(layer.type), str(layer.name)) for layer in after]
    if not after_types or after_types[0][0] != "normalize":
        raise _error(file, "the VLAD layer is not followed by intra-normalisation ('normalize'); "
                           "only the *_intra_* NetVLAD models are supported")
    whitening = None
    wpca = [layer for layer in after if str(layer.name) == "WPCA"]
    if wpca:
        whitening = _matconvnet_wpca(file, wpca[0], dim, clusters)
    rgb = _average_rgb(file, net)
    return PublishedWeights(
        source=file,
        format="matconvnet-netvlad",
        backbone="vgg16",
        backbone_state=backbone_state,
        final_relu=final_relu,
        netvlad=netvlad,
        normalize_input=normalize_input,
        whitening=whitening,
        # MatConvNet feeds 0-255 RGB minus the mean pixel: 255 x - m = (x - m / 255) / (1 / 255)
        mean=(rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0),
        std=(1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0),
    )


def _matconvnet_vlad(
    file: Path, layer: Any, dim: int
) -> tuple[dict[str, torch.Tensor], int, int]:
    """softloc NetVLAD tensors from ``vlad_core``: weights {assignment D x K, offsets D x K}
    (layerVLAD) or {assignment D x K, bias K, offsets D x K} (layerVLADv2); offsets = -c_k."""
    weights = _matlab_list(layer.weights)
    if len(weights) not in (2, 3):
        raise _error(file, f"VLAD layer {layer.name!r} has {len(weights)} weights, not 2 or 3")
    assign = np.asarray(weights[0], dtype=np.float32)
    clusters = int(assign.size // dim) if assign.size % dim == 0 else -1
    if clusters < 1:
        raise _error(file, f"VLAD assignment of shape {assign.shape} does not fit {dim} channels")
    assign = _array(file, assign, (dim, clusters), layer.name)
    offsets = _array(file, weights[-1], (dim, clusters), layer.name)
    bias = (
        _array(file, weights[1], (clusters,), layer.name)
        if len(weights) == 3
        else np.zeros(clusters, dtype=np.float32)
    )
    state = {
        "assignment.weight": torch.from_numpy(np.ascontiguousarray(assign.T))[:, :, None, None],
        "assignment.bias": torch.from_numpy(bias),
        "centroids": torch.from_numpy(np.ascontiguousarray(-offsets.T)),
    }
    return state, dim, clusters


def _matconvnet_wpca(file: Path, layer: Any, dim: int, clusters: int) -> dict[str, torch.Tensor]:
    """PCAWhitening tensors from the ``WPCA`` conv (y = W x + b on the flattened VLAD).

    The MatConvNet VLAD output is 1 x K x D, flattened column-major: entry (k, d) is input
    ``d * K + k`` of WPCA; softloc flattens (K, D) row-major (``k * D + d``), so W's input axis
    is reordered.
    """
    weights = _matlab_list(layer.weights)
    if len(weights) != 2:
        raise _error(file, f"WPCA layer has {len(weights)} weights, not 2")
    matrix = np.asarray(weights[0], dtype=np.float32)
    vlad_dim = dim * clusters
    if matrix.size % vlad_dim:
        raise _error(file, f"WPCA of shape {matrix.shape} does not fit the {vlad_dim}-d VLAD")
    out_dim = matrix.size // vlad_dim
    matrix = _array(file, matrix, (vlad_dim, out_dim), "WPCA")
    bias = _array(file, weights[1], (out_dim,), "WPCA")
    projection = matrix.reshape(dim, clusters, out_dim).transpose(1, 0, 2).reshape(vlad_dim, -1)
    return {
        "mean": torch.zeros(vlad_dim),
        "projection": torch.from_numpy(np.ascontiguousarray(projection)),
        "bias": torch.from_numpy(bias),
    }


def _average_rgb(file: Path, net: Any) -> tuple[float, float, float]:
    """The mean pixel (0-255, RGB) of ``meta.normalization.averageImage``: hloc and
    netvlad_tf_open take its first pixel ``[0, 0, :]``; a 3-vector is used as it is."""
    try:
        average = np.asarray(net.meta.normalization.averageImage, dtype=np.float64)
    except AttributeError:
        raise _error(file, "'net' lacks meta.normalization.averageImage (the mean pixel)") from None
    if average.size == 3:
        rgb = average.reshape(3)
    elif average.ndim == 3 and average.shape[2] == 3:
        rgb = average[0, 0, :]
    else:
        raise _error(file, f"averageImage of shape {average.shape} is not a pixel or an image")
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]))


def _check_conv_geometry(file: Path, layer: Any) -> None:
    """VGG16's convolutions are 3 x 3, stride 1, padding 1 (checked when the file says)."""
    for attribute, expected in (("pad", 1), ("stride", 1)):
        value = getattr(layer, attribute, None)
        if value is not None and not np.all(np.asarray(value) == expected):
            raise _error(file, f"conv layer {layer.name!r} has {attribute} {value}, not {expected}")


def _matlab_list(value: Any) -> list[Any]:
    """A MATLAB cell array (or a single element squeezed by loadmat) as a list."""
    if value is None:
        return []
    if isinstance(value, np.ndarray) and value.dtype == object:
        return list(value.reshape(-1))
    return [value]


def _array(file: Path, value: Any, shape: tuple[int, ...], where: Any) -> np.ndarray:
    """``value`` as float32 of ``shape`` (loadmat drops unit axes; their sizes must match)."""
    array = np.asarray(value, dtype=np.float32)
    if array.size != int(np.prod(shape)) or [s for s in array.shape if s != 1] != [
        s for s in shape if s != 1
    ]:
        raise _error(file, f"layer {where!r}: tensor of shape {array.shape}, expected {shape}")
    return array.reshape(shape)


# --- torch state dicts (pytorch-NetVlad, torchvision, softloc) -------------------------------


def _torch_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch file, read with ``weights_only=True``.

    A training checkpoint ``{"state_dict": ..., "optimizer": ..., "epoch": ...}`` is unwrapped.
    pytorch-NetVlad's also holds numpy scalars (``best_score``, ``recalls``): numpy's scalar and
    dtype types are allowed for those, nothing else.
    """
    try:
        loaded: object = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as first:
        allowed = _numpy_safe_globals()
        if allowed is None or "numpy" not in str(first):
            raise _error(file, f"cannot read it as a torch file: {_first_line(first)}") from first
        try:
            with torch.serialization.safe_globals(allowed):
                loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:
            raise _error(
                file, f"cannot read it as a torch file without running code from it: "
                f"{_first_line(error)}; re-save its state_dict alone with torch.save"
            ) from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    elif isinstance(loaded, Mapping) and "state_dict" not in loaded and not _tensor_mapping(
        loaded
    ):
        found = sorted(str(k) for k in loaded)[:8]
        raise _error(file, f"a checkpoint without 'state_dict' (its entries: {found})")
    if not isinstance(loaded, Mapping) or not _tensor_mapping(loaded):
        raise _error(file, "it does not hold a mapping name -> tensor")
    return {str(k): v for k, v in loaded.items()}


def _numpy_safe_globals() -> list[Any] | None:
    """numpy scalar / dtype types for ``torch.serialization.safe_globals`` (None if absent)."""
    if not hasattr(torch.serialization, "safe_globals"):
        return None
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtypes = [type(np.dtype(code)) for code in ("float64", "float32", "int64", "int32", "bool")]
    allowed: list[Any] = [scalar, np.dtype, *dtypes]
    # files pickled under numpy 1.x name the scalar numpy.core.multiarray.scalar
    allowed.append((scalar, "numpy.core.multiarray.scalar"))
    return allowed


def _read_safetensors(file: Path) -> PublishedWeights:
    """A softloc model file (with sidecar), else a plain safetensors state dict."""
    if is_model_file(file):
        from softloc.models.checkpoint import load_model

        model, sidecar = load_model(file)
        state = {k: v for k, v in model.state_dict().items()}
        return _from_softloc_state(file, state, sidecar["meta"])
    from safetensors.torch import load_file

    try:
        state = load_file(str(file), device="cpu")
    except Exception as error:
        raise _error(file, f"cannot read it as a safetensors file: {_first_line(error)}") from error
    return _from_torch_state(file, state)


def _from_torch_state(file: Path, state: dict[str, torch.Tensor]) -> PublishedWeights:
    """Tell the format of a state dict by its key names and map it to softloc's layout."""
    keys = {_strip_module(k) for k in state}
    state = {_strip_module(k): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in keys):
        raise _error(file, "the tensors of a softloc model without its sidecar; keep NAME.json "
                           "(written with it) beside NAME.safetensors")
    if any(k.startswith("encoder.") for k in keys) or any(k.startswith("pool.") for k in keys):
        return _from_pytorch_netvlad(file, state)
    if any(k.startswith("classifier.") for k in keys) or "features.28.weight" in keys:
        backbone = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        _check_vgg16(file, backbone, "features.")
        return PublishedWeights(file, "torchvision-vgg16", "vgg16", backbone)
    if "conv1.weight" in keys and any(k.startswith("layer4.") for k in keys):
        if any(k.endswith("conv3.weight") for k in keys):
            raise _error(file, "a bottleneck ResNet (ResNet-50 or deeper); softloc has resnet18")
        backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
        return PublishedWeights(file, "torchvision-resnet18", "resnet18", backbone)
    # some other backbone's own state dict (e.g. softloc's small net): only a named model's
    # backbone can take it, which checks every key and shape
    return PublishedWeights(file, STATE_DICT_FORMAT, "", state)


def _from_pytorch_netvlad(file: Path, state: dict[str, torch.Tensor]) -> PublishedWeights:
    """Nanne/pytorch-NetVlad: ``encoder`` = vgg16().features[:-2] (no relu5_3), ``pool`` =
    its NetVLAD (``conv.weight`` K x D x 1 x 1, ``conv.bias`` only with --vladv2,
    ``centroids`` K x D, flattened K-major like softloc's)."""
    unknown = sorted(k for k in state if not k.startswith(("encoder.", "pool.")))
    if unknown:
        raise _error(file, f"pytorch-NetVlad checkpoint with unexpected keys {unknown[:5]}")
    encoder = {"features." + k.removeprefix("encoder."): v for k, v in state.items()
               if k.startswith("encoder.")}
    if "features.0.weight" in encoder and encoder["features.0.weight"].shape[0] != 64:
        raise _error(file, "a pytorch-NetVlad AlexNet (--arch=alexnet); only VGG16 is supported")
    _check_vgg16(file, encoder, "features.")
    if "pool.centroids" not in state or "pool.conv.weight" not in state:
        raise _error(file, "pytorch-NetVlad checkpoint without pool.centroids / pool.conv.weight "
                           "(a model trained with --pooling=netvlad is needed)")
    centroids = state["pool.centroids"].float()
    weight = state["pool.conv.weight"].float()
    clusters, dim = centroids.shape
    if dim != 512 or tuple(weight.shape) != (clusters, dim, 1, 1):
        raise _error(file, f"pool.conv.weight {tuple(weight.shape)} and pool.centroids "
                           f"{tuple(centroids.shape)} do not fit a 512-channel NetVLAD")
    bias = state.get("pool.conv.bias")
    netvlad = {
        "assignment.weight": weight,
        "assignment.bias": torch.zeros(clusters) if bias is None else bias.float().reshape(-1),
        "centroids": centroids,
    }
    if netvlad["assignment.bias"].shape != (clusters,):
        raise _error(file, f"pool.conv.bias of shape {tuple(bias.shape)} for {clusters} clusters")
    return PublishedWeights(file, "pytorch-netvlad", "vgg16", encoder, final_relu=False,
                            netvlad=netvlad)


def _from_softloc_state(
    file: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]
) -> PublishedWeights:
    """A softloc model's own state dict: ``backbone.*``, ``pool.*``, ``whitening.*``."""
    backbone = {k.removeprefix("backbone."): v for k, v in state.items()
                if k.startswith("backbone.")}
    pool = {k.removeprefix("pool."): v for k, v in state.items() if k.startswith("pool.")}
    whitening = {k.removeprefix("whitening."): v for k, v in state.items()
                 if k.startswith("whitening.")}
    name = str(meta["backbone"])
    netvlad = pool if meta.get("pooling") == "netvlad" and "centroids" in pool else None
    kwargs = meta.get("pooling_kwargs", {})
    pre = meta.get("preprocessing", {})
    return PublishedWeights(
        source=file,
        format="softloc",
        backbone=name.removesuffix("_prerelu"),
        backbone_state=backbone,
        final_relu=not name.endswith("_prerelu"),
        netvlad=netvlad,
        normalize_input=bool(kwargs.get("normalize_input", True)),
        whitening=whitening or None,
        mean=tuple(pre.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(pre.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        meta=meta,
    )


def _softloc_model(
    published: PublishedWeights, with_whitening: bool, overrides: Mapping[str, Any]
) -> DescriptorModel:
    """A softloc model file as it is (its own architecture), whitening optionally dropped."""
    from softloc.models.checkpoint import load_model

    model, _ = load_model(published.source)
    model.train()
    if not with_whitening:
        model.set_whitening(None)
    if overrides:
        raise PublishedWeightsError(
            f"{str(published.source)!r} is a softloc model; its architecture is fixed (cannot "
            f"override {sorted(overrides)}); give a model name to load only its tensors"
        )
    model.pooling_from_weights = published.netvlad is not None
    return model


def _check_vgg16(file: Path, state: Mapping[str, torch.Tensor], prefix: str) -> None:
    """The 13 convolutions of VGG16 up to conv5_3, with their shapes."""
    in_channels = 3
    for index, out in zip(_VGG16_CONV_INDICES, _VGG16_CONV_CHANNELS, strict=True):
        for suffix, shape in (("weight", (out, in_channels, 3, 3)), ("bias", (out,))):
            key = f"{prefix}{index}.{suffix}"
            if key not in state:
                raise _error(file, f"VGG16 weights without {key!r}")
            if tuple(state[key].shape) != shape:
                raise _error(file, f"{key} has shape {tuple(state[key].shape)}, VGG16 has {shape}")
        in_channels = out


def _strip_module(key: str) -> str:
    """Drop DataParallel / DDP ``module.`` segments (``encoder.module.0.weight``)."""
    return key.removeprefix("module.").replace(".module.", ".")


def _tensor_mapping(value: Mapping[Any, Any]) -> bool:
    return bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _error(file: Path, reason: str) -> PublishedWeightsError:
    return PublishedWeightsError(
        f"weights file {str(file)!r}: {reason}. Accepted formats: {ACCEPTED_FORMATS} "
        "(docs/models.md, 'Published weights')"
    )
