"""The tiny training run the tests share: small_gem at 32 x 24 on the conftest street, 2 + 2
tuples, 6 steps; each test file adds only what it changes (later overrides win)."""

from __future__ import annotations

from pathlib import Path

from softloc.config import RunConfig, load_config

SMALL: list[str] = [
    "model.name=small_gem",
    "data.image_width=32",
    "data.image_height=24",
    "tuples.n_near=2",
    "tuples.n_far=2",
    "tuples.near_radius=4",
    "tuples.far_radius=8",
    "tuples.far_spacing=4",
    "train.steps=6",
    "train.steps_per_epoch=3",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=5",
    "train.val_every=3",
    "train.val_queries=10",
    "train.log_every=1",
    "train.lr=0.001",
]
MINING: list[str] = ["mining.enabled=true", "mining.cache_size=40", "mining.refresh_every=3"]


def tiny_config(root: Path, *extra: str, base: list[str] = SMALL) -> RunConfig:
    """The tiny run on the dataset in ``root``, with ``extra`` overrides."""
    return load_config(None, [f"data.root={root}", *base, *extra])


def run_killed_at(trainer, step: int) -> None:
    """Run ``trainer`` until its train step ``step`` raises KeyboardInterrupt (a kill between
    the checkpoints before it and the next); the run folder is left as a kill leaves it."""
    import pytest

    original_step = trainer.train_step

    def dying_step(model, optimizer, at):
        if at == step:
            raise KeyboardInterrupt("killed")
        return original_step(model, optimizer, at)

    trainer.train_step = dying_step
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
