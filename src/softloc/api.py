"""Training and evaluation entry points of the Python API: a config in, a run folder out.

They do what `softloc train` and `softloc evaluate` do (the CLI calls the same library), with
Python values instead of command-line strings::

    import softloc
    model = softloc.train_model("demo", "runs/mine", overrides=["data.root=runs/demo/town"])
    table = softloc.evaluate({"mine": "maps/mine"}, "runs/demo/town", "results/mine")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from softloc.config import RunConfig, load_config


def train_model(
    config: RunConfig | str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train a descriptor into the run folder ``out``; return the final model file.

    Args:
        config: a :class:`RunConfig`, a YAML file, a preset name (``demo``, ...), or None for
            the defaults.
        overrides: ``section.key=value`` strings, as ``--set``.
        resume, overwrite: as ``softloc train --resume / --overwrite``.
    """
    from softloc.train import Trainer

    if not isinstance(config, RunConfig):
        config = load_config(config, list(overrides))
    elif overrides:
        raise ValueError("overrides apply to a config file or preset, not to a RunConfig")
    return Trainer(config, out, progress=progress).run(resume=resume, overwrite=overwrite)


def evaluate(
    maps: Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    split: str = "test",
    progress: bool = True,
) -> str:
    """Evaluate maps on a dataset's split into ``out`` (results.json, results.md, curves.png);
    return the Markdown table (under torchrun, on rank 0; the other ranks get ``""``). ``maps``
    is ``{name: folder}`` or a list of folders (named as `softloc evaluate` names them)."""
    from softloc.data.places import read_places
    from softloc.evaluation.protocol import evaluate_maps, model_names
    from softloc.output_folders import claim_output_folder

    claim_output_folder(out, "evaluation")
    if not isinstance(maps, Mapping):
        folders = [Path(m) for m in maps]
        maps = dict(zip(model_names(folders), folders, strict=True))
    return evaluate_maps(dict(maps), read_places(data), out, split=split, progress=progress)
