"""Training checkpoints: model (safetensors + JSON sidecar) and optimizer state, resumable.

A checkpoint of step S is three files in the checkpoint folder:
``step_S.optim.safetensors`` (optimizer state), ``step_S.safetensors`` (model weights) and
``step_S.json`` (model meta, step, config), plus ``step_S.state.safetensors`` when the trainer
has more state to keep (the hard-mining cache). Each is written to a temporary name and renamed;
the sidecar is written last, so a checkpoint is complete exactly when its sidecar exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from softloc.atomic import atomic_path
from softloc.kill_points import kill_point
from softloc.models import load_model, save_model

_PREFIX = "step_"


def checkpoint_path(folder: str | os.PathLike[str], step: int) -> Path:
    """Model weights file of the checkpoint of ``step``."""
    return Path(folder) / f"{_PREFIX}{step:08d}.safetensors"


def _optim_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name.replace(".safetensors", ".optim.safetensors"))


def _state_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name.replace(".safetensors", ".state.safetensors"))


def save_optimizer(optimizer: torch.optim.Optimizer, path: str | os.PathLike[str]) -> Path:
    """Write an optimizer's state dict as safetensors (tensors) + metadata (param groups)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            name = f"state.{pid}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().contiguous().cpu()
            else:
                scalars[name] = value
    metadata = {
        "param_groups": json.dumps(state["param_groups"]),
        "scalars": json.dumps(scalars),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_optimizer(optimizer: torch.optim.Optimizer, path: str | os.PathLike[str]) -> None:
    """Restore an optimizer's state written by :func:`save_optimizer`."""
    from safetensors import safe_open

    path = Path(path)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises several types on corrupt files
        raise ValueError(f"{path}: unreadable optimizer state ({error})") from error
    state: dict[int, dict[str, Any]] = {}
    entries: dict[str, Any] = dict(tensors)
    entries.update(json.loads(metadata.get("scalars", "{}")))
    for name, value in entries.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict(
        {"state": state, "param_groups": json.loads(metadata["param_groups"])}
    )


def save_checkpoint(
    folder: str | os.PathLike[str],
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep: int = 2,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` and delete all but the ``keep`` most recent ones.

    ``state``: further tensors to restore on resume (read back with :func:`load_state`).
    """
    path = checkpoint_path(folder, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_optimizer(optimizer, _optim_path(path))
    _state_path(path).unlink(missing_ok=True)
    if state:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        with atomic_path(_state_path(path)) as tmp:
            save_file(tensors, str(tmp))
    save_model(model, path, extra={**extra, "step": step})
    for old in list_checkpoints(folder)[:-keep]:
        for stale in (old, _optim_path(old), _state_path(old), old.with_suffix(".json")):
            stale.unlink(missing_ok=True)
    kill_point(f"checkpoint:{step}")
    return path


def list_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints (sidecar present), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for sidecar in sorted(folder.glob(f"{_PREFIX}*.json")):
        weights = sidecar.with_suffix(".safetensors")
        if weights.is_file() and _optim_path(weights).is_file():
            found.append(weights)
    return found


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Model and sidecar of a checkpoint."""
    return load_model(path)


def restore_optimizer(path: str | os.PathLike[str], optimizer: torch.optim.Optimizer) -> None:
    """Restore ``optimizer`` (built over the checkpoint's model) from the checkpoint ``path``."""
    load_optimizer(optimizer, _optim_path(Path(path)))


def load_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The extra tensors saved with the checkpoint ``path`` (empty if it has none)."""
    state_file = _state_path(Path(path))
    if not state_file.is_file():
        return {}
    try:
        return load_file(str(state_file))
    except Exception as error:  # safetensors raises several types on corrupt files
        raise ValueError(
            f"{state_file}: unreadable checkpoint state ({error}); delete this checkpoint to "
            "resume from the one before"
        ) from error
