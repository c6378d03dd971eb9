"""Grad-CAM of a retrieval: which parts of two images make their descriptors close.

The paper (Figures 7-11) explains a match with Grad-CAM (Selvaraju et al., ICCV 2017) on the
last convolutional layer (conv5_3 for VGG16): the score is the *negative squared distance*
between the query's descriptor and the (fixed) descriptor of its top-1 reference, so the
heat-map on the query shows where the query looks like that reference; the heat-map on the
reference uses the query's descriptor as the fixed one. Grad-CAM weights each channel ``k`` of
the feature map ``A`` by the mean over positions of ``d score / d A_k`` and shows
``ReLU(sum_k w_k A_k)``, upsampled to the image and scaled to [0, 1].

We use the pytorch-grad-cam package with a custom target (:class:`DescriptorDistanceTarget`);
the target layer is the model's backbone, whose output is the last convolutional feature map
(``DescriptorModel.forward_features``). The raw-pixel baseline has no convolutional layer and
gets no heat-map.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from softloc.atomic import write_with
from softloc.data.images import load_image
from softloc.explain.queries import input_size, model_input
from softloc.mapping import Map

#: A retrieval within this many metres counts as correct in the panels (the paper's 10 m).
DEFAULT_THRESHOLD_M = 10.0
NO_CONV_NOTE = "no convolutional layer (raw pixels): no Grad-CAM"


class DescriptorDistanceTarget:
    """Grad-CAM score: ``-||descriptor - other||^2`` for a fixed descriptor ``other``.

    pytorch-grad-cam calls a target with one image's model output, a (D,) descriptor.
    """

    def __init__(self, other: torch.Tensor | np.ndarray) -> None:
        self.other = torch.as_tensor(np.asarray(other, dtype=np.float32)).detach()

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        other = self.other.to(device=output.device, dtype=output.dtype)
        return -((output - other) ** 2).sum(dim=-1)


def gradcam_layer(model: nn.Module) -> nn.Module | None:
    """The module whose output is the last convolutional feature map, or None if none is.

    For a :class:`~softloc.models.DescriptorModel` this is the backbone (VGG16 up to conv5_3
    and its ReLU, ResNet layer4, the small CNN); a backbone without any ``Conv2d`` (the
    raw-pixel baseline) gives None.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None or not any(isinstance(m, nn.Conv2d) for m in backbone.modules()):
        return None
    return backbone


