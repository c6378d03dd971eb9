"""Map folders: build, save, load, search, localize, and the errors on bad input or files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from softloc.data.places import PlaceTable
from softloc.map_columns import COLUMNS_DIR
from softloc.mapping import (
    DESCRIPTORS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    PLACES_FILE,
    Map,
    MapError,
    file_record,
    sha256_file,
)

DIM = 8
META = {"name": "tiny-gem", "checkpoint": "runs/x/last.pt", "whitening": "pca8"}


def make_places(n: int, root: str = "/data/town") -> PlaceTable:
    return PlaceTable(
        path=np.array([f"ref/{i:04d}.png" for i in range(n)]),
        x=np.arange(n) * 3.0,
        y=np.zeros(n),
        yaw=np.linspace(0, 1, n),
        timestamp=np.arange(n, dtype=float),
        traversal=np.array(["t0"] * n),
        condition=np.array(["overcast"] * n),
        split=np.array(["test"] * n),
        root=root,
    )


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def refs() -> np.ndarray:
    return unit_rows(np.random.default_rng(0), 60)


def test_build_search_matches_brute_force(refs) -> None:
    the_map = Map.build(refs, make_places(60), META)
    queries = unit_rows(np.random.default_rng(1), 5)
    scores, indices = the_map.search(queries, k=4)
    np.testing.assert_array_equal(indices, np.argsort(-(queries @ refs.T), axis=1)[:, :4])
    assert scores.shape == (5, 4) and len(the_map) == 60 and the_map.dim == DIM


def test_localize_returns_the_top1_pose(refs) -> None:
    the_map = Map.build(refs, make_places(60), META)
    # A query equal to reference 17 plus a little noise: 17 must come first.
    query = refs[17] + 0.01
    [result] = the_map.localize(query / np.linalg.norm(query), k=3)
    assert result.indices[0] == 17
    assert (result.x, result.y) == (51.0, 0.0)  # x = 17 * 3 m
    assert result.yaw == pytest.approx(np.linspace(0, 1, 60)[17])
    assert result.paths[0] == "ref/0017.png" and len(result.paths) == 3
    np.testing.assert_allclose(
        result.distances, ((refs[result.indices] - query / np.linalg.norm(query)) ** 2).sum(1),
        atol=1e-5,
    )


@pytest.mark.parametrize(("kind", "dtype"), [("flat", "float32"), ("flat", "float16"),
                                            ("ivf", "float32"), ("ivfpq", "float16")])
def test_save_load_round_trip(tmp_path, refs, kind, dtype) -> None:
    options = {"nlist": 2, "m": 4, "nbits": 4, "nprobe": 2} if kind != "flat" else None
    the_map = Map.build(refs, make_places(60), META, index_kind=kind, dtype=dtype,
                        index_options=options)
    folder = the_map.save(tmp_path / "map")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [DESCRIPTORS_FILE, PLACES_FILE, INDEX_FILE, MANIFEST_FILE, COLUMNS_DIR]
    )
    loaded = Map.load(folder, verify=True)
    assert isinstance(loaded.descriptors, np.memmap)  # opened lazily, not read into memory
    assert loaded.descriptors.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded.descriptors, refs.astype(dtype))
    np.testing.assert_array_equal(loaded.places.xy, the_map.places.xy)
    assert str(loaded.places.root) == "/data/town"  # image paths resolve as before
    assert loaded.model_meta == META and loaded.index.kind == kind
    queries = unit_rows(np.random.default_rng(3), 7)
    for before, after in zip(the_map.search(queries, 5), loaded.search(queries, 5), strict=True):
        np.testing.assert_array_equal(before, after)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["count"] == 60 and manifest["dim"] == DIM and manifest["dtype"] == dtype
    assert manifest["whitening"] == "pca8" and manifest["index"]["kind"] == kind
    assert manifest["descriptors_sha256"] == sha256_file(folder / DESCRIPTORS_FILE)


def test_save_refuses_to_overwrite_unless_asked(tmp_path, refs) -> None:
    the_map = Map.build(refs, make_places(60), META)
    the_map.save(tmp_path)
    with pytest.raises(MapError, match="overwrite=True"):
        the_map.save(tmp_path)
    smaller = Map.build(refs[:10], make_places(10), META)
    smaller.save(tmp_path, overwrite=True)
    assert len(Map.load(tmp_path)) == 10


def test_verify_detects_a_modified_descriptor_file(tmp_path, refs) -> None:
    folder = Map.build(refs, make_places(60), META).save(tmp_path / "map")
    path = folder / DESCRIPTORS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip the bits of the last byte of the last descriptor
    path.write_bytes(bytes(data))
    Map.load(folder)  # without verify the change goes unnoticed (the shape still fits)
    with pytest.raises(MapError, match="checksum mismatch.*softloc map build"):
        Map.load(folder, verify=True)


@pytest.mark.parametrize("missing", [MANIFEST_FILE, DESCRIPTORS_FILE, PLACES_FILE, INDEX_FILE])
def test_load_names_a_missing_file(tmp_path, refs, missing) -> None:
    folder = Map.build(refs, make_places(60), META).save(tmp_path / "map")
    (folder / missing).unlink()
    with pytest.raises(MapError, match=f"{missing}.*softloc map build"):
        Map.load(folder)


def test_load_rejects_corrupt_or_inconsistent_files(tmp_path, refs) -> None:
    folder = Map.build(refs, make_places(60), META).save(tmp_path / "map")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())

    def restamp() -> None:  # a manifest that lists the damaged files: the checks behind it
        files = {name: file_record(folder / name) for name in manifest["files"]}
        (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "files": files}))

    (folder / INDEX_FILE).write_bytes(b"garbage")
    with pytest.raises(MapError, match=f"{INDEX_FILE}: 7 bytes, the manifest says"):
        Map.load(folder)
    restamp()
    with pytest.raises(MapError, match=f"{INDEX_FILE}.*not a readable FAISS index"):
        Map.load(folder)
    (folder / DESCRIPTORS_FILE).write_bytes(b"garbage")
    restamp()
    with pytest.raises(MapError, match=f"{DESCRIPTORS_FILE}.*unreadable"):
        Map.load(folder)
    np.save(folder / DESCRIPTORS_FILE, refs[:50])
    restamp()
    with pytest.raises(MapError, match="manifest says"):
        Map.load(folder)
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(MapError, match="format version 99"):
        Map.load(folder)
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(MapError, match="not valid JSON"):
        Map.load(folder)
    with pytest.raises(MapError, match="no such map folder"):
        Map.load(tmp_path / "absent")


def test_build_rejects_bad_input(refs) -> None:
    places = make_places(60)
    with pytest.raises(MapError, match="60 descriptors but 59 places"):
        Map.build(refs, make_places(59), META)
    nan = refs.copy()
    nan[4, 1] = np.nan
    with pytest.raises(MapError, match="row 4 holds NaN"):
        Map.build(nan, places, META)
    with pytest.raises(MapError, match="L2-normalise"):
        Map.build(refs * 2, places, META)
    with pytest.raises(MapError, match="shape"):
        Map.build(refs[:, :0], places, META)
    with pytest.raises(MapError, match="dtype"):
        Map.build(refs, places, META, dtype="int8")
    with pytest.raises(MapError, match="JSON"):
        Map.build(refs, places, {"when": object()})
    with pytest.raises(MapError, match="lower nlist"):
        Map.build(refs, places, META, index_kind="ivf", index_options={"nlist": 100})


def test_search_rejects_bad_queries(refs) -> None:
    the_map = Map.build(refs, make_places(60), META)
    with pytest.raises(MapError, match="8-dim.*tiny-gem"):
        the_map.search(np.ones((2, 16), dtype=np.float32), 3)
    with pytest.raises(MapError, match="NaN"):
        the_map.search(np.full((1, DIM), np.nan), 3)
    with pytest.raises(MapError, match="k must be"):
        the_map.search(refs[:1], 0)
    scores, indices = the_map.search(refs[:2], 500)  # k clamped to the 60 references
    assert indices.shape == (2, 60)
