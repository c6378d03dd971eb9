"""Model checkpoints: a ``.safetensors`` state dict plus a JSON sidecar that rebuilds the model.

``save_model(model, "run/model.safetensors", extra={"step": 100})`` writes

- ``run/model.safetensors``: every parameter and buffer (whitening included);
- ``run/model.json``: ``{"format_version", "meta", "extra", "weights_sha256"}``.

Both are written atomically, the sidecar last (and any old sidecar removed first), so a complete
sidecar whose checksum matches means a complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from softloc.atomic import write_json, write_with
from softloc.models.descriptor import DescriptorModel, model_from_meta

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not fit its model description."""


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar beside a ``.safetensors`` checkpoint (same name, ``.json`` suffix)."""
    return Path(path).with_suffix(".json")


def save_model(
    model: DescriptorModel, path: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Save ``model`` to ``path`` (``.safetensors``) and its sidecar ``path.with_suffix(".json")``.

    Args:
        model: the model; its ``meta`` goes into the sidecar.
        path: target file, must end in ``.safetensors``; folders are created.
        extra: JSON-able information stored beside the meta (step, config, metrics ...).

    Returns:
        ``path``.

    Raises:
        ValueError: wrong suffix or ``extra`` not JSON-able.
    """
    from safetensors.torch import save_file

    target = Path(path)
    if target.suffix != WEIGHTS_SUFFIX:
        raise ValueError(f"checkpoint path must end in {WEIGHTS_SUFFIX}, got {str(target)!r}")
    sidecar = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "meta": model.meta,
        "extra": dict(extra or {}),
    }
    try:
        json.dumps(sidecar)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint extra must be JSON-able: {error}") from error
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    sidecar_file = sidecar_path(target)
    sidecar_file.unlink(missing_ok=True)  # an interrupted save then reads as incomplete
    write_with(target, lambda tmp: save_file(state, str(tmp)))
    sidecar["weights_sha256"] = _sha256(target)
    write_json(sidecar_file, sidecar)
    logger.info("saved model %s (%d tensors) to %s", model.meta["name"], len(state), target)
    return target


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[DescriptorModel, dict[str, Any]]:
    """Rebuild a model from a checkpoint written by :func:`save_model`.

    Args:
        path: the ``.safetensors`` file (or its ``.json`` sidecar).
        map_location: device the model is placed on.

    Returns:
        ``(model, sidecar)``: the model in eval mode with all weights (whitening included) and
        the sidecar dict (``meta``, ``extra``, ...).

    Raises:
        CheckpointError (a ValueError): missing sidecar or weights, checksum mismatch (an
            interrupted save), corrupt file, or weights that do not fit the meta.
    """
    from safetensors.torch import load_file

    _check_model_path(Path(path))
    weights = Path(path).with_suffix(WEIGHTS_SUFFIX)
    sidecar_file = sidecar_path(weights)
    if not sidecar_file.is_file() and not weights.is_file():
        raise CheckpointError(
            f"{str(weights)!r}: no such model file (and no sidecar {sidecar_file.name}); "
            "check the path: a trained model is RUN/model.safetensors"
        )
    if not sidecar_file.is_file():
        raise CheckpointError(
            f"checkpoint sidecar {str(sidecar_file)!r} is missing: the save was interrupted or "
            "the file was not written by softloc.models.save_model"
        )
    try:
        sidecar = json.loads(sidecar_file.read_text(encoding="utf-8"))
        meta = sidecar["meta"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint sidecar {str(sidecar_file)!r} is corrupt: {error}"
        ) from error
    if int(sidecar.get("format_version", 1)) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(weights)!r} has a newer format; upgrade softloc")
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {str(weights)!r} are missing")
    expected_hash = sidecar.get("weights_sha256")
    if expected_hash is not None and _sha256(weights) != expected_hash:
        raise CheckpointError(
            f"checkpoint weights {str(weights)!r} do not match the checksum in "
            f"{str(sidecar_file)!r}: the file was replaced or a later save was interrupted"
        )
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(
            f"cannot read checkpoint weights {str(weights)!r}: {error}"
        ) from error
    try:
        model = model_from_meta(meta)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {str(weights)!r} does not fit its own meta: {error}"
        ) from error
    model.to(map_location).eval()
    return model, sidecar


def _check_model_path(path: Path) -> None:
    """Refuse, with a message that says what was given, a path that is no softloc model file.

    A softloc model is two files, ``NAME.safetensors`` (weights) and ``NAME.json`` (the
    sidecar that rebuilds the network), as written by ``softloc train`` or `save_model`.
    """
    if path.is_dir():
        hint = "give the model file inside it"
        for candidate in (path / "model.safetensors", path / "model" / "model.safetensors"):
            if candidate.is_file():
                hint = f"did you mean {str(candidate)!r}?"
                break
        else:
            if (path / "manifest.json").is_file():
                hint = "it looks like a map folder; give the model the map was built with"
            elif (path / "checkpoints").is_dir():
                hint = (
                    "it holds checkpoints but no finished model: finish the run with "
                    "`softloc train --resume`, or give a checkpoints/step_*.safetensors file"
                )
        raise CheckpointError(
            f"{str(path)!r} is a folder, not a model file; softloc model files are "
            f"NAME.safetensors with a NAME.json sidecar: {hint}"
        )
    if path.suffix not in (WEIGHTS_SUFFIX, ".json"):
        raise CheckpointError(
            f"{str(path)!r} is not a softloc model file (got a {path.suffix or 'suffix-less'} "
            f"file); softloc model files are NAME.safetensors with a NAME.json sidecar, as "
            "written by `softloc train`. Pretrained backbone weights (.pth, .pt) go into "
            "model.weights of a training configuration instead"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
