"""Mixed precision: ``train.amp`` = off | bf16 | fp16 as an autocast context and a grad scaler.

``off`` (the default, and what the CPU runs) is float32 and deterministic. ``bf16`` autocasts
the network's matrix work to bfloat16 (same range as float32, no scaler needed); ``fp16``
autocasts to float16 and scales the loss with a GradScaler so small gradients do not underflow.
The loss itself is always computed in float32.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from softloc.config import AMP_MODES

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str) -> None:
    """Raise ValueError for an unknown mode."""
    if amp not in AMP_MODES:
        raise ValueError(f"train.amp must be one of {', '.join(AMP_MODES)}; got {amp!r}")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``amp`` on ``device`` (a no-op for ``off``)."""
    check_amp(amp)
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """A GradScaler for ``fp16`` (None otherwise: bf16 and float32 need none)."""
    check_amp(amp)
    if amp != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
