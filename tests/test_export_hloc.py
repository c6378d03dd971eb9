"""`softloc export hloc|pairs`, read back the way hloc reads its files."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import softloc
from softloc.cli import main
from softloc.export.hloc import HlocError, read_global_features, write_global_features
from softloc.localize import build_map
from softloc.models import create_model, save_model


def hloc_list_h5_names(path: Path) -> list[str]:
    """As hloc.utils.io.list_h5_names: the parent group of every dataset."""
    names = []
    with h5py.File(str(path), "r") as fd:
        def visit_fn(_, obj):
            if isinstance(obj, h5py.Dataset):
                names.append(obj.parent.name.strip("/"))
        fd.visititems(visit_fn)
    return list(set(names))


def hloc_get_descriptors(path: Path, names: list[str]) -> np.ndarray:
    """As hloc.pairs_from_retrieval.get_descriptors (without torch)."""
    with h5py.File(str(path), "r") as fd:
        return np.stack([fd[n]["global_descriptor"].__array__() for n in names]).astype(
            np.float32)


@pytest.fixture
def street_map(street, tmp_path: Path) -> Path:
    model = save_model(create_model("small_gem", image_size=(32, 24)), tmp_path / "m.safetensors")
    return build_map(model, street, tmp_path / "map", progress=False)


@pytest.fixture
def query_dir(street, tmp_path: Path) -> Path:
    """Night images in two sub-folders, as hloc names them (``seq1/00012.png``)."""
    night = np.flatnonzero((street.traversal == "night") & (street.split == "test"))
    for i, row in enumerate(night[:6]):
        target = tmp_path / "queries" / f"seq{1 + i % 2}" / Path(street.path[row]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(street.root / street.path[row], target)
    return tmp_path / "queries"


def test_features_file_reads_back_as_hloc_reads_it(street_map: Path, query_dir: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    assert main(["-q", "export", "hloc", "--map", str(street_map), "--queries", str(query_dir),
                 "--out", str(out)]) == 0
    the_map = softloc.Map.open(street_map)
    refs = [str(p) for p in the_map.places.path]
    queries = sorted(p.relative_to(query_dir).as_posix() for p in query_dir.rglob("*.png"))
    names = hloc_list_h5_names(out)
    assert sorted(names) == sorted(refs + queries)
    assert all("/" in n for n in queries)
    with h5py.File(out, "r") as fd:  # sub-folders are nested groups
        first = refs[0].split("/")
        assert isinstance(fd[first[0]][first[1]], h5py.Group)
        assert fd[refs[0]]["global_descriptor"].dtype == np.float32
    np.testing.assert_array_equal(hloc_get_descriptors(out, refs),
                                  np.asarray(the_map.descriptors, dtype=np.float32))
    described = softloc.Localizer(the_map).describe([query_dir / q for q in queries])
    np.testing.assert_allclose(hloc_get_descriptors(out, queries), described, atol=1e-6)
    assert read_global_features(out, refs)[1].shape == (len(refs), the_map.dim)


def test_as_half_stores_float16(street_map: Path, tmp_path: Path) -> None:
    out = tmp_path / "half.h5"
    assert main(["-q", "export", "hloc", "--map", str(street_map), "--as-half",
                 "--out", str(out)]) == 0
    the_map = softloc.Map.open(street_map)
    with h5py.File(out, "r") as fd:
        stored = fd[str(the_map.places.path[0])]["global_descriptor"]
        assert stored.dtype == np.float16
        np.testing.assert_array_equal(stored[()], the_map.descriptors[0].astype(np.float16))


def test_pairs_are_the_top_k_by_inner_product(street_map: Path, query_dir: Path,
                                              tmp_path: Path) -> None:
    """hloc's pairs_from_retrieval: sim = q @ db.T, the num_matched best per query."""
    feats, pairs = tmp_path / "feats.h5", tmp_path / "pairs.txt"
    assert main(["-q", "export", "hloc", "--map", str(street_map), "--queries", str(query_dir),
                 "--out", str(feats)]) == 0
    assert main(["-q", "export", "pairs", "--map", str(street_map), "--queries", str(query_dir),
                 "--num-matched", "4", "--out", str(pairs)]) == 0
    the_map = softloc.Map.open(street_map)
    refs = [str(p) for p in the_map.places.path]
    queries = sorted(p.relative_to(query_dir).as_posix() for p in query_dir.rglob("*.png"))
    sim = hloc_get_descriptors(feats, queries) @ hloc_get_descriptors(feats, refs).T
    expected = [f"{q} {refs[j]}" for q, row in zip(queries, sim, strict=True)
                for j in np.argsort(-row, kind="stable")[:4]]
    assert pairs.read_text().splitlines() == expected


