"""Several processes, one command: the ranks torchrun starts, and the rows each one describes.

``torchrun --nproc_per_node=N -m softloc evaluate ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their
environment. This module is the one place that reads them. Without them (a plain
``softloc ...``) the world is one process: :func:`world_size` is 1, :func:`is_main` is True,
nothing is initialised and every helper here returns at once, so a single-process run takes no
distributed code path at all.

Work is split in **contiguous blocks of whole batches** (:func:`shard_rows`): rank r describes
the r-th block of the batches a single process would run, so every image goes through the model
in exactly the batch it would meet alone, and the gathered descriptors (:func:`gather_rows`,
concatenated in rank order = row order) equal the single-process ones bit for bit, whatever N.

The process group is torch.distributed's (gloo for a CPU device, NCCL for CUDA), opened on first
use by :func:`init_process_group` with a timeout (``SOFTLOC_DIST_TIMEOUT_S``, default 600 s):
a rank that dies or stalls makes the others' next collective fail within it, and they stop with
a :class:`DistributedError` naming the step and the rank.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from softloc.kill_points import kill_point
from softloc.launch import (  # noqa: F401  (re-exported: one import for callers)
    DistributedError,
    is_main,
    local_rank,
    rank,
    world_size,
)

TIMEOUT_ENV = "SOFTLOC_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def timeout_s() -> float:
    """Seconds a collective waits for the other ranks (``SOFTLOC_DIST_TIMEOUT_S``)."""
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={value!r}: give the timeout in seconds, e.g. "
                               f"{TIMEOUT_ENV}=600") from None
    if seconds <= 0:
        raise DistributedError(f"{TIMEOUT_ENV}={value!r}: the timeout must be positive")
    return seconds


def backend_for(device: torch.device | str) -> str:
    """The torch.distributed backend of a device: NCCL for CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(device: torch.device | str = "cpu") -> bool:
    """Join the process group torchrun described, once; return whether there is one.

    With a world of one process this does nothing and returns False. Otherwise the group is
    opened with the backend of ``device`` (:func:`backend_for`) and the timeout of
    :func:`timeout_s`; a CUDA device is bound to ``LOCAL_RANK`` first. A group already open
    (this process's earlier call, or a caller's own) is kept.
    """
    if world_size() == 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    missing = [name for name in _LAUNCH_VARS if name not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world_size()} but {', '.join(missing)} unset; start several "
            "processes with `torchrun --nproc_per_node=N -m softloc ...`, or unset WORLD_SIZE"
        )
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    except Exception as error:  # torch raises RuntimeError, DistStoreError, ValueError ...
        raise DistributedError(
            f"rank {rank()} of {world_size()}: could not join the other processes at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s():g} s "
            f"({error}); did every rank start?") from error
    atexit.register(_close)
    return True


def _close() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _collective_failed(step: str, error: Exception) -> DistributedError:
    return DistributedError(
        f"rank {rank()} of {world_size()}: {step} failed: another rank died or stalled past "
        f"the {timeout_s():g} s timeout ({type(error).__name__}: {str(error).splitlines()[0]}); "
        "nothing of this run was written as complete: see the failed rank's own error or exit "
        "status in the log, fix it and run the command again"
    )


def barrier(step: str = "barrier", device: torch.device | str = "cpu") -> None:
    """Wait until every rank reaches this point (nothing in a single process)."""
    if not init_process_group(device):
        return
    import torch.distributed as dist

    kill_point(f"{step}:rank{rank()}")
    try:
        dist.barrier()
    except Exception as error:
        raise _collective_failed(step, error) from error


