"""`softloc explain`: failures, Grad-CAM panels, t-SNE and the movie on a tiny street."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softloc.cli import main
from softloc.explain.failures import worst_failures
from softloc.explain.movie import drive_frames, movie_format
from softloc.explain.queries import retrieve, select_queries
from softloc.localize import build_map
from softloc.mapping import Map
from softloc.models import create_model, save_model


@pytest.fixture
def maps(street, tmp_path: Path) -> list[Path]:
    out = []
    for name in ("small_gem", "raw_pixels"):
        path = tmp_path / "models" / name / "model.safetensors"
        model = save_model(create_model(name, image_size=(32, 24)), path)
        out.append(build_map(model, street, tmp_path / "maps" / name, progress=False))
    return out


def test_worst_failures_are_the_largest_top1_errors(street, maps) -> None:
    retrieval = retrieve(maps[0], street)
    failures = worst_failures(retrieval, count=4)
    refs = retrieval.the_map.places.xy
    # independent: the error of every query from the map's own search, sorted by hand
    _, top1 = Map.load(maps[0]).search(retrieval.descriptors, 1)
    errors = np.linalg.norm(refs[top1[:, 0]] - retrieval.queries.xy, axis=1)
    assert [f.error_m for f in failures] == pytest.approx(sorted(errors, reverse=True)[:4])
    for f in failures:
        # the true nearest reference: no reference is closer to the query
        distances = np.linalg.norm(refs - retrieval.queries.xy[f.query], axis=1)
        assert f.nearest_m == pytest.approx(distances.min())
        assert distances[f.nearest] == pytest.approx(distances.min())
        assert f.error_m >= f.nearest_m
    with pytest.raises(ValueError, match="count must be"):
        worst_failures(retrieval, count=0)


def test_select_queries_by_condition(street, maps) -> None:
    the_map = Map.load(maps[0])
    night = select_queries(street, the_map, condition="night")
    assert len(night) == len(street.where(split="test", traversal="night"))
    assert np.all(np.diff(night.timestamp) > 0)
    with pytest.raises(ValueError, match=r"conditions there: \['night'\]"):
        select_queries(street, the_map, condition="snow")


def test_cli_pictures(street, maps, tmp_path: Path, capsys) -> None:
    args = ["--map", *map(str, maps), "--data", str(tmp_path), "--out", str(tmp_path / "pics")]
    assert main(["-q", "explain", "gradcam", *args, "--query-index", "3"]) == 0
    printed = capsys.readouterr().out
    assert "small_gem: retrieved" in printed and "no convolutional layer" in printed
    with Image.open(tmp_path / "pics" / "gradcam_3.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 700  # two rows of five panels
    assert main(["-q", "explain", "failures", *args, "--count", "2"]) == 0
    for name in ("failures_small_gem.png", "failures_raw_pixels.png", "failures.csv"):
        assert (tmp_path / "pics" / name).is_file(), name
    assert len((tmp_path / "pics" / "failures.csv").read_text().splitlines()) == 1 + 2 * 2
    assert main(["-q", "explain", "tsne", *args, "--max-points", "12"]) == 0
    rows = (tmp_path / "pics" / "tsne.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 12 and rows[0].startswith("model,path,condition,x,y")
    assert main(["-q", "explain", "gradcam", *args, "--query-index", "999"]) == 2
    assert "outside the" in capsys.readouterr().err
    assert main(["-q", "explain", "tsne", *args, "--condition", "snow"]) == 2


def test_movie_frames(street, maps, tmp_path: Path) -> None:
    queries = retrieve(maps[0], street).queries
    frames = drive_frames(queries, None, max_frames=4)
    assert len(frames) == 4 and np.all(np.diff(queries.timestamp[frames]) > 0)
    with pytest.raises(ValueError, match="query traversals"):
        drive_frames(queries, "nope", 4)
    assert main(["-q", "explain", "movie", "--map", *map(str, maps), "--data", str(tmp_path),
                 "--out", str(tmp_path / "movie"), "--max-frames", "3"]) == 0
    kind = movie_format()
    assert kind == "mp4"  # imageio-ffmpeg ships the binary: mp4 on every machine
    movie = tmp_path / "movie" / f"movie.{kind}"
    assert movie.is_file() and sorted(p.name for p in movie.parent.iterdir()) == [movie.name]
    if kind == "mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(movie))
        meta = reader.__next__()
        decoded = [np.frombuffer(f, np.uint8).reshape(meta["size"][1], meta["size"][0], 3)
                   for f in reader]
        assert meta["codec"].startswith("h264") and "yuv420p" in meta["pix_fmt"]
        assert len(decoded) == 3 and all(f.shape == decoded[0].shape for f in decoded)
        assert np.abs(decoded[0].astype(np.int16) - decoded[1]).mean() > 1
    if kind == "gif":
        with Image.open(movie) as image:
            assert image.n_frames == 3
            sizes, firsts = set(), []
            for n in range(image.n_frames):
                image.seek(n)
                sizes.add(image.size)
                firsts.append(np.asarray(image.convert("RGB"), dtype=np.int16))
        assert len(sizes) == 1  # every frame the same size
        assert np.abs(firsts[0] - firsts[1]).mean() > 1  # and they show different queries