def test_a_list_file_names_queries_as_written(street, street_map: Path, query_dir: Path,
                                              tmp_path: Path) -> None:
    listing = query_dir / "list.txt"
    listing.write_text("# night drive\nseq2/" + next((query_dir / "seq2").iterdir()).name
                       + "\n\n")
    pairs = tmp_path / "pairs.txt"
    assert main(["-q", "export", "pairs", "--map", str(street_map), "--queries", str(listing),
                 "--num-matched", "2", "--out", str(pairs)]) == 0
    lines = pairs.read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("seq2/") for line in lines)


def test_bad_arguments_exit_2_and_keep_what_exists(street_map: Path, tmp_path: Path,
                                                   capsys) -> None:
    out = tmp_path / "feats.h5"
    out.write_text("precious")
    assert main(["-q", "export", "hloc", "--map", str(street_map), "--out", str(out)]) == 2
    assert out.read_text() == "precious" and "--overwrite" in capsys.readouterr().err
    assert main(["-q", "export", "pairs", "--map", str(street_map), "--queries",
                 str(tmp_path / "none"), "--out", str(tmp_path / "p.txt")]) == 2
    assert "no such folder or list file" in capsys.readouterr().err
    assert not (tmp_path / "p.txt").exists()


def test_names_that_cannot_be_group_paths_are_refused(tmp_path: Path) -> None:
    rows = np.eye(2, dtype=np.float32)
    for names, match in ((["a.png", "a.png"], "twice"), (["../a.png", "b"], "'..'"),
                         (["a", "a/b.png"], "folder")):
        with pytest.raises(HlocError, match=match):
            write_global_features(tmp_path / "f.h5", names, rows)
    assert not (tmp_path / "f.h5").exists()
    (tmp_path / "not.h5").write_text("text")
    with pytest.raises(HlocError, match="HDF5"):
        read_global_features(tmp_path / "not.h5")


def write_like_hloc(path: Path, names: list[str], descriptors: np.ndarray) -> None:
    """As hloc.extract_features writes global features with as_half: fp16, nested groups."""
    with h5py.File(str(path), "a", libver="latest") as fd:
        for name, row in zip(names, descriptors, strict=True):
            grp = fd.create_group(name)
            grp.create_dataset("global_descriptor", data=row.astype(np.float16))


def test_map_import_builds_a_map_from_another_extractors_file(street, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [str(p) for p in street.path]
    raw = rng.normal(size=(len(names), 16)).astype(np.float32)
    feats = tmp_path / "global-feats-netvlad.h5"
    write_like_hloc(feats, names, raw * 3.0)  # not unit length: the import normalises
    out = tmp_path / "imported"
    assert main(["-q", "map", "import", "--hloc", str(feats), "--places",
                 str(street.root / "places.csv"), "--out", str(out)]) == 0
    the_map = softloc.Map.open(out)
    stored = (raw * 3.0).astype(np.float16).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    assert len(the_map) == len(names) and the_map.dim == 16
    np.testing.assert_allclose(the_map.descriptors, stored, atol=1e-6)
    assert [str(p) for p in the_map.places.path] == names
    _, rows = the_map.search(stored[[7, 30]], 1)
    assert rows[:, 0].tolist() == [7, 30]


def test_map_import_refuses_places_without_descriptors(street, tmp_path: Path, capsys) -> None:
    names = [str(p) for p in street.path]
    feats = tmp_path / "feats.h5"
    write_like_hloc(feats, names[:-2], np.ones((len(names) - 2, 4), dtype=np.float32))
    out = tmp_path / "imported"
    assert main(["-q", "map", "import", "--hloc", str(feats), "--places",
                 str(street.root / "places.csv"), "--out", str(out)]) == 2
    assert "2 of the" in capsys.readouterr().err and not out.exists()
