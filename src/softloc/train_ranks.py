"""Training on several processes: which tuples a rank takes, the DDP wrapper, the gradient scale.

A step holds ``train.tuples_per_step`` = T tuples, and tuple i of step s is drawn from
``default_rng([seed, 2, s, i])`` (``[seed, 2, s]`` for i = 0, the tuple of a one-tuple step), so
the set of tuples of a step is a function of (seed, step) alone. Under ``torchrun`` with N
processes rank r takes tuples ``r, r + N, ...`` (:func:`my_tuples`); N must not exceed T
(:func:`check_world`: a rank without a tuple would have nothing to learn from, and we refuse
rather than let it idle).

**The scale.** The loss of a step is the mean of its T tuple losses, L = (1/T) sum_i L_i. Each
rank back-propagates ``N / T`` times the sum of its own tuples' losses (:func:`gradient_scale`),
one tuple at a time (the gradients add up; DDP's all-reduce waits for the last one).
DistributedDataParallel then averages the gradients over the N ranks (sum / N), so every rank
holds (1/N) sum_r (N/T) sum_{i of r} grad L_i = (1/T) sum_i grad L_i = grad L, the gradient of
the single-process step, whatever N; only the order of the float additions differs. With
T = N = 1 the scale is 1 and not applied, so a plain run computes exactly what it did before
T existed.

A plain ``softloc train`` (world of one) gets its model back unwrapped (:func:`wrap`) and takes
no collective step.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence

import torch

from softloc import distributed
from softloc.config import ConfigError


def check_world(tuples_per_step: int, world: int | None = None) -> None:
    """Refuse a launch with more processes than tuples per step (before anything is written).

    Raises:
        ConfigError: ``world > tuples_per_step``.
    """
    world = distributed.world_size() if world is None else world
    if world > tuples_per_step:
        raise ConfigError(
            f"train.tuples_per_step={tuples_per_step} is less than the {world} processes of "
            f"this launch: each rank takes tuples r, r+{world}, ... of a step, so some would "
            f"have none. Set --set train.tuples_per_step={world} or more (the loss is the "
            f"mean over the step's tuples; a multiple of {world} keeps the ranks equally "
            "busy) or start fewer processes"
        )


def my_tuples(tuples_per_step: int, world: int | None = None, which: int | None = None) -> range:
    """The tuples of every step that rank ``which`` of ``world`` takes: r, r + N, ..."""
    world = distributed.world_size() if world is None else world
    which = distributed.rank() if which is None else which
    return range(which, tuples_per_step, world)


def gradient_scale(tuples_per_step: int, world: int | None = None) -> float:
    """The factor ``N / T`` a rank multiplies its tuples' loss sum by before backward."""
    world = distributed.world_size() if world is None else world
    return world / tuples_per_step


def rank_device(device: torch.device) -> torch.device:
    """The training device of this rank: a CUDA device becomes GPU ``LOCAL_RANK`` under
    torchrun (one GPU per process); anything else is unchanged."""
    if device.type == "cuda" and distributed.world_size() > 1:
        which, visible = distributed.local_rank(), torch.cuda.device_count()
        if which >= visible:
            raise distributed.DistributedError(
                f"rank {distributed.rank()} needs GPU {which} (its LOCAL_RANK) but torch sees "
                f"{visible}: start at most {visible} process(es) per machine "
                "(--nproc_per_node), one per GPU"
            )
        return torch.device("cuda", which)
    return device


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` under DistributedDataParallel in a torchrun launch, else ``model`` itself.

    The wrapper shares the model's parameters, so the optimizer (built over ``model``) and the
    checkpoints hold no rank-specific state. Buffers are not broadcast at each forward pass:
    every rank starts from the same seeded (or checkpointed) weights, which DDP broadcasts
    from rank 0 once here, and a model with BatchNorm, the one layer with running statistics,
    is refused (:func:`check_no_batch_norm`); ranks may also run different numbers of forward
    passes in a step when N does not divide T, which a per-forward broadcast would not allow.
    """
    if not distributed.init_process_group(device):
        return model
    if not any(p.requires_grad for p in model.parameters()):
        return model  # nothing to train, nothing to synchronise (the loop takes no step)
    check_no_batch_norm(model)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # newer torch names the per-forward buffer sync `forward_sync_buffers` (and warns on the old)
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_buffer_sync)


def check_model_name(name: str, options: dict) -> None:
    """Under torchrun, refuse a model with BatchNorm (:func:`check_no_batch_norm`) before
    anything is written; it is built on the meta device (no memory, no weights read)."""
    if distributed.world_size() == 1:
        return
    from softloc.models import create_model

    try:
        with torch.device("meta"):
            probe = create_model(name, **options)
    except Exception:  # noqa: BLE001 - the real build reports its own errors later
        return
    check_no_batch_norm(probe)


def check_no_batch_norm(model: torch.nn.Module) -> None:
    """Refuse BatchNorm layers on several processes: each rank would update their running
    statistics from its own tuples only, so the ranks' models (and the saved one) would differ
    from each other and from one process's. (SyncBatchNorm would not help: it normalises over
    all ranks' tuples together, which one process never does.)

    Raises:
        distributed.DistributedError: the model has a BatchNorm layer.
    """
    found = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    if found:
        raise distributed.DistributedError(
            f"the model has BatchNorm layers ({', '.join(found[:3])}"
            f"{', ...' if len(found) > 3 else ''}): their running statistics would differ "
            "between the processes of this launch. Train it in one process (plain `softloc "
            "train`, train.tuples_per_step works there too) or choose a backbone without "
            "BatchNorm (vgg16, small)"
        )


def no_sync(wrapper: torch.nn.Module | None, last: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce in the backward of every tuple of a rank but its last."""
    if wrapper is None or last or not hasattr(wrapper, "no_sync"):
        return contextlib.nullcontext()
    return wrapper.no_sync()


@contextlib.contextmanager
def collective_step(step: int) -> Iterator[None]:
    """Turn a failure of DDP's own collectives in training step ``step`` (counted from 1, as
    in ``train_log.csv``; the gradients' all-reduce: another rank died or stalled) into the
    clear :class:`DistributedError` the other collectives raise. Nothing changes in a single
    process."""
    try:
        yield
    except RuntimeError as error:
        if distributed.world_size() == 1 or isinstance(error, distributed.DistributedError):
            raise
        backend_error = getattr(torch.distributed, "DistBackendError", ())
        text = str(error)
        if isinstance(error, backend_error) or any(
            word in text for word in ("gloo", "NCCL", "Connection closed", "Timed out")
        ):
            raise distributed._collective_failed(f"train step {step}", error) from error
        raise


def step_totals(
    loss_sum: float, collapse_values: Sequence[float | None], tuples_per_step: int,
    device: torch.device, step: int = 0,
) -> tuple[float, float | None]:
    """The step's loss (mean over its tuples, every rank's) and the mean collapse value of its
    tuples (None when the loss has none for some tuple), the same on every rank.

    ``step`` counts from 1 and names the collective (kill point ``train step <step>:rank<r>``).

    In a single process with one tuple these are the tuple's own values, unchanged.
    """
    known = [v for v in collapse_values if v is not None]
    missing = len(collapse_values) - len(known)
    if distributed.world_size() == 1 and tuples_per_step == 1:
        return loss_sum, (known[0] if known and not missing else None)
    summed = distributed.all_sum([loss_sum, math.fsum(known), missing], f"train step {step}",
                                 device)
    loss, collapse, none = float(summed[0]), float(summed[1]), int(summed[2])
    return loss / tuples_per_step, (None if none else collapse / tuples_per_step)
