"""What torchrun told this process: its rank and the world's size, read from the environment.

``torchrun`` gives every process ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. This module reads
them and nothing else, and imports no torch, so the command line can ask "am I rank 0?" (to
print, to log) before any heavy import. :mod:`softloc.distributed` re-exports every name here
and does the collectives.
"""

from __future__ import annotations

import os


class DistributedError(RuntimeError):
    """A collective step failed: another rank died, stalled past the timeout, or disagrees."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not an integer; it is set by torchrun, "
                               "leave it to the launcher") from None


def world_size() -> int:
    """How many processes run this command (``WORLD_SIZE``; 1 without torchrun)."""
    return max(_env_int("WORLD_SIZE", 1), 1)


def rank() -> int:
    """This process's rank, 0 .. world_size()-1 (``RANK``; 0 without torchrun)."""
    return _env_int("RANK", 0) if world_size() > 1 else 0


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``): the GPU it uses."""
    return _env_int("LOCAL_RANK", rank()) if world_size() > 1 else 0


def is_main() -> bool:
    """True in the one process that writes results, maps, checkpoints and logs (rank 0)."""
    return rank() == 0