def shard_rows(
    rows: Sequence[int] | np.ndarray, batch_size: int, ranks: int | None = None,
    which: int | None = None
) -> np.ndarray:
    """This rank's share of ``rows``: a contiguous block of whole batches.

    The rows are cut into the batches of ``batch_size`` one process would run; rank r takes
    batches ``[r*B//N, (r+1)*B//N)`` of the B batches. Blocks differ by at most one batch, are
    in row order, and concatenated in rank order give back ``rows``.

    Args:
        ranks, which: world size and rank (default: this process's).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ranks = world_size() if ranks is None else ranks
    which = rank() if which is None else which
    rows = np.asarray(rows, dtype=np.int64)
    batches = -(-len(rows) // batch_size)
    first, last = which * batches // ranks, (which + 1) * batches // ranks
    return rows[first * batch_size:last * batch_size]


def gather_rows(
    local: np.ndarray, step: str = "gather", device: torch.device | str = "cpu",
    main_only: bool = False,
) -> np.ndarray | None:
    """Every rank's rows, concatenated in rank order (= row order for :func:`shard_rows`).

    Each rank passes its block (any number of rows, the same trailing shape and dtype on all);
    blocks are padded to the longest for the collective and trimmed after. In a single process
    ``local`` comes back as it is.

    Args:
        step: named in the error if another rank is gone, and the kill point
            ``<step>:rank<r>`` of the robustness tests.
        device: whose backend to use (CUDA tensors travel on NCCL).
        main_only: gather on rank 0 only (others get None): a map's descriptors need not be
            held by every process.

    Raises:
        DistributedError: another rank died, stalled past the timeout, or sent rows of
            another shape or dtype.
    """
    if not init_process_group(device):
        return local
    import torch.distributed as dist

    kill_point(f"{step}:rank{rank()}")
    local = np.ascontiguousarray(local)
    nccl = backend_for(device) == "nccl"
    on = torch.device("cuda", local_rank()) if nccl else torch.device("cpu")
    n = world_size()
    try:
        # rows, then the trailing shape, and a dtype code: all ranks must agree on the last two
        header = torch.tensor([local.shape[0], local.ndim, *local.shape[1:4],
                               *[0] * (4 - min(local.ndim, 4)), np.dtype(local.dtype).num],
                              dtype=torch.int64, device=on)
        headers = [torch.empty_like(header) for _ in range(n)]
        dist.all_gather(headers, header)
        table = torch.stack(headers).cpu().numpy()
        if (table[:, 1:] != table[0, 1:]).any():
            raise DistributedError(
                f"rank {rank()}: {step}: the ranks' rows differ in shape or dtype "
                f"({[tuple(r) for r in table[:, 1:]]}); every rank must run the same command")
        counts = table[:, 0]
        longest = int(counts.max())
        padded = np.zeros((longest, *local.shape[1:]), dtype=local.dtype)
        padded[: len(local)] = local
        tensor = torch.from_numpy(padded).to(on)
        if main_only:
            parts = [torch.empty_like(tensor) for _ in range(n)] if is_main() else None
            dist.gather(tensor, parts, dst=0)
        else:
            parts = [torch.empty_like(tensor) for _ in range(n)]
            dist.all_gather(parts, tensor)
    except DistributedError:
        raise
    except Exception as error:
        raise _collective_failed(step, error) from error
    if parts is None:
        return None
    return np.concatenate([p.cpu().numpy()[: int(c)] for p, c in zip(parts, counts, strict=True)])


def _collective_device(device: torch.device | str) -> torch.device:
    return torch.device("cuda", local_rank()) if backend_for(device) == "nccl" else torch.device(
        "cpu")


def all_sum(
    values: Sequence[float] | np.ndarray, step: str = "sum", device: torch.device | str = "cpu"
) -> np.ndarray:
    """The element-wise sum over the ranks of a few numbers (float64), on every rank.

    In a single process ``values`` come back as a float64 array, unchanged.
    """
    local = np.asarray(values, dtype=np.float64)
    if not init_process_group(device):
        return local
    import torch.distributed as dist

    kill_point(f"{step}:rank{rank()}")
    tensor = torch.from_numpy(local.copy()).to(_collective_device(device))
    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    except Exception as error:
        raise _collective_failed(step, error) from error
    return tensor.cpu().numpy()


def main_decides(flag: bool, step: str = "decision", device: torch.device | str = "cpu") -> bool:
    """Rank 0's ``flag`` on every rank (a decision all must take alike, e.g. stop now)."""
    if not init_process_group(device):
        return bool(flag)
    import torch.distributed as dist

    kill_point(f"{step}:rank{rank()}")
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_collective_device(device))
    try:
        dist.broadcast(tensor, src=0)
    except Exception as error:
        raise _collective_failed(step, error) from error
    return bool(tensor.item())


@contextlib.contextmanager
def main_first(step: str = "main first", device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block on rank 0 first, then on the others (which wait for it at a barrier):
    for work that writes a shared file the others then read, e.g. a dataset's image cache."""
    if not is_main():
        barrier(step, device)
    yield
    if is_main():
        barrier(step, device)
