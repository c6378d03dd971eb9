"""Nearest-neighbour search over descriptors: FAISS behind one small class.

Descriptors are L2-normalised, so the inner product is the cosine similarity and the squared
Euclidean distance follows from it: ``||a - b||^2 = 2 - 2 a.b``. Three kinds grow with the map:

- ``flat``: exact search (``IndexFlatIP``), the default and the reference for recall;
- ``ivf``: an inverted file over ``nlist`` k-means cells, searching ``nprobe`` of them
  (``IndexIVFFlat``); needs :meth:`DescriptorIndex.train`;
- ``ivfpq``: the same with product-quantised vectors, ``m`` sub-vectors of ``nbits`` bits
  each (``IndexIVFPQ``), for maps that do not fit in memory as float32;
- ``hnsw``: a navigable small-world graph of ``hnsw_m`` links a vector (``IndexHNSWFlat``),
  exploring ``ef_search`` candidates per query; no training, float32 vectors plus the graph.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import faiss
import numpy as np

from softloc.atomic import write_with

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("flat", "ivf", "ivfpq", "hnsw")
METRICS: dict[str, int] = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
#: Rows converted to float32 and handed to FAISS at a time by :meth:`DescriptorIndex.add`.
ADD_BATCH_ROWS = 65536


class DescriptorIndexError(ValueError):
    """Bad input to, or a bad file for, a descriptor index; the message says the fix."""


def squared_l2_from_ip(scores: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance between unit vectors from their inner product: 2 - 2 ip.

    Clipped at 0 so rounding never gives a (tiny) negative distance.
    """
    return np.maximum(2.0 - 2.0 * np.asarray(scores, dtype=np.float32), 0.0)


