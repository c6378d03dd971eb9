"""The whitening protocol of the evaluation: PCA-whitening fitted on held-out images.

The paper reports descriptors PCA-whitened to 256 dimensions. Here the evaluation can refit
that whitening at any dimension from the raw pooled descriptors (the model's output before
its own whitening), on a *fit set* chosen by :class:`WhiteningProtocol`:

- default: images of the ``train`` split, every traversal (mixed conditions), at most
  ``max_fit_images`` of them drawn with a fixed seed. The evaluated split is a different
  region of the town, so neither the evaluated queries nor the map's references enter the
  fit; mixed conditions are what worked (a fit on single-condition references lowered every
  model in the lead's experiments); the training region is large enough for the dimension
  sweep (the ``val`` region of a small town holds a few hundred images, fewer than 256 + 1
  per condition would need). It is also the set the Trainer fits its own whitening on.
- ``fit_split=<evaluated split>, fit_traversals=(reference,)``: the map's references.

The fit set never holds a query: :func:`evaluation_sets` raises :class:`WhiteningLeakError`
when the rows or image paths of the fit set and the queries overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from softloc.data.places import PlaceTable
from softloc.data.tuples import subsample_by_spacing
from softloc.evaluation.metrics import DEFAULT_THRESHOLDS, RECALL_TOP_N
from softloc.evaluation.report import evaluate_retrieval
from softloc.index import DescriptorIndex
from softloc.models.whitening import PCAWhitening, fit_pca_whitening

logger = logging.getLogger(__name__)

#: The paper's descriptor size after PCA-whitening.
DEFAULT_WHITENING_DIM = 256


class WhiteningLeakError(ValueError):
    """The whitening fit set would include evaluated queries."""


@dataclass(frozen=True)
class WhiteningProtocol:
    """Which images the evaluation's PCA-whitening is fitted on, and to what size.

    Attributes:
        dim: whitened size (256 as in the paper); None evaluates the raw pooled descriptors.
        fit_split: split of the fit images (default ``train``: a region never evaluated).
        fit_traversals: traversals of the fit images; empty = all (mixed conditions).
        max_fit_images: at most this many fit images, drawn with ``seed`` (the fit needs
            more than ``dim`` of them).
        seed: seed of that draw.
    """

    dim: int | None = DEFAULT_WHITENING_DIM
    fit_split: str = "train"
    fit_traversals: tuple[str, ...] = ()
    max_fit_images: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"whitening dim must be >= 1 or None, got {self.dim}")
        if self.max_fit_images < 2:
            raise ValueError(f"max_fit_images must be >= 2, got {self.max_fit_images}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return {
            "dim": self.dim,
            "fit_split": self.fit_split,
            "fit_traversals": list(self.fit_traversals),
            "max_fit_images": self.max_fit_images,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class EvaluationSets:
    """Rows of a places table: whitening fit set, references (drive order), queries.

    Attributes:
        fit: rows the whitening is fitted on (sorted).
        references: the evaluated split's reference-traversal rows, sorted by timestamp (the
            order :func:`softloc.localize.select_references` gives a map).
        queries: the evaluated split's rows of every other traversal (sorted).
    """

    fit: np.ndarray
    references: np.ndarray
    queries: np.ndarray

    def all_rows(self) -> np.ndarray:
        """Sorted union of the three sets: the images to describe once."""
        return np.unique(np.concatenate([self.fit, self.references, self.queries]))


def evaluation_sets(
    places: PlaceTable,
    split: str = "test",
    reference_traversal: str = "reference",
    protocol: WhiteningProtocol | None = None,
) -> EvaluationSets:
    """Fit, reference and query rows of ``places`` for one evaluation.

    Raises:
        ValueError: no references or no queries in ``split``, no fit images.
        WhiteningLeakError: the fit set would include a query (same row or image path).
    """
    protocol = protocol or WhiteningProtocol()
    in_split = places.split == split
    is_ref = places.traversal == reference_traversal
    references = np.flatnonzero(in_split & is_ref)
    queries = np.flatnonzero(in_split & ~is_ref)
    if len(references) == 0 or len(queries) == 0:
        raise ValueError(
            f"{places.root}: split '{split}' needs images of traversal "
            f"'{reference_traversal}' (references) and of others (queries); it has "
            f"{len(references)} and {len(queries)}; traversals here: {places.traversals()}"
        )
    references = references[np.argsort(places.timestamp[references], kind="stable")]
    fit_mask = places.split == protocol.fit_split
    if protocol.fit_traversals:
        fit_mask &= np.isin(places.traversal, list(protocol.fit_traversals))
    fit = np.flatnonzero(fit_mask)
    if len(fit) == 0:
        raise ValueError(
            f"{places.root}: no images for the whitening fit (split '{protocol.fit_split}', "
            f"traversals {list(protocol.fit_traversals) or 'all'}); choose another fit split"
        )
    if len(fit) > protocol.max_fit_images:
        rng = np.random.default_rng([protocol.seed, 11])
        fit = np.sort(rng.choice(fit, protocol.max_fit_images, replace=False))
    leaked_rows = np.intersect1d(fit, queries)
    leaked_paths = np.intersect1d(places.path[fit], places.path[queries])
    if len(leaked_rows) or len(leaked_paths):
        count = max(len(leaked_rows), len(leaked_paths))
        raise WhiteningLeakError(
            f"the whitening fit set (split '{protocol.fit_split}', traversals "
            f"{list(protocol.fit_traversals) or 'all'}) holds {count} of the evaluated queries "
            f"of split '{split}'; fit on another split or on the reference traversal only"
        )
    return EvaluationSets(fit=fit, references=references, queries=queries)


def feasible_dim(dim: int, num_fit: int, descriptor_dim: int) -> int:
    """The largest whitening size not above ``dim`` that the fit supports:
    ``min(dim, D, N_fit - 1)`` (centred data of N rows has rank at most N - 1)."""
    return int(min(dim, descriptor_dim, num_fit - 1))


def fit_whitening(fit_descriptors: np.ndarray, dim: int) -> PCAWhitening:
    """PCA-whitening to ``dim`` fitted on the held-out descriptors (and nothing else)."""
    return fit_pca_whitening(fit_descriptors, dim)


def whiten(whitening: PCAWhitening | None, descriptors: np.ndarray) -> np.ndarray:
    """Whitened, L2-normalised float32 descriptors (only L2-normalised when ``None``)."""
    tensor = torch.as_tensor(np.asarray(descriptors, dtype=np.float32))
    with torch.no_grad():
        if whitening is not None:
            tensor = whitening(tensor)
        tensor = torch.nn.functional.normalize(tensor, dim=-1)
    return tensor.numpy().astype(np.float32, copy=False)


def retrieve(
    reference_descriptors: np.ndarray, query_descriptors: np.ndarray, top_k: int
) -> np.ndarray:
    """(Q, min(top_k, R)) reference rows by exact inner-product search, ties by lower row."""
    from softloc.evaluation.protocol import order_ties

    index = DescriptorIndex(reference_descriptors.shape[1])
    index.add(reference_descriptors)
    _, found = order_ties(*index.search(query_descriptors, top_k))
    return found


def evaluate_descriptors(
    reference_descriptors: np.ndarray,
    reference_xy: np.ndarray,
    query_descriptors: np.ndarray,
    query_xy: np.ndarray,
    conditions: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    top_k: int = max(RECALL_TOP_N),
) -> dict[str, dict[str, Any]]:
    """Retrieve, then ``{condition: evaluate_retrieval(...)}`` in order of first appearance."""
    found = retrieve(reference_descriptors, query_descriptors, top_k)
    conditions = np.asarray(conditions)
    results = {}
    for condition in dict.fromkeys(conditions.tolist()):
        mask = conditions == condition
        results[str(condition)] = evaluate_retrieval(
            query_xy[mask], reference_xy, found[mask], thresholds
        )
    return results


def spaced_references(places: PlaceTable, references: np.ndarray, spacing: float) -> np.ndarray:
    """Positions in ``references`` (drive order) kept at least ``spacing`` metres apart."""
    if spacing < 0:
        raise ValueError(f"reference spacing must be >= 0 metres, got {spacing}")
    if spacing == 0:
        return np.arange(len(references))
    return subsample_by_spacing(places.xy[references], spacing)