def pair_gradcam(
    model: nn.Module,
    query: torch.Tensor,
    reference: torch.Tensor,
    target_layer: nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Heat-maps of a query and a reference that explain their descriptor distance.

    Args:
        model: images (B, 3, H, W) -> descriptors (B, D).
        query, reference: (1, 3, H, W) or (3, H, W) model inputs of the same size.
        target_layer: the layer explained; default :func:`gradcam_layer` (model).

    Returns:
        ``(query_heat, reference_heat, squared_descriptor_distance)``; heat-maps are (H, W)
        float32 in [0, 1] (pytorch-grad-cam's min-max scaling; all zeros when no position
        pulls the descriptors together).

    Raises:
        ValueError: the model has no convolutional layer to explain, or the inputs differ in
            shape.
    """
    layer = target_layer if target_layer is not None else gradcam_layer(model)
    if layer is None:
        raise ValueError(f"{type(model).__name__}: {NO_CONV_NOTE}")
    query = query if query.ndim == 4 else query[None]
    reference = reference if reference.ndim == 4 else reference[None]
    if query.shape != reference.shape or query.shape[0] != 1:
        raise ValueError(
            f"query {tuple(query.shape)} and reference {tuple(reference.shape)} must be one "
            "image each, of the same size"
        )
    batch = torch.cat([query, reference])
    was_training = model.training
    try:
        with torch.no_grad():
            descriptors = model.eval()(batch).float()
        targets = [DescriptorDistanceTarget(descriptors[1]),
                   DescriptorDistanceTarget(descriptors[0])]
        with torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
            heat = cam(input_tensor=batch, targets=targets)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    distance = float(((descriptors[0] - descriptors[1]) ** 2).sum())
    return heat[0].astype(np.float32), heat[1].astype(np.float32), distance


@dataclass(frozen=True)
class GradcamRow:
    """One model's retrieval of one query, explained (one row of the panel figure).

    Heat-maps are None when the model cannot be explained (``note`` says why).
    """

    model: str
    query_path: str
    retrieved_path: str
    query: np.ndarray
    retrieved: np.ndarray
    query_heat: np.ndarray | None
    retrieved_heat: np.ndarray | None
    distance_m: float
    descriptor_distance: float
    note: str = ""


def gradcam_row(
    name: str,
    the_map: Map,
    model: nn.Module,
    query_path: str | os.PathLike[str],
    query_xy: Sequence[float],
) -> GradcamRow:
    """Retrieve the top-1 reference of one query image from ``the_map`` and explain it."""
    size = input_size(model)
    query_image = load_image(query_path, size)
    query_input = model_input(model, query_image)
    with torch.no_grad():
        query_descriptor = model.eval()(query_input).float().cpu().numpy()
    _, found = the_map.search(query_descriptor, 1)
    best = int(found[0, 0])
    retrieved_path = the_map.places.image_path(best)
    retrieved_image = load_image(retrieved_path, size)
    distance_m = float(np.linalg.norm(the_map.places.xy[best] - np.asarray(query_xy, float)))
    query_heat = retrieved_heat = None
    note = ""
    if gradcam_layer(model) is None:
        note = NO_CONV_NOTE
        with torch.no_grad():
            ref_descriptor = model(model_input(model, retrieved_image)).float().cpu().numpy()
        descriptor_distance = float(((query_descriptor - ref_descriptor) ** 2).sum())
    else:
        query_heat, retrieved_heat, descriptor_distance = pair_gradcam(
            model, query_input, model_input(model, retrieved_image)
        )
    return GradcamRow(
        model=name,
        query_path=str(query_path),
        retrieved_path=str(retrieved_path),
        query=query_image,
        retrieved=retrieved_image,
        query_heat=query_heat,
        retrieved_heat=retrieved_heat,
        distance_m=distance_m,
        descriptor_distance=descriptor_distance,
        note=note,
    )


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image with the (H, W) heat-map in [0, 1] blended over it (jet)."""
    return show_cam_on_image(image.astype(np.float32) / 255.0, heat, use_rgb=True)


COLUMNS = ("query", "heat-map on query", "heat-map on retrieved", "retrieved", "distance")


def draw_gradcam_rows(
    figure: Figure,
    rows: Sequence[GradcamRow],
    threshold_m: float = DEFAULT_THRESHOLD_M,
    title: str | None = None,
) -> None:
    """Draw one row per model onto ``figure`` (cleared first).

    Columns: query, heat-map on the query, heat-map on the retrieved image, the retrieved
    image, and the metric distance between them: green within ``threshold_m``, red beyond.
    """
    if not rows:
        raise ValueError("no Grad-CAM row to draw: give at least one map")
    figure.clear()
    axes = figure.subplots(len(rows), len(COLUMNS), squeeze=False,
                           gridspec_kw={"width_ratios": [1, 1, 1, 1, 0.7]})
    for r, row in enumerate(rows):
        panels = [row.query,
                  None if row.query_heat is None else overlay(row.query, row.query_heat),
                  None if row.retrieved_heat is None else overlay(row.retrieved,
                                                                  row.retrieved_heat),
                  row.retrieved]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if panel is None:
                ax.text(0.5, 0.5, "no conv layer\n(raw pixels)", ha="center", va="center",
                        fontsize=8, transform=ax.transAxes)
                ax.set_facecolor("0.92")
            else:
                ax.imshow(panel)
                heat = (None, row.query_heat, row.retrieved_heat, None)[c]
                if heat is not None and not np.any(heat > 0):
                    ax.text(0.5, 0.08, "all zero: no position pulls\nthe descriptors together",
                            ha="center", va="bottom", fontsize=6, color="white",
                            transform=ax.transAxes)
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=9)
        axes[r][0].set_ylabel(row.model, fontsize=9)
        ax = axes[r][-1]
        ax.axis("off")
        within = row.distance_m <= threshold_m
        ax.text(0.5, 0.55, f"{row.distance_m:.1f} m", ha="center", va="center", fontsize=13,
                fontweight="bold", color="tab:green" if within else "tab:red",
                transform=ax.transAxes)
        verdict = f"within {threshold_m:g} m" if within else f"over {threshold_m:g} m"
        ax.text(0.5, 0.3, verdict, ha="center", va="center", fontsize=8, transform=ax.transAxes)
        if r == 0:
            ax.set_title(COLUMNS[-1], fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)


def gradcam_figure(
    rows: Sequence[GradcamRow], threshold_m: float = DEFAULT_THRESHOLD_M,
    title: str | None = None,
) -> Figure:
    """A new figure sized for ``rows`` (see :func:`draw_gradcam_rows`)."""
    height, width = rows[0].query.shape[:2] if rows else (3, 4)
    panel = 2.0
    figure = Figure(figsize=(panel * 4.7, 0.6 + len(rows) * panel * height / width + 0.3),
                    dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    draw_gradcam_rows(figure, rows, threshold_m, title)
    return figure


def write_gradcam(
    rows: Sequence[GradcamRow],
    path: str | os.PathLike[str],
    threshold_m: float = DEFAULT_THRESHOLD_M,
    title: str | None = None,
) -> Path:
    """Write the panel figure of ``rows`` as a PNG (atomically); return its path."""
    figure = gradcam_figure(rows, threshold_m, title)
    return write_with(path, lambda tmp: figure.savefig(tmp, format="png"))
