"""Maps larger than memory: streamed builds, float16 storage, columnar places, HNSW."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from softloc import index as index_module
from softloc import map_columns, mapping, streamed_build
from softloc.cli import main
from softloc.data import places as places_module
from softloc.data.places import PlaceTable, read_places, write_places
from softloc.map_columns import COLUMN_FILES, COLUMNS_DIR, LazyPaths
from softloc.map_import import import_descriptor_file, import_map
from softloc.mapping import KILL_POINT_ENV, MANIFEST_FILE, PLACES_FILE, Map, MapError


def street(n: int, root: str | Path = "/data/street") -> PlaceTable:
    """n references along a street, in three drives and two conditions."""
    return PlaceTable(
        path=np.array([f"drive{i % 3}/{i:06d}.png" for i in range(n)]),
        x=np.arange(n) * 0.5,
        y=np.sin(np.arange(n) / 50.0),
        yaw=np.linspace(-3.0, 3.0, n),
        timestamp=np.arange(n) * 0.1,
        traversal=np.array([f"drive{i % 3}" for i in range(n)]),
        condition=np.array(["overcast" if i % 2 else "night" for i in range(n)]),
        split=np.array(["test"] * n),
        root=root,
    )


def write_unit_rows(path: Path, n: int, dim: int, seed: int = 0, block: int = 20000) -> None:
    """An (n, dim) float32 .npy of random unit rows, written block by block (never whole)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    rng = np.random.default_rng(seed)
    for start in range(0, n, block):
        rows = rng.normal(size=(min(block, n - start), dim)).astype(np.float32)
        out[start:start + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    out.flush()
    del out


def test_a_streamed_import_holds_far_less_than_the_descriptors(tmp_path, monkeypatch) -> None:
    """200 k x 64 float32 = 51 MB of descriptors; the import's Python/numpy allocations
    (tracemalloc) peak at a fraction of that: blocks, the training sample, the index's codes."""
    n, dim = 200_000, 64
    source = tmp_path / "descriptors.npy"
    write_unit_rows(source, n, dim)
    table = street(n, tmp_path)
    for module, name in ((streamed_build, "CHUNK_ROWS"), (mapping, "CHUNK_ROWS"),
                         (index_module, "ADD_BATCH_ROWS"), (map_columns, "CHUNK_ROWS")):
        monkeypatch.setattr(module, name, 8192)  # the configured block size
    descriptor_bytes = n * dim * 4
    tracemalloc.start()
    try:
        out = import_descriptor_file(source, table, tmp_path / "map", index_kind="ivfpq",
                                     index_options={"nlist": 16, "m": 8, "nbits": 6})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < descriptor_bytes / 4, f"peak {peak / 1e6:.1f} MB"
    loaded = Map.open(out, verify=True)
    assert loaded.descriptors.shape == (n, dim)
    probe = np.load(source, mmap_mode="r")
    rows = np.array([0, 1234, n - 1])
    np.testing.assert_array_equal(loaded.descriptors[rows], probe[rows])
    assert loaded.index.ntotal == n and loaded.index.kind == "ivfpq"


def separated_references(rng: np.random.Generator, centres: int, members: int, dim: int):
    """Clusters whose member j has inner product cos(0.1 (j + 1)) with its centre: the top-k
    of a centre is its members in order, with score gaps >= 0.005 (float16 keeps them)."""
    angles = 0.1 * (np.arange(members) + 1)
    centre = rng.normal(size=(centres, dim))
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    refs = []
    for c in centre:
        other = rng.normal(size=(members, dim))
        other -= (other @ c)[:, None] * c  # orthogonal to the centre
        other /= np.linalg.norm(other, axis=1, keepdims=True)
        refs.append(np.cos(angles)[:, None] * c + np.sin(angles)[:, None] * other)
    return np.concatenate(refs).astype(np.float32), centre.astype(np.float32)


def test_a_float16_map_gives_the_float32_top_k(tmp_path) -> None:
    members = 10
    refs, centres = separated_references(np.random.default_rng(1), 40, members, 64)
    source = tmp_path / "refs.npy"
    np.save(source, refs)
    expected = np.arange(len(refs)).reshape(len(centres), members)  # member order, per centre
    for dtype in ("float32", "float16"):
        folder = import_descriptor_file(source, street(len(refs), tmp_path), tmp_path / dtype,
                                        dtype=dtype)
        the_map = Map.open(folder)
        assert the_map.descriptors.dtype == np.dtype(dtype)
        _, found = the_map.search(centres, members)
        np.testing.assert_array_equal(found, expected)


def awkward_places(root: Path) -> PlaceTable:
    paths = ["a/b/c/0001.png", "café/niño 1.jpg", "with,comma/x.png", 'quote"d/y.png',
             "東京/駅.png", "plain.png"]
    n = len(paths)
    return PlaceTable(
        path=np.array(paths),
        x=np.array([0.1 + 0.2, -1e-300, 1e300, 123456789.123456789, -0.0, 7.0]),
        y=np.array([1 / 3, 2 / 3, -5.5, 0.0, 1e-7, 3.0]),
        yaw=np.linspace(-np.pi, np.pi, n),
        timestamp=np.array([1.7e9 + 0.123456, 0.0, 1.0, 2.0, 3.0, 4.5]),
        traversal=np.array(["late", "early", "late", "mid, drive", "early", "日本"]),
        condition=np.array(["night", "snow", "night", "sunny", "snow", "night"]),
        split=np.array(["test", "test", "val", "test", "train", "test"]),
        root=root,
    )


def test_columns_round_trip_exactly_against_places_csv(tmp_path, monkeypatch) -> None:
    table = awkward_places(tmp_path)
    places_csv = write_places(table, tmp_path / "places.csv")
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(len(table), 8)).astype(np.float32)
    np.save(tmp_path / "d.npy", rows / np.linalg.norm(rows, axis=1, keepdims=True))
    folder = import_map(tmp_path / "d.npy", places_csv, tmp_path / "map")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert set(COLUMN_FILES) <= set(manifest["files"])
    from_csv = read_places(folder / PLACES_FILE)  # the human-readable export

    def no_csv(*args, **kwargs):
        raise AssertionError("a map with columns must open without reading places.csv")

    monkeypatch.setattr(mapping, "read_places", no_csv)
    monkeypatch.setattr(places_module, "stream_csv_text", no_csv)
    opened = Map.open(folder).places
    assert isinstance(opened.path, LazyPaths)
    for column in ("x", "y", "yaw", "timestamp"):  # the very same float64 values
        np.testing.assert_array_equal(getattr(opened, column), getattr(from_csv, column))
        np.testing.assert_array_equal(getattr(opened, column), getattr(table, column))
    for column in ("path", "traversal", "condition", "split"):
        assert list(getattr(opened, column)[np.arange(len(table))]) == \
            getattr(table, column).tolist() == getattr(from_csv, column).tolist()
    assert opened.traversals() == table.traversals() and opened.conditions() == \
        table.conditions()
    assert opened.path[1] == "café/niño 1.jpg" and opened.path[-2] == "東京/駅.png"
    assert opened.image_path(2) == tmp_path / "with,comma/x.png"
    assert opened.path[np.array([True, False, False, False, False, True])].tolist() == \
        ["a/b/c/0001.png", "plain.png"]
    assert opened.path[1:3].tolist() == table.path[1:3].tolist()
    assert opened.path[np.array([-1, 0])].tolist() == table.path[[-1, 0]].tolist()
    with pytest.raises(IndexError):
        opened.path[len(table)]
    sub = opened.subset(np.array([4, 0]))
    assert isinstance(sub, PlaceTable) and sub.to_csv_text() == table.subset(
        np.array([4, 0])).to_csv_text()
    night = opened.where(condition="night", split="test")
    assert night.path.tolist() == ["a/b/c/0001.png", "plain.png"] == \
        table.where(condition="night", split="test").path.tolist()
    assert opened.where(traversal="absent").path.tolist() == []
    assert opened.to_csv_text() == table.to_csv_text() == places_csv.read_text("utf-8")


