"""Mixed precision on the CPU: bf16 autocast trains and describes, fp16 uses a grad scaler
that travels with the checkpoints; the float32 default is untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from softloc.checkpoints import list_checkpoints, load_state
from softloc.config import ConfigError
from softloc.extract import extract_descriptors, image_store
from softloc.models import create_model
from softloc.precision import autocast, grad_scaler
from softloc.train import Trainer
from tests.tiny_run import SMALL as BASE
from tests.tiny_run import tiny_config

SMALL = [*BASE, "train.steps=4", "train.val_every=0"]


def _config(root: Path, *extra: str):
    return tiny_config(root, *extra, base=SMALL)


def test_unknown_amp_mode_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.amp must be one of off, bf16, fp16"):
        _config(tmp_path, "train.amp=fp8")


def test_bf16_extraction_is_close_to_float32_and_returns_float32(street) -> None:
    torch.manual_seed(0)
    model = create_model("small_gem", image_size=(32, 24))
    store = image_store(model, [street.image_path(i) for i in range(40)])
    full = extract_descriptors(model, store)
    with autocast(torch.device("cpu"), "bf16"):  # the context really lowers the precision
        assert model.forward_features(torch.zeros(1, 3, 24, 32)).dtype == torch.bfloat16
    half = extract_descriptors(model, store, amp="bf16")
    assert half.dtype == np.float32 and not np.array_equal(full, half)
    np.testing.assert_allclose(half, full, atol=0.03)


def test_bf16_training_runs_on_cpu_and_differs_from_float32(street, tmp_path: Path) -> None:
    plain = load_file(str(Trainer(_config(tmp_path), tmp_path / "a", progress=False).run()))
    bf16 = load_file(str(Trainer(_config(tmp_path, "train.amp=bf16"), tmp_path / "b",
                                 progress=False).run()))
    assert all(torch.isfinite(v).all() for v in bf16.values())
    assert any(not torch.equal(plain[k], bf16[k]) for k in plain)
    for key in plain:  # 4 small steps: the same direction
        torch.testing.assert_close(bf16[key], plain[key], atol=2e-2, rtol=0.1)


def test_fp16_trains_with_a_scaler_saved_in_checkpoints(street, tmp_path: Path) -> None:
    try:
        scaler = grad_scaler(torch.device("cpu"), "fp16")
        loss = torch.ones((), requires_grad=True)
        assert scaler is not None
        scaler.scale(loss).backward()
    except (RuntimeError, AssertionError) as error:  # pragma: no cover - depends on torch
        pytest.skip(f"this torch has no CPU GradScaler: {error}")
    out = tmp_path / "fp16"
    weights = load_file(str(Trainer(_config(tmp_path, "train.amp=fp16"), out,
                                    progress=False).run()))
    assert all(torch.isfinite(v).all() for v in weights.values())
    state = load_state(list_checkpoints(out / "checkpoints")[-1])
    assert float(state["amp.scale"][0]) > 0
    assert grad_scaler(torch.device("cpu"), "bf16") is None


def test_channels_last_training_runs_close_to_the_default(street, tmp_path: Path) -> None:
    plain = load_file(str(Trainer(_config(tmp_path), tmp_path / "a", progress=False).run()))
    last = load_file(str(Trainer(_config(tmp_path, "train.channels_last=true"), tmp_path / "b",
                                 progress=False).run()))
    for key in plain:
        torch.testing.assert_close(last[key], plain[key], atol=1e-4, rtol=1e-3)
