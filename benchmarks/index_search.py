"""Speed and recall of the map's index kinds (flat, ivf, ivfpq) on synthetic descriptors.

Recall is measured against exact (flat) search: recall@1 is the share of queries whose true
nearest reference comes first, recall@10 the share whose true nearest reference is among
the first ten. Descriptors are unit vectors of low intrinsic dimension (see ``synthetic``),
queries are perturbed references (the same place seen again).

    python benchmarks/index_search.py --num-refs 100000 --dim 256 --threads 2

Results recorded in benchmarks/index_search.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import faiss
import numpy as np

from softloc.index import DescriptorIndex, default_nlist


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(
    num_refs: int, num_queries: int, dim: int, seed: int, latent_dim: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(refs, queries) as unit vectors of low intrinsic dimension, like real descriptors.

    Refs are Gaussian points in a ``latent_dim``-dim subspace (random orthonormal basis)
    plus a little full-dimensional noise; a query is a ref moved in the subspace and given
    fresh noise (the same place in another condition), so its true nearest reference is
    often not the ref it came from and IVF cell borders matter.
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, latent_dim)))  # (dim, latent_dim)
    latent = rng.normal(size=(num_refs, latent_dim))
    refs = unit(latent @ basis.T + 0.05 * rng.normal(size=(num_refs, dim)))
    moved = latent[rng.integers(0, num_refs, num_queries)] + 0.3 * rng.normal(
        size=(num_queries, latent_dim)
    )
    queries = unit(moved @ basis.T + 0.05 * rng.normal(size=(num_queries, dim)))
    return refs, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-refs", type=int, default=100_000)
    parser.add_argument("--num-queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    refs, queries = synthetic(args.num_refs, args.num_queries, args.dim, args.seed)
    nlist = default_nlist(args.num_refs)
    print(
        f"{args.num_refs} refs x {args.dim} dims, {args.num_queries} queries, nlist {nlist}, "
        f"{args.threads} threads, faiss {faiss.__version__}, {platform.processor() or 'cpu'}"
    )
    print()
    print("| kind | nprobe | train (s) | add (s) | search (ms/query) | recall@1 | recall@10 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    truth = None
    settings = [("flat", {}, [0]), ("ivf", {}, [1, 8, 32]),
                ("ivfpq", {"m": 32, "nbits": 8}, [8, 32])]
    for kind, options, nprobes in settings:
        index = DescriptorIndex(args.dim, kind=kind, nlist=nlist, **options)
        start = time.perf_counter()
        index.train(refs)
        trained = time.perf_counter()
        index.add(refs)
        added = time.perf_counter()
        for nprobe in nprobes:
            if kind != "flat":
                index.nprobe = nprobe
            begin = time.perf_counter()
            _, found = index.search(queries, 10)
            per_query_ms = 1000 * (time.perf_counter() - begin) / len(queries)
            if truth is None:
                truth = found[:, 0]
            recall1 = np.mean(found[:, 0] == truth)
            recall10 = np.mean([truth[i] in found[i] for i in range(len(truth))])
            print(
                f"| {kind} | {nprobe} | {trained - start:.2f} | {added - trained:.2f} | "
                f"{per_query_ms:.3f} | {recall1:.3f} | {recall10:.3f} |"
            )


if __name__ == "__main__":
    main()