def default_nlist(num_vectors: int) -> int:
    """A number of IVF cells for ``num_vectors`` vectors: about 4 sqrt(N), >= 39 points a cell.

    FAISS's k-means wants at least 39 training points per centroid; the 4 sqrt(N) rule is the
    FAISS wiki's guideline for maps up to a few million vectors.
    """
    if num_vectors < 1:
        raise DescriptorIndexError("cannot choose nlist for an empty set of descriptors")
    return max(1, min(int(4 * math.sqrt(num_vectors)), num_vectors // 39))


def as_float32_rows(x: np.ndarray, dim: int, name: str = "descriptors") -> np.ndarray:
    """``x`` as a C-contiguous (N, dim) float32 array; a (dim,) vector becomes (1, dim).

    Raises:
        DescriptorIndexError: wrong number of dimensions or columns, NaN or infinite values.
    """
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise DescriptorIndexError(
            f"{name} must have shape (N, {dim}), got {x.shape}; use descriptors from the same "
            "model (and whitening) as the map"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise DescriptorIndexError(
            f"{name} hold NaN or infinite values; check the model's output (a diverged "
            "checkpoint or an image that failed to decode)"
        )
    return x


class DescriptorIndex:
    """A FAISS index of descriptors with add / train / search / save / load.

    Args:
        dim: descriptor dimension D.
        kind: ``flat`` (exact), ``ivf``, ``ivfpq`` or ``hnsw``.
        nlist: IVF cells (``ivf``, ``ivfpq``); see :func:`default_nlist`.
        m: PQ sub-vectors (``ivfpq``); must divide ``dim``.
        nbits: bits per PQ code (``ivfpq``).
        nprobe: IVF cells visited per query; more is slower and closer to exact.
        hnsw_m: graph links per vector (``hnsw``; FAISS's M).
        ef_search: candidates explored per query (``hnsw``); more is slower and closer to
            exact.
        metric: ``ip`` (inner product = cosine on unit vectors, higher is closer) or ``l2``
            (squared Euclidean, lower is closer).
    """

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        nlist: int = 100,
        m: int = 16,
        nbits: int = 8,
        nprobe: int = 8,
        metric: str = "ip",
        hnsw_m: int = 32,
        ef_search: int = 64,
    ) -> None:
        if kind not in KINDS:
            raise DescriptorIndexError(f"unknown index kind {kind!r}; choose one of {KINDS}")
        if metric not in METRICS:
            raise DescriptorIndexError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
        if dim < 1:
            raise DescriptorIndexError(f"dim must be >= 1, got {dim}")
        if kind == "hnsw" and (hnsw_m < 2 or ef_search < 1):
            raise DescriptorIndexError(
                f"hnsw needs hnsw_m >= 2 and ef_search >= 1, got {hnsw_m}, {ef_search}")
        if kind in ("ivf", "ivfpq") and (nlist < 1 or nprobe < 1):
            raise DescriptorIndexError(f"nlist and nprobe must be >= 1, got {nlist}, {nprobe}")
        if kind == "ivfpq" and (m < 1 or dim % m != 0):
            raise DescriptorIndexError(
                f"ivfpq needs m (sub-vectors, `map build --pq-m`) to divide dim = {dim}, got "
                f"m = {m}; pick e.g. m = {math.gcd(dim, 16)}"
            )
        if kind == "ivfpq" and not 1 <= nbits <= 16:
            raise DescriptorIndexError(f"nbits must lie in [1, 16], got {nbits}")
        self.dim = dim
        self.kind = kind
        self.metric = metric
        self.nlist = nlist if kind in ("ivf", "ivfpq") else 0
        self.hnsw_m = hnsw_m if kind == "hnsw" else 0
        self.m = m if kind == "ivfpq" else 0
        self.nbits = nbits if kind == "ivfpq" else 0
        self._index = faiss.index_factory(dim, self._factory_string(), METRICS[metric])
        if kind == "ivfpq":
            # Polysemous training (a codeword permutation for Hamming-filtered search, which we
            # do not use) costs most of the training time.
            ivfpq = faiss.downcast_index(faiss.extract_index_ivf(self._index))
            ivfpq.do_polysemous_training = False
        self.nprobe = nprobe if kind in ("ivf", "ivfpq") else 0
        self._ef_search = 0
        if kind == "hnsw":
            self.ef_search = ef_search
        self._read_only = False

    def _factory_string(self) -> str:
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m}"
        if self.kind == "ivf":
            return f"IVF{self.nlist},Flat"
        return f"IVF{self.nlist},PQ{self.m}x{self.nbits}"

    @property
    def nprobe(self) -> int:
        """IVF cells visited per query (0 for ``flat``)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind not in ("ivf", "ivfpq"):
            self._nprobe = 0
            return
        if value < 1:
            raise DescriptorIndexError(f"nprobe must be >= 1, got {value}")
        self._nprobe = int(value)
        faiss.extract_index_ivf(self._index).nprobe = min(self._nprobe, self.nlist)

    @property
    def ef_search(self) -> int:
        """Candidates explored per query by an ``hnsw`` index (0 for the other kinds)."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self.kind != "hnsw":
            self._ef_search = 0
            return
        if value < 1:
            raise DescriptorIndexError(f"ef_search must be >= 1, got {value}")
        self._ef_search = int(value)
        faiss.downcast_index(self._index).hnsw.efSearch = self._ef_search

    @property
    def ntotal(self) -> int:
        """Number of descriptors in the index."""
        return int(self._index.ntotal)

    @property
    def is_trained(self) -> bool:
        """Whether the index can take descriptors (always true for ``flat``)."""
        return bool(self._index.is_trained)

    def train(self, x: np.ndarray) -> None:
        """Fit the IVF cells (and PQ codebooks) on (N, D) sample descriptors; no-op for flat
        and hnsw.

        Raises:
            DescriptorIndexError: fewer samples than cells (or than PQ centroids).
        """
        if self.kind in ("flat", "hnsw"):
            return
        self._check_writable()
        x = as_float32_rows(x, self.dim, "training descriptors")
        needed = max(self.nlist, 2**self.nbits if self.kind == "ivfpq" else 0)
        if len(x) < needed:
            raise DescriptorIndexError(
                f"training a {self.kind} index needs at least {needed} descriptors, got "
                f"{len(x)}; lower nlist (`map build --nlist`) or nbits (`--nbits`), or use "
                "the flat index (`--index flat`) for a small map"
            )
        if len(x) < 39 * self.nlist:
            logger.warning(
                "training %d cells on %d descriptors (< 39 a cell): cells will be noisy",
                self.nlist,
                len(x),
            )
        self._index.train(x)

    def add(self, x: np.ndarray) -> None:
        """Append (N, D) descriptors (any float dtype; memory-mapped arrays are read in batches).

        Raises:
            DescriptorIndexError: untrained IVF index, wrong shape, NaN values.
        """
        self._check_writable()
        if not self.is_trained:
            raise DescriptorIndexError(
                f"the {self.kind} index is not trained; call train(x) on sample descriptors "
                "before add()"
            )
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DescriptorIndexError(
                f"descriptors must have shape (N, {self.dim}), got {x.shape}"
            )
        for start in range(0, len(x), ADD_BATCH_ROWS):
            self._index.add(as_float32_rows(x[start : start + ADD_BATCH_ROWS], self.dim))

    def _check_writable(self) -> None:
        if self._read_only:
            raise DescriptorIndexError(
                "this index was loaded memory-mapped (read-only); load it with mmap=False "
                "to add or train"
            )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest descriptors of each query, best first.

        ``k`` larger than :attr:`ntotal` is clamped to ``ntotal`` (the result has fewer
        columns than asked). An IVF index that finds fewer than ``k`` vectors in the visited
        cells pads the row with index -1 (score -3.4e38 for ``ip``, +3.4e38 for ``l2``).

        Args:
            queries: (Q, D) or (D,) descriptors.
            k: neighbours per query, >= 1.

        Returns:
            ``(scores, indices)``: (Q, k') float32 scores (inner products for ``ip``, squared
            L2 for ``l2``; see :meth:`distances`) and (Q, k') int64 row indices,
            ``k' = min(k, ntotal)``.

        Raises:
            DescriptorIndexError: empty index, k < 1, wrong query shape, NaN queries.
        """
        if self.ntotal == 0:
            raise DescriptorIndexError("the index is empty; add() reference descriptors first")
        if k < 1:
            raise DescriptorIndexError(f"k must be >= 1, got {k}")
        queries = as_float32_rows(queries, self.dim, "query descriptors")
        k_used = min(int(k), self.ntotal)
        if k_used < k:
            logger.debug("k = %d clamped to the %d descriptors in the index", k, k_used)
        scores, indices = self._index.search(queries, k_used)
        return scores.astype(np.float32, copy=False), indices.astype(np.int64, copy=False)

    def distances(self, scores: np.ndarray) -> np.ndarray:
        """Squared Euclidean descriptor distances from :meth:`search` scores (unit vectors)."""
        if self.metric == "ip":
            return squared_l2_from_ip(scores)
        return np.asarray(scores, dtype=np.float32)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to ``path`` atomically (FAISS's own format)."""
        return write_with(path, lambda tmp: faiss.write_index(self._index, str(tmp)))

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = False) -> DescriptorIndex:
        """Read an index written by :meth:`save`.

        Args:
            path: the index file.
            mmap: map the stored vectors from the file instead of reading them: opening is
                instant and only the pages a search touches are read (all of them for
                ``flat``, the visited cells for IVF). The index is then read-only:
                :meth:`add` and :meth:`train` raise.

        Raises:
            DescriptorIndexError: missing, unreadable or unsupported file.
        """
        path = Path(path)
        if not path.is_file():
            raise DescriptorIndexError(f"{path}: no such index file")
        # IO_FLAG_MMAP_IFC (recent faiss) also maps flat indexes; older faiss maps IVF only.
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as error:
            raise DescriptorIndexError(
                f"{path}: not a readable FAISS index ({str(error).splitlines()[0]})"
            ) from None
        wrapped = cls._wrap(index, path)
        wrapped._read_only = mmap
        return wrapped

    @classmethod
    def _wrap(cls, index: faiss.Index, source: Path) -> DescriptorIndex:
        """A DescriptorIndex around a FAISS index read from ``source``."""
        metric = {v: k for k, v in METRICS.items()}.get(index.metric_type)
        if metric is None:
            raise DescriptorIndexError(f"{source}: unsupported metric type {index.metric_type}")
        self = cls.__new__(cls)
        self._read_only = False
        self.dim = int(index.d)
        self.metric = metric
        self._index = index
        self.hnsw_m, self._ef_search = 0, 0
        if isinstance(index, faiss.IndexFlat):
            self.kind, self.nlist, self.m, self.nbits = "flat", 0, 0, 0
            self._nprobe = 0
            return self
        if isinstance(index, faiss.IndexHNSW):
            self.kind, self.nlist, self.m, self.nbits, self._nprobe = "hnsw", 0, 0, 0, 0
            self.hnsw_m = int(index.hnsw.nb_neighbors(1))
            self._ef_search = int(index.hnsw.efSearch)
            return self
        try:
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        except RuntimeError:
            raise DescriptorIndexError(
                f"{source}: unsupported index type {type(index).__name__}; expected flat, "
                "ivf, ivfpq or hnsw"
            ) from None
        self.nlist = int(ivf.nlist)
        self._nprobe = int(ivf.nprobe)
        if isinstance(ivf, faiss.IndexIVFPQ):
            self.kind, self.m, self.nbits = "ivfpq", int(ivf.pq.M), int(ivf.pq.nbits)
        elif isinstance(ivf, faiss.IndexIVFFlat):
            self.kind, self.m, self.nbits = "ivf", 0, 0
        else:
            raise DescriptorIndexError(
                f"{source}: unsupported IVF index {type(ivf).__name__}; expected ivf or ivfpq"
            )
        return self

    def __repr__(self) -> str:
        options = f", nlist={self.nlist}, nprobe={self.nprobe}" if self.nlist else ""
        if self.kind == "hnsw":
            options = f", hnsw_m={self.hnsw_m}, ef_search={self.ef_search}"
        if self.kind == "ivfpq":
            options += f", m={self.m}, nbits={self.nbits}"
        return (
            f"DescriptorIndex(dim={self.dim}, kind={self.kind!r}, metric={self.metric!r}"
            f"{options}, ntotal={self.ntotal})"
        )