def test_a_map_without_columns_opens_from_its_places_csv(tmp_path) -> None:
    """A map written before the columns: manifest v2 listing no columns/, no such folder."""
    table = street(50, tmp_path)
    rows = np.random.default_rng(3).normal(size=(50, 8)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    folder = Map.build(rows, table, {"name": "old"}).save(tmp_path / "map")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for name in COLUMN_FILES:
        (folder / name).unlink()
        del manifest["files"][name]
    (folder / COLUMNS_DIR).rmdir()
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    opened = Map.open(folder, verify=True)
    assert isinstance(opened.places, PlaceTable)  # read from the csv, as before
    np.testing.assert_array_equal(opened.places.xy, table.xy)
    assert opened.places.path.tolist() == table.path.tolist()
    assert str(opened.places.root) == str(tmp_path)
    resaved = opened.save(tmp_path / "again")  # a re-save writes the columns
    assert (resaved / COLUMNS_DIR).is_dir()
    np.testing.assert_array_equal(Map.open(resaved).places.xy, table.xy)


def test_a_damaged_column_is_refused_by_name(tmp_path) -> None:
    table = street(40, tmp_path)
    rows = np.eye(40, 40, dtype=np.float32)
    folder = Map.build(rows, table, {"name": "x"}).save(tmp_path / "map")
    column = folder / COLUMNS_DIR / "xy.npy"
    data = bytearray(column.read_bytes())
    data[-1] ^= 0x01
    column.write_bytes(bytes(data))
    with pytest.raises(MapError, match="xy.npy: checksum mismatch"):
        Map.open(folder)


def test_a_killed_streamed_import_leaves_no_map(tmp_path) -> None:
    table = street(300, tmp_path)
    places_csv = write_places(table, tmp_path / "places.csv")
    write_unit_rows(tmp_path / "d.npy", 300, 16)
    out = tmp_path / "map"
    command = [sys.executable, "-m", "softloc", "-q", "map", "import", "--descriptors",
               str(tmp_path / "d.npy"), "--places", str(places_csv), "--out", str(out),
               "--dtype", "float16"]
    env = {**os.environ, KILL_POINT_ENV: "map:files"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not out.exists()  # only the hidden build folder of the dead process
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".map")]
    assert leftovers and all(name.endswith(".build") for name in leftovers)
    env.pop(KILL_POINT_ENV)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".map")]
    assert Map.open(out, verify=True).descriptors.dtype == np.float16


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_index_kinds_from_the_command_line(tmp_path, kind, capsys) -> None:
    n, dim = 3000, 32
    write_unit_rows(tmp_path / "d.npy", n, dim, seed=4)
    places_csv = write_places(street(n, tmp_path), tmp_path / "places.csv")
    options = {"ivf": ["--nlist", "20", "--nprobe", "20"],
               "ivfpq": ["--nlist", "20", "--nprobe", "20", "--m", "8", "--nbits", "6"],
               "hnsw": ["--hnsw-m", "12", "--ef-search", "80"]}[kind]
    assert main(["-q", "map", "import", "--descriptors", str(tmp_path / "d.npy"), "--places",
                 str(places_csv), "--out", str(tmp_path / "map"), "--index", kind,
                 "--dtype", "float16", *options]) == 0
    the_map = Map.open(tmp_path / "map")
    manifest = json.loads((tmp_path / "map" / MANIFEST_FILE).read_text())
    assert the_map.index.kind == manifest["index"]["kind"] == kind
    if kind == "hnsw":
        assert (the_map.index.hnsw_m, the_map.index.ef_search) == (12, 80)
        assert manifest["index"]["hnsw_m"] == 12 and manifest["index"]["ef_search"] == 80
    else:
        assert (the_map.index.nlist, the_map.index.nprobe) == (20, 20)
    if kind == "ivfpq":
        assert (the_map.index.m, the_map.index.nbits) == (8, 6)
    queries = np.asarray(the_map.descriptors[::100], dtype=np.float32)
    _, found = the_map.search(queries, 1)
    exact = np.argmax(queries @ np.asarray(the_map.descriptors, np.float32).T, axis=1)
    recall = float(np.mean(found[:, 0] == exact))
    # every cell searched: ivf is exact; hnsw finds nearly all; ivfpq finds most rows themselves
    assert recall >= {"ivf": 1.0, "ivfpq": 0.8, "hnsw": 0.95}[kind]


