"""A movie of Grad-CAM panels over a whole query drive, one row per model.

Every ``k``-th query of one traversal (in time order) becomes a frame, ``k`` chosen so that at
most ``max_frames`` frames are drawn. The movie is an mp4 (H.264, yuv420p, which browsers
play) written with the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships, so every machine
has it; an animated GIF (Pillow) is the fall-back only when that package cannot run. The file
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from matplotlib import animation
from tqdm.auto import tqdm

from softloc.data.places import PlaceTable
from softloc.explain.gradcam import (
    DEFAULT_THRESHOLD_M,
    draw_gradcam_rows,
    gradcam_figure,
    gradcam_row,
)
from softloc.explain.queries import MapRetrieval

logger = logging.getLogger(__name__)


def ffmpeg_executable() -> str | None:
    """The ffmpeg binary of imageio-ffmpeg (or on the PATH), or None."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return shutil.which("ffmpeg")


def movie_format() -> str:
    """``"mp4"`` when ffmpeg can be used, else ``"gif"``."""
    return "mp4" if ffmpeg_executable() else "gif"


def figure_rgb(figure) -> np.ndarray:
    """The figure drawn as an (H, W, 3) uint8 array, padded to even sides (yuv420p needs it)."""
    figure.canvas.draw()
    rgb = np.asarray(figure.canvas.buffer_rgba())[..., :3]
    height, width = rgb.shape[:2]
    return np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


class _Mp4Writer:
    """The part of matplotlib's writer interface the movie uses, on imageio-ffmpeg's pipe."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.figure = None
        self._pipe = None

    @contextmanager
    def saving(self, figure, path: str, dpi: float):
        import imageio_ffmpeg

        self.figure = figure
        first = figure_rgb(figure)
        self._pipe = imageio_ffmpeg.write_frames(
            path, (first.shape[1], first.shape[0]), fps=self.fps, codec="libx264",
            pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-f", "mp4"],
        )
        self._pipe.send(None)  # start ffmpeg
        try:
            yield self
        finally:
            self._pipe.close()

    def grab_frame(self) -> None:
        self._pipe.send(np.ascontiguousarray(figure_rgb(self.figure)))


def drive_frames(queries: PlaceTable, traversal: str | None, max_frames: int) -> np.ndarray:
    """Query rows of one traversal (default: the first) in time order, every k-th."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    traversals = sorted(set(queries.traversal.tolist()))
    traversal = traversal or traversals[0]
    if traversal not in traversals:
        raise ValueError(f"no query of traversal '{traversal}'; query traversals: {traversals}")
    rows = np.flatnonzero(queries.traversal == traversal)
    rows = rows[np.argsort(queries.timestamp[rows], kind="stable")]
    step = max(1, math.ceil(len(rows) / max_frames))
    return rows[::step]


def write_movie(
    retrievals: Sequence[MapRetrieval],
    out: str | os.PathLike[str],
    traversal: str | None = None,
    max_frames: int = 40,
    fps: float = 4.0,
    threshold_m: float = DEFAULT_THRESHOLD_M,
    stem: str = "movie",
    progress: bool = False,
) -> Path:
    """Write ``<stem>.mp4`` (or ``.gif``) into ``out``; return its path.

    The frames follow the first map's queries; every map explains the same query images.
    Every frame has the first frame's size (the figure's size is fixed, only its content is
    redrawn).
    """
    if not retrievals:
        raise ValueError("no map for the movie: give at least one")
    queries = retrievals[0].queries
    frames = drive_frames(queries, traversal, max_frames)
    kind = movie_format()
    target = Path(out) / f"{stem}.{kind}"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.stem}.partial.{kind}")

    def rows_for(i: int):
        return [gradcam_row(r.name, r.the_map, r.model, queries.image_path(int(i)), queries.xy[i])
                for r in retrievals]

    def title(i: int) -> str:
        return (f"{queries.traversal[i]} ({queries.condition[i]}) t={queries.timestamp[i]:.0f}"
                f"  x={queries.xy[i, 0]:.0f} y={queries.xy[i, 1]:.0f}")

    figure = gradcam_figure(rows_for(frames[0]), threshold_m, title(frames[0]))
    writer = _Mp4Writer(fps) if kind == "mp4" else animation.PillowWriter(fps=fps)
    try:
        with writer.saving(figure, str(partial), dpi=figure.dpi):
            for n, i in enumerate(tqdm(frames, desc="movie", disable=not progress)):
                if n:
                    draw_gradcam_rows(figure, rows_for(i), threshold_m, title(i))
                writer.grab_frame()
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    logger.info("wrote %d frames to %s", len(frames), target)
    return target
