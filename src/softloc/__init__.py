"""softloc: visual localization by image retrieval with soft contrastive learning.

The public API, imported lazily so that `import softloc` (and the CLI) stays light::

    import softloc
    the_map = softloc.Map.open("runs/demo/maps/soft_contrastive")
    localizer = softloc.Localizer(the_map)
    fixes = localizer.localize(["q1.png", "q2.png"])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Map": "softloc.mapping",
    "Localizer": "softloc.localizer",
    "Fix": "softloc.localizer",
    "Reference": "softloc.localizer",
    "SequenceConfig": "softloc.sequence",
    "RunConfig": "softloc.config",
    "load_config": "softloc.config",
    "train_model": "softloc.api",
    "evaluate": "softloc.api",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'softloc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
