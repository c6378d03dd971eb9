"""Atomic file writes: write to a temporary name in the same folder, then rename.

A killed process or two runs writing the same file never leave a half-written result behind.

Temporaries are hidden siblings of their target named after their writer,
``.{target}.p{pid}-{host}.{random}{suffix}`` (suffix ``.tmp`` for files), so that the
temporaries a killed writer left behind can be told from those of a live one: before each write
(and when a map is opened) the stale temporaries of the same target are removed, those of a
writer that is still running never are. See :func:`stale_temporaries` for the rule. A process
sweeps each folder it writes into once, at its first write there (a folder of a million images
is not listed again for every image).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: A temporary whose writer cannot be checked (another machine, or a name without a pid) is
#: stale once it is this old.
UNCHECKABLE_STALE_SECONDS = 24 * 3600.0


def _host() -> str:
    """This machine's name reduced to ``[A-Za-z0-9_-]`` (no dots: they separate name parts)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def temporary_prefix(target: str | os.PathLike[str]) -> str:
    """The name prefix of this process's temporaries of ``target``: ``.{name}.p{pid}-{host}.``."""
    return f".{Path(target).name}.p{os.getpid()}-{_host()}."


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 tests without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def stale_temporaries(target: str | os.PathLike[str], suffix: str = ".tmp") -> list[Path]:
    """Temporaries of ``target`` (hidden siblings ending in ``suffix``) whose writer is gone.

    The rule: a temporary named by this machine whose process id no longer runs is stale; one
    named by another machine, or in an older name without a process id (``.{name}.*{suffix}``),
    is stale once older than :data:`UNCHECKABLE_STALE_SECONDS`. A temporary of a live writer is
    never stale, so a concurrent writer is never disturbed.
    """
    target = Path(target)
    return _stale(target.parent, re.escape(target.name), suffix)


def stale_temporaries_in(folder: str | os.PathLike[str], suffix: str = ".tmp") -> list[Path]:
    """:func:`stale_temporaries` of every target in ``folder``."""
    return _stale(Path(folder), r"[^/]+?", suffix)


def _stale(folder: Path, name_pattern: str, suffix: str) -> list[Path]:
    if not folder.is_dir():
        return []
    named = re.compile(
        rf"^\.{name_pattern}\.p(\d+)-([A-Za-z0-9_-]+)\.[^.]+{re.escape(suffix)}$"
    )
    legacy = re.compile(rf"^\.{name_pattern}\.[^.]+{re.escape(suffix)}$")
    host = _host()
    now = time.time()
    stale = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = named.match(entry.name)
        if match is not None and match.group(2) == host:
            if not _pid_alive(int(match.group(1))):
                stale.append(Path(entry.path))
            continue
        if match is not None or legacy.match(entry.name):
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if age > UNCHECKABLE_STALE_SECONDS:
                stale.append(Path(entry.path))
    return sorted(stale)


def remove_stale_temporaries(target: str | os.PathLike[str], suffix: str = ".tmp") -> int:
    """Delete :func:`stale_temporaries` of ``target``; return how many (never raises OSError).

    Best effort: a read-only folder or a file removed meanwhile is skipped silently.
    """
    return _remove(stale_temporaries(target, suffix), str(target))


def remove_stale_temporaries_in(folder: str | os.PathLike[str], suffix: str = ".tmp") -> int:
    """Delete :func:`stale_temporaries_in` ``folder``; return how many (never raises OSError)."""
    return _remove(stale_temporaries_in(folder, suffix), str(folder))


@lru_cache(maxsize=4096)
def _sweep_once(folder: str) -> int:
    """:func:`remove_stale_temporaries_in` ``folder``, once per process and folder."""
    return remove_stale_temporaries_in(folder)


def _remove(paths: list[Path], where: str) -> int:
    removed = 0
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
        except OSError:
            continue
    if removed:
        logger.info("removed %d stale temporar%s in %s left by a killed writer", removed,
                    "y" if removed == 1 else "ies", where)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Stale temporaries left by killed writers in the folder are removed first (at this
    process's first write into that folder).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(os.path.abspath(target.parent))
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    usual_permissions(tmp_path)  # mkstemp makes 0600
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_permissions(path: str | os.PathLike[str], directory: bool = False) -> None:
    """Give a ``mkstemp`` / ``mkdtemp`` result the permissions a plain create would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
    """Atomically write ``path`` by calling ``writer(tmp_path)``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)
