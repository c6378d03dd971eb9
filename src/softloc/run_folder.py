"""The rule of a training run folder: never mix two runs, never resume into another config.

A training run folder (``config.yaml``, logs, ``checkpoints/``, ``model.safetensors``) belongs
to one run. Before training writes anything, `check_run_folder` decides what may happen:

- a missing or empty folder: a new run;
- a folder that holds a run:
    - without ``resume`` or ``overwrite``: refused, so a finished model is never replaced by
      accident and an old run's checkpoints (which keep the highest step numbers) never
      outrank a new run's;
    - ``resume``: the new resolved configuration is compared with the run's ``config.yaml``
      (`resume_changes`). A change of anything that alters what is trained is refused,
      naming the keys; a longer (or shorter, but not below the last checkpoint)
      ``train.steps`` and the keys in `HARMLESS_KEYS` are allowed and logged;
    - ``overwrite``: the old run is renamed to a hidden sibling in one atomic step, then
      deleted (`RunFolderPlan.apply`), before the new run writes its first file. A kill
      during the deletion leaves only that hidden sibling, removed at the next training
      into the same folder;
- a folder that holds anything else (a dataset, a map, files softloc did not write):
  refused by `softloc.output_folders.claim_output_folder`.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from softloc.checkpoints import list_checkpoints
from softloc.config import ConfigError, RunConfig, config_to_dict, load_config
from softloc.kill_points import kill_point
from softloc.output_folders import OutputFolderError, claim_output_folder, visible_entries

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
CHECKPOINT_FOLDER = "checkpoints"
_ASIDE_TAG = ".replaced-"

#: Keys that do not change what is trained, so ``--resume`` accepts a change of them: how
#: often progress is logged, validated and checkpointed, how many checkpoints are kept, and
#: where and how fast the same computation runs (threads, device, image caching, loader
#: parallelism). Everything else (data, model, tuples, loss, mining, the optimiser, the seed,
#: the image size, mixed precision) is refused.
HARMLESS_KEYS: tuple[str, ...] = (
    "data.cache_dir",
    "data.cache_images",
    "data.prefetch",
    "data.workers",
    "train.checkpoint_every",
    "train.device",
    "train.keep_checkpoints",
    "train.log_every",
    "train.num_threads",
    "train.val_every",
    "train.val_queries",
    "train.val_threshold",
)


class RunFolderError(OutputFolderError):
    """``--out`` holds another run, or ``--resume`` would change what that run trains."""


@dataclass(frozen=True)
class RunFolderPlan:
    """What `check_run_folder` decided: ``replace`` means set the old run aside first."""

    out: Path
    replace: bool = False

    def apply(self) -> None:
        """Set the old run aside and delete it (when ``replace``); remove hidden leftovers of
        an earlier replacement that was killed. Call it just before the first write."""
        for stale in _set_asides(self.out):
            shutil.rmtree(stale, ignore_errors=True)
        if not self.replace:
            return
        target = self.out.resolve()
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}{_ASIDE_TAG}", dir=target.parent))
        try:
            os.replace(target, aside)  # one step: the folder holds the old run or nothing
        except OSError as error:
            aside.rmdir()
            raise RunFolderError(
                f"{self.out}: cannot move the old run aside to replace it "
                f"({error.strerror or error}); delete that folder yourself or choose a new --out"
            ) from error
        logger.info("--overwrite: removed the old run in %s", self.out)
        kill_point("run-folder:set-aside")
        shutil.rmtree(aside, ignore_errors=True)


def _set_asides(out: Path) -> list[Path]:
    """Hidden siblings left by a replacement of ``out`` that was killed before it finished."""
    parent = out.resolve().parent
    if not parent.is_dir():
        return []
    prefix = f".{out.resolve().name}{_ASIDE_TAG}"
    return [p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]


def check_run_folder(
    out: str | os.PathLike[str], config: RunConfig, resume: bool = False, overwrite: bool = False
) -> RunFolderPlan:
    """Decide whether training may write into ``out`` (see the module docstring).

    Nothing is written or deleted here; the returned plan's ``apply`` does that.

    Raises:
        RunFolderError (a ValueError): ``out`` holds a run and neither ``resume`` nor
            ``overwrite`` is given, both are given, or ``resume`` would change what the run
            trains.
        OutputFolderError: ``out`` holds something other than a training run, is a file, or
            is not writable.
    """
    out = Path(out)
    if resume and overwrite:
        raise RunFolderError(
            "give --resume (continue the run in --out) or --overwrite (replace it), not both"
        )
    held = claim_output_folder(out, "training run")
    if not held:
        return RunFolderPlan(out)
    if overwrite:
        here = Path.cwd().resolve()
        if here == out.resolve() or out.resolve() in here.parents:
            raise RunFolderError(
                f"{out}: --overwrite cannot replace the folder you are working in; run the "
                "command from another folder"
            )
        return RunFolderPlan(out, replace=True)
    if not resume:
        names = visible_entries(out)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise RunFolderError(
            f"{out} already holds a training run ({shown}); nothing was written. Continue it "
            "with --resume, replace it with --overwrite (deletes the old run), or choose a new "
            "folder for --out"
        )
    previous = previous_config(out)
    if previous is None:
        if (out / "model.safetensors").is_file() and not list_checkpoints(out / CHECKPOINT_FOLDER):
            raise RunFolderError(
                f"{out} holds a model but neither {CONFIG_FILE} nor a checkpoint, so --resume "
                "cannot tell which run it is; replace it with --overwrite or choose a new --out"
            )
        return RunFolderPlan(out)
    refused, allowed = resume_changes(previous, config_to_dict(config), last_step(out))
    for line in allowed:
        logger.info("--resume %s: %s", out, line)
    if refused:
        raise RunFolderError(
            f"{out / CONFIG_FILE}: --resume with a configuration that changes what this run "
            f"trains: {'; '.join(refused)}. Nothing was written. Resume with the run's own "
            f"settings (those in {CONFIG_FILE}), train into a new --out, or start this run "
            "afresh with --overwrite"
        )
    return RunFolderPlan(out)


def previous_config(out: Path) -> dict[str, Any] | None:
    """The run's configuration as plain values: its ``config.yaml`` (defaults filled in for
    keys it predates), else the newest checkpoint's, else None."""
    path = out / CONFIG_FILE
    if path.is_file():
        try:
            return config_to_dict(load_config(path))
        except ConfigError:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(values, dict):
                return values
            raise
    checkpoints = list_checkpoints(out / CHECKPOINT_FOLDER)
    if checkpoints:
        sidecar = json.loads(checkpoints[-1].with_suffix(".json").read_text(encoding="utf-8"))
        config = sidecar.get("extra", {}).get("config")
        if isinstance(config, dict):
            return config
    return None


