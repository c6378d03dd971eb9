"""Where ``softloc explain`` may write its pictures, checked before any work.

Pictures (t-SNE, Grad-CAM, movie, failures) have no marker file of their own, so the rule is
written here on top of :mod:`softloc.output_folders`: ``--out`` may be missing, empty, hold
only pictures of ``softloc explain``, or be an evaluation or report folder (pictures beside
the numbers they explain). Anything else (a dataset, a training run, a map, a sweep, a demo,
files softloc did not write) is refused before a map is opened.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from softloc.output_folders import (
    OutputFolderError,
    check_writable,
    folder_kinds,
    visible_entries,
)

#: Kinds of output pictures may join.
PICTURE_COMPANIONS: tuple[str, ...] = ("evaluation", "report")
#: Names of the files ``softloc explain`` writes.
PICTURE_FILE = re.compile(
    r"^(tsne\.(png|csv)|gradcam_\d+\.png|movie\.(mp4|gif)|failures(_.+)?\.(png|csv))$"
)


def claim_pictures_folder(folder: str | os.PathLike[str]) -> None:
    """Raise `OutputFolderError` unless pictures may be written into ``folder``.

    Raises:
        OutputFolderError: ``folder`` is a file, is not writable, or holds output other than
            pictures, an evaluation or a report; nothing has been written.
    """
    folder = Path(folder)
    check_writable(folder)  # also refuses a file
    if not folder.is_dir():
        return
    kinds = folder_kinds(folder)
    others = [kind for kind in kinds if kind not in PICTURE_COMPANIONS]
    foreign = [] if kinds else [n for n in visible_entries(folder) if not PICTURE_FILE.match(n)]
    if others or foreign:
        held = ", ".join(others) if others else "files softloc did not write"
        names = foreign or visible_entries(folder)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise OutputFolderError(
            f"{folder} already holds {held} ({shown}), not pictures; nothing was written. "
            "Choose a new or empty folder for --out (or an evaluation or report folder)"
        )
