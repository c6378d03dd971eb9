"""The image cache: every image of a dataset, decoded once at one size, in one uint8 file.

Files, per (dataset, size)::

    <cache folder>/<W>x<H>.u8     N x H x W x 3 bytes: row i of places.csv, uint8 RGB
    <cache folder>/<W>x<H>.json   manifest: rows, size, bytes, SHA-256 of places.csv's images

The cache folder is ``<dataset>/cache`` unless ``data.cache_dir`` names another one (then a
sub-folder per dataset). Rows are read with positioned reads (``os.preadv``) straight into
the batch buffers: the operating system's page cache holds what fits in memory, shared by every
run and reclaimable, and nothing grows in the process, however many images a run reads. It
costs N x W x H x 3 bytes of disk (1 M images at 240 x 180: 130 GB; the town's 11,125 at
120 x 90: 360 MB).

A cache is used only when its manifest matches the dataset: a places.csv that lists other
images (:func:`places_checksum`) or another size means it is rebuilt (the log says why). A
build writes the array to a temporary name, renames it, and writes the manifest last; the old
manifest is removed before a rebuild starts. So a build that is killed leaves no manifest that
points at a half-written array, and the next run builds again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from softloc.atomic import atomic_path, write_json
from softloc.data.images import ImageStore
from softloc.data.places import PlaceTable

logger = logging.getLogger(__name__)

CACHE_FOLDER = "cache"
CACHE_FORMAT = 1
DISK_MARGIN_BYTES = 256 * 2**20  # left free beside the cache
BUILD_CHUNK = 256  # rows decoded per job of a build


class CacheUnavailable(RuntimeError):
    """The cache cannot be written here (read-only folder, too little disk); the message says
    why and what to do."""


@dataclass(frozen=True)
class CacheFiles:
    """Where the cache of one dataset at one size lives."""

    data: Path
    manifest: Path


def cache_files(
    root: str | os.PathLike[str],
    size: tuple[int, int],
    cache_dir: str | os.PathLike[str] | None = None,
) -> CacheFiles:
    """The cache files of the dataset at ``root`` for images of ``size`` = (width, height).

    With ``cache_dir`` the files go to a sub-folder named after the dataset folder and a hash
    of its absolute path, so that several datasets can share one cache folder.
    """
    root = Path(root)
    if cache_dir is None:
        folder = root / CACHE_FOLDER
    else:
        digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
        folder = Path(cache_dir) / f"{root.resolve().name}-{digest}"
    name = f"{int(size[0])}x{int(size[1])}"
    return CacheFiles(data=folder / f"{name}.u8", manifest=folder / f"{name}.json")


def cache_bytes(rows: int, size: tuple[int, int]) -> int:
    """Disk size of a cache of ``rows`` images of ``size``: N x W x H x 3 bytes."""
    return int(rows) * int(size[0]) * int(size[1]) * 3


def places_checksum(image_paths: Sequence[str]) -> str:
    """SHA-256 of the places table's image column, in row order: what the cache's rows hold.

    Any change of places.csv that changes which image a row holds (rows added, dropped,
    reordered, a path changed) changes it; a changed position or label does not, since the
    cached pixels stay right. Image files replaced under the same name are not seen: rebuild
    with ``softloc cache build --rebuild``.
    """
    digest = hashlib.sha256()
    for path in image_paths:
        digest.update(str(path).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


class ImageCache:
    """A read-only view of a built cache: ``read(rows)`` gives (B, H, W, 3) uint8 images.

    Rows are read with ``os.preadv`` straight into the caller's buffer (one copy, from the
    page cache): the file's pages stay in the operating system's page cache, shared and
    reclaimable, and are not mapped into the process, so its resident memory does not grow
    with the rows a run has read.

    Args:
        path: the ``.u8`` file.
        rows: number of images in it.
        size: (width, height) of its images.
    """

    def __init__(self, path: str | os.PathLike[str], rows: int, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self._rows = int(rows)
        self._row_bytes = cache_bytes(1, self.size)
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self._rows

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None

    def read(
        self, rows: Sequence[int] | np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """(B, H, W, 3) uint8 images of ``rows`` (into ``out`` if given, a C-contiguous
        uint8 array of that shape)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        width, height = self.size
        if out is None:
            out = np.empty((len(rows), height, width, 3), dtype=np.uint8)
        if len(rows) and (rows.min() < 0 or rows.max() >= self._rows):
            raise IndexError(f"rows outside the cache's {self._rows} in {self.path}")
        expected = len(rows) * self._row_bytes
        if out.dtype != np.uint8 or not out.flags.c_contiguous or out.size != expected:
            raise ValueError("out must be a C-contiguous uint8 array of (B, H, W, 3)")
        flat = out.reshape(len(rows), self._row_bytes)
        for i, row in enumerate(rows):
            got = _read_at(self._fd, flat[i], int(row) * self._row_bytes)
            if got != self._row_bytes:
                raise OSError(f"{self.path}: short read of row {row} (the file was truncated?)")
        return out