@pytest.mark.parametrize(("count", "ranks"), [(26, 3), (8, 3), (64, 2)])
def test_rank_zero_writes_every_ranks_batches_at_their_rows(tmp_path, monkeypatch, count,
                                                            ranks) -> None:
    """The rounds of a torchrun build, with the collective played in one process: rank 0's
    file must equal the rows described in order (blocks of uneven length, empty blocks)."""
    import torch

    from softloc import distributed, extract

    batch = 4
    truth = np.random.default_rng(5).normal(size=(count, 6)).astype(np.float32)
    blocks = [distributed.shard_rows(np.arange(count), batch, ranks, r) for r in range(ranks)]

    def batches_of(rows):
        return [truth[rows[i:i + batch]] for i in range(0, len(rows), batch)]

    def described(model, store, rows, batch_size, progress, desc):
        assert batch_size == batch
        yield from batches_of(np.asarray(rows))

    calls = []

    def gather(local, step, device, main_only):  # what the ranks' round-j batches gather to
        j = len(calls)
        calls.append(local.shape)
        parts = [(batches_of(b)[j] if j < len(batches_of(b)) else truth[:0]) for b in blocks]
        return np.concatenate(parts)

    monkeypatch.setattr(distributed, "world_size", lambda: ranks)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "init_process_group", lambda device: True)
    monkeypatch.setattr(distributed, "gather_rows", gather)
    monkeypatch.setattr(extract, "iter_descriptor_batches", described)
    model = torch.nn.Linear(1, 1)
    model.out_dim = 6  # as a DescriptorModel says (a rank with no batch at all sends (0, 6))
    writer = streamed_build.DescriptorWriter(tmp_path / "d.npy", count)
    streamed_build.fill_from_model(writer, model, None, count, batch)
    np.testing.assert_array_equal(writer.finish(), truth)
    assert len(calls) == max(-(-len(b) // batch) for b in blocks)
    assert all(shape[1] == 6 for shape in calls)  # an empty round still sends (0, D)


def test_map_build_stores_float16_and_an_hnsw_index(street, tmp_path) -> None:
    """`map build --dtype float16 --index hnsw`: the float32 build's descriptors, rounded."""
    import torch

    from softloc.localize import build_map
    from softloc.models import create_model, save_model

    torch.manual_seed(0)
    model_file = save_model(create_model("small_gem", image_size=(32, 24)),
                            tmp_path / "model.safetensors")
    reference = Map.open(build_map(model_file, street, tmp_path / "map32", progress=False))
    assert main(["-q", "map", "build", "--model", str(model_file), "--data", str(tmp_path),
                 "--out", str(tmp_path / "map16"), "--dtype", "float16", "--index", "hnsw",
                 "--hnsw-m", "8", "--ef-search", "40"]) == 0
    half = Map.open(tmp_path / "map16", verify=True)
    assert half.descriptors.dtype == np.float16 and half.index.kind == "hnsw"
    np.testing.assert_array_equal(half.descriptors,
                                  np.asarray(reference.descriptors).astype(np.float16))
    assert half.places.to_csv_text() == reference.places.to_csv_text()
