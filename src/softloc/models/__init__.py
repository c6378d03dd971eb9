"""Descriptor models: backbones, pooling, PCA-whitening, the model contract and checkpoints.

Typical use::

    from softloc.models import create_model, fit_pca_whitening, save_model, load_model

    model = create_model("small_netvlad")          # or "vgg16_netvlad", weights="vgg16.pth"
    model.init_pooling(batches)                    # NetVLAD centroids by k-means
    descriptors = model(images)                    # (B, out_dim), L2-normalised
    model.set_whitening(fit_pca_whitening(held_out_descriptors, dim=256))
    save_model(model, "run/model.safetensors", extra={"step": 1000})
    model, sidecar = load_model("run/model.safetensors")
    model = model_from_weights("Pitts30K_struct.mat")  # a published model (docs/models.md)
"""

from softloc.models.backbones import (
    WeightsNotFoundError,
    available_backbones,
    create_backbone,
    load_backbone_weights,
    read_state_dict,
    register_backbone,
)
from softloc.models.checkpoint import CheckpointError, load_model, save_model, sidecar_path
from softloc.models.descriptor import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DescriptorModel,
    ModelPreset,
    available_models,
    create_model,
    model_from_meta,
)
from softloc.models.pooling import (
    GeM,
    NetVLAD,
    available_poolings,
    create_pooling,
    gem,
    get_pooling_factory,
    register_pooling,
)
from softloc.models.published import (
    PublishedWeights,
    PublishedWeightsError,
    convert_weights,
    model_from_weights,
    read_published_weights,
)
from softloc.models.raw import RawImage, Thumbnail, thumbnail
from softloc.models.whitening import PCAWhitening, fit_pca_whitening

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "DescriptorModel",
    "GeM",
    "ModelPreset",
    "NetVLAD",
    "PCAWhitening",
    "PublishedWeights",
    "PublishedWeightsError",
    "RawImage",
    "Thumbnail",
    "WeightsNotFoundError",
    "available_backbones",
    "available_models",
    "available_poolings",
    "convert_weights",
    "create_backbone",
    "create_model",
    "create_pooling",
    "fit_pca_whitening",
    "gem",
    "get_pooling_factory",
    "load_backbone_weights",
    "load_model",
    "model_from_meta",
    "model_from_weights",
    "read_published_weights",
    "read_state_dict",
    "register_backbone",
    "register_pooling",
    "save_model",
    "sidecar_path",
    "thumbnail",
]