def _read_at(fd: int, buffer: np.ndarray, offset: int) -> int:
    """Read ``len(buffer)`` bytes at ``offset`` into ``buffer``; the count read."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buffer], offset)
    data = os.pread(fd, buffer.nbytes, offset)  # systems without preadv: one more copy
    buffer[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return len(data)


def check_cache(
    files: CacheFiles, rows: int, size: tuple[int, int], checksum: str
) -> str | None:
    """Why the cache in ``files`` cannot serve this dataset, or None when it can."""
    if not files.manifest.is_file():
        return "no image cache yet" if not files.data.exists() else "the cache has no manifest"
    try:
        manifest = json.loads(files.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "its manifest is unreadable"
    expected = {
        "format": CACHE_FORMAT,
        "rows": int(rows),
        "width": int(size[0]),
        "height": int(size[1]),
        "bytes": cache_bytes(rows, size),
    }
    if manifest.get("places_sha256") != checksum:
        return "places.csv lists other images (rows or paths changed) since it was built"
    for key, value in expected.items():
        if manifest.get(key) != value:
            return f"it was built with {key} {manifest.get(key)!r}, the dataset needs {value!r}"
    if not files.data.is_file() or files.data.stat().st_size != expected["bytes"]:
        return "its data file is missing or of the wrong size"
    return None


def open_cache(
    files: CacheFiles, rows: int, size: tuple[int, int], checksum: str
) -> tuple[ImageCache | None, str | None]:
    """The cache if it is valid for this dataset, else (None, why not)."""
    problem = check_cache(files, rows, size, checksum)
    if problem is not None:
        return None, problem
    return ImageCache(files.data, rows, size), None


def build_cache(
    files: CacheFiles,
    rows: int,
    size: tuple[int, int],
    checksum: str,
    decode: Callable[[int], np.ndarray],
    workers: int = 0,
    progress: bool = False,
) -> ImageCache:
    """Decode every row with ``decode(row) -> (H, W, 3) uint8`` into a new cache.

    Checks first that the folder is writable and holds the cache with a margin, and says so
    (:class:`CacheUnavailable`) before decoding anything. A decoding error (e.g. a corrupt
    image) stops the build with that error and leaves no cache.

    Args:
        workers: decoding threads (0: the calling thread).
    """
    folder = files.data.parent
    needed = cache_bytes(rows, size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CacheUnavailable(
            f"{folder}: cannot create the image cache folder ({error}); set data.cache_dir to "
            "a writable folder"
        ) from error
    if not os.access(folder, os.W_OK):
        raise CacheUnavailable(
            f"{folder}: the image cache folder is not writable; set data.cache_dir to a "
            "writable folder"
        )
    free = shutil.disk_usage(folder).free
    old = files.data.stat().st_size if files.data.is_file() else 0
    if free + old < needed + DISK_MARGIN_BYTES:
        raise CacheUnavailable(
            f"{folder}: the image cache needs {needed / 1e9:.2f} GB ({rows} x {size[0]} x "
            f"{size[1]} x 3 bytes) but {free / 1e9:.2f} GB are free; free some disk or set "
            "data.cache_dir to a larger disk"
        )
    files.manifest.unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    row_bytes = cache_bytes(1, size)
    with atomic_path(files.data) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            os.truncate(tmp, needed)

            def fill(start: int) -> int:
                stop = min(start + BUILD_CHUNK, rows)
                for row in range(start, stop):
                    image = np.ascontiguousarray(decode(row), dtype=np.uint8)
                    if image.nbytes != row_bytes:
                        raise ValueError(f"row {row}: decoded {image.shape}, expected {size}")
                    os.pwrite(fd, image.data, row * row_bytes)
                return stop - start

            starts = range(0, rows, BUILD_CHUNK)
            bar = tqdm(total=rows, desc=f"image cache {size[0]}x{size[1]}", unit="img",
                       disable=not progress)
            try:
                if workers > 0:
                    with ThreadPoolExecutor(workers) as pool:
                        for done in pool.map(fill, starts):
                            bar.update(done)
                else:
                    for start in starts:
                        bar.update(fill(start))
            finally:
                bar.close()
            os.fsync(fd)
        finally:
            os.close(fd)
    write_json(
        files.manifest,
        {
            "format": CACHE_FORMAT,
            "rows": int(rows),
            "width": int(size[0]),
            "height": int(size[1]),
            "bytes": needed,
            "places_sha256": checksum,
        },
    )
    logger.info("wrote the image cache %s (%.2f GB)", files.data, needed / 1e9)
    return ImageCache(files.data, rows, size)


def ensure_cache(
    files: CacheFiles,
    rows: int,
    size: tuple[int, int],
    checksum: str,
    decode: Callable[[int], np.ndarray],
    workers: int = 0,
    progress: bool = False,
) -> ImageCache | None:
    """The valid cache, built (or rebuilt, saying why) when needed; None, with a log line,
    when it cannot be written (then the images are decoded on every read)."""
    cache, problem = open_cache(files, rows, size, checksum)
    if cache is not None:
        return cache
    if problem != "no image cache yet":
        logger.info("image cache %s is not used: %s; rebuilding it", files.data, problem)
    else:
        logger.info("building the image cache %s (%d images)", files.data, rows)
    try:
        return build_cache(files, rows, size, checksum, decode, workers, progress)
    except CacheUnavailable as error:
        logger.warning("%s; decoding the images on every read instead", error)
        return None


def store_for_places(
    places: PlaceTable,
    size: tuple[int, int],
    use_cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 0,
    progress: bool = False,
    where: Sequence[str] | None = None,
) -> ImageStore:
    """An :class:`ImageStore` of every row of ``places`` at ``size``: served from the dataset's
    cache (built first if needed) when ``use_cache``, decoded from the files otherwise or when
    the cache cannot be written."""
    paths = [places.image_path(i) for i in range(len(places))]
    store = ImageStore(paths, size, where=where)
    if not use_cache:
        return store
    files = cache_files(places.root, size, cache_dir)
    checksum = places_checksum(places.path)
    cache = ensure_cache(files, len(places), size, checksum, store.decode, workers, progress)
    return ImageStore(paths, size, cache=cache, where=where)


def parse_size(text: str) -> tuple[int, int]:
    """``"240x180"`` -> (240, 180).

    Raises:
        ValueError: not of the form WIDTHxHEIGHT with positive integers.
    """
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} must look like WIDTHxHEIGHT, e.g. 240x180") from None
    if width < 1 or height < 1:
        raise ValueError(f"size {text!r}: width and height must be positive")
    return width, height


def build_dataset_cache(
    root: str | os.PathLike[str],
    size: tuple[int, int],
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 0,
    rebuild: bool = False,
    progress: bool = True,
) -> tuple[CacheFiles, bool]:
    """``softloc cache build``: the cache of the dataset at ``root`` at ``size``, built unless
    a valid one exists (or always with ``rebuild``); returns its files and whether it was built.

    Raises:
        CacheUnavailable: the cache cannot be written (the message says why).
        ImageError: an image cannot be decoded (named with its places.csv line).
    """
    from softloc.data.places import PLACES_FILE, read_places

    places = read_places(root)
    files = cache_files(places.root, size, cache_dir)
    checksum = places_checksum(places.path)
    problem = check_cache(files, len(places), size, checksum)
    if problem is None and not rebuild:
        return files, False
    if problem is not None and problem != "no image cache yet":
        logger.info("image cache %s is rebuilt: %s", files.data, problem)
    places_file = places.root / PLACES_FILE
    where = [f"{places_file}, line {i + 2}" for i in range(len(places))]
    store = ImageStore([places.image_path(i) for i in range(len(places))], size, where=where)
    build_cache(files, len(places), size, checksum, store.decode, workers, progress)
    return files, True
