from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from softloc.cli import main
from softloc.data.places import read_places
from softloc.evaluation.protocol import evaluate_maps
from softloc.localize import build_map, localize_images, select_references
from softloc.localize_output import fix_text
from softloc.localizer import fixes_from_results
from softloc.mapping import Map, MapError
from softloc.models import create_model, save_model


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return save_model(create_model("small_gem", image_size=(32, 24)), tmp_path / "m.safetensors")


def test_reference_spacing(street) -> None:
    refs = select_references(street, "test", "reference", spacing=3.0)
    gaps = np.diff(refs.x)
    assert len(refs) > 5 and np.all(gaps >= 3.0) and np.all(gaps < 4.0)
    with pytest.raises(MapError, match="no images with split 'test' and traversal 'nope'"):
        select_references(street, "test", "nope")


def test_build_map_and_localize_a_reference_image(street, tmp_path: Path, model_file) -> None:
    map_dir = build_map(model_file, street, tmp_path / "map", progress=False)
    loaded = Map.load(map_dir, verify=True)
    assert len(loaded) == len(street.where(split="test", traversal="reference"))
    # a reference image must find itself first, at descriptor distance ~0
    ref = loaded.places
    images = [street.root / ref.path[i] for i in (0, 7)]
    results = localize_images(map_dir, images, k=3)
    fixes = fixes_from_results(results, loaded, k=3)
    for result, fix, i in zip(results, fixes, (0, 7), strict=True):
        assert (result.x, result.y) == pytest.approx((ref.x[i], ref.y[i]))
        assert result.distances[0] == pytest.approx(0.0, abs=1e-4)
        assert len(result.paths) == 3 and f"x={ref.x[i]:.2f}" in fix_text(fix)


def test_evaluate_writes_table_json_and_plot(street, tmp_path: Path, model_file) -> None:
    map_dir = build_map(model_file, street, tmp_path / "map", progress=False)
    table = evaluate_maps({"small": map_dir}, street, tmp_path / "eval", progress=False)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results["small"]) == ["night"]
    night = results["small"]["night"]
    assert night["num_queries"] == len(street.where(split="test", traversal="night"))
    # each night query lies 0.5 m beside a reference: the upper bound is 1 at 5 m
    assert night["upper_bound"]["5"] == 1.0
    assert "| small | night |" in table
    assert (tmp_path / "eval" / "curves.png").stat().st_size > 1000


def test_cli_map_localize_evaluate(street, tmp_path: Path, model_file, capsys) -> None:
    assert main(["-q", "map", "build", "--model", str(model_file), "--data", str(tmp_path),
                 "--out", str(tmp_path / "cli_map"), "--spacing", "2"]) == 0
    image = tmp_path / read_places(tmp_path).path[0]
    assert main(["-q", "localize", "--map", str(tmp_path / "cli_map"), "--top-k", "2",
                 str(image)]) == 0
    printed = capsys.readouterr().out
    assert "descriptor distance" in printed and "x=" in printed
    assert main(["-q", "evaluate", "--map", str(tmp_path / "cli_map"), "--data", str(tmp_path),
                 "--out", str(tmp_path / "cli_eval")]) == 0
    assert (tmp_path / "cli_eval" / "results.md").is_file()


def test_cli_errors_are_short_and_clear(tmp_path: Path, capsys) -> None:
    assert main(["-q", "localize", "--map", str(tmp_path / "none"), "x.png"]) == 2
    assert "no such map folder" in capsys.readouterr().err
    assert main(["-q", "train", "--out", str(tmp_path / "r"), "--set", "train.lr=-1"]) == 2
    assert "train.lr must be > 0" in capsys.readouterr().err


def test_cli_town_writes_a_readable_dataset(tmp_path: Path, capsys) -> None:
    out = tmp_path / "town"
    assert main(["-q", "town", "--out", str(out), "--size", "32x24", "--route-length", "1000",
                 "--seed", "4"]) == 0
    places = read_places(out, check_images=True)
    assert set(places.split) == {"train", "val", "test"}
    assert {"reference", "overcast", "sunny", "night", "snow"} <= set(places.traversals())
    assert f"wrote {len(places)} images" in capsys.readouterr().out
    assert main(["-q", "town", "--out", str(tmp_path / "bad"), "--size", "32by24"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