def last_step(out: Path) -> int:
    """Step of the newest complete checkpoint in ``out`` (0 when there is none)."""
    checkpoints = list_checkpoints(out / CHECKPOINT_FOLDER)
    if not checkpoints:
        return 0
    return int(checkpoints[-1].stem.split("_", 1)[1])


def resume_changes(
    previous: dict[str, Any], new: dict[str, Any], checkpoint_step: int
) -> tuple[list[str], list[str]]:
    """Compare two configurations of one run: (refused changes, allowed changes), each a
    ``key: old -> new`` line.

    ``train.steps`` may change as long as it does not fall below ``checkpoint_step``;
    ``data.root`` may name another folder when it holds the same ``places.csv``;
    `HARMLESS_KEYS` may change freely.
    """
    before, after = _flatten(previous), _flatten(new)
    refused, allowed = [], []
    for key in sorted(set(before) | set(after)):
        old, value = before.get(key, "<absent>"), after.get(key, "<absent>")
        if old == value:
            continue
        line = f"{key}: {old!r} -> {value!r}"
        if key in HARMLESS_KEYS:
            allowed.append(line)
        elif key == "train.steps" and isinstance(value, int) and value >= checkpoint_step:
            allowed.append(line)
        elif key == "train.steps":
            refused.append(f"{line} (fewer than the step of the last checkpoint, "
                           f"{checkpoint_step})")
        elif key == "data.root" and _same_dataset(old, value):
            allowed.append(f"{line} (the same places.csv)")
        else:
            refused.append(line)
    return refused, allowed


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        elif dataclasses.is_dataclass(value):
            flat.update(_flatten(dataclasses.asdict(value), f"{name}."))  # type: ignore[arg-type]
        else:
            flat[name] = value
    return flat


def _same_dataset(old: Any, new: Any) -> bool:
    """Whether two ``data.root`` values are one dataset: the same folder, or identical
    ``places.csv`` files (a dataset that was moved or is named by another path)."""
    old_root, new_root = Path(str(old)), Path(str(new))
    try:
        if old_root.resolve() == new_root.resolve():
            return True
        old_csv, new_csv = old_root / "places.csv", new_root / "places.csv"
        return old_csv.is_file() and new_csv.is_file() and filecmp.cmp(
            old_csv, new_csv, shallow=False
        )
    except OSError:
        return False
