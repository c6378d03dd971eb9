"""The Python API (softloc.Map, softloc.Localizer) and `softloc localize` output formats."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import softloc
from softloc.cli import main
from softloc.localize import build_map
from softloc.localize_output import read_sequence_csv
from softloc.localizer import estimate_position
from softloc.models import create_model, save_model


@pytest.fixture
def street_map(street, tmp_path: Path) -> Path:
    model = save_model(create_model("small_gem", image_size=(32, 24)), tmp_path / "m.safetensors")
    return build_map(model, street, tmp_path / "map", progress=False)


def test_api_localizes_paths_arrays_and_pil_images_alike(street, street_map: Path) -> None:
    the_map = softloc.Map.open(street_map)
    localizer = softloc.Localizer(the_map, k=3)
    path = street.root / the_map.places.path[4]
    array = np.asarray(Image.open(path).convert("RGB"))
    by_path, by_array, by_pil = localizer.localize([path, array, Image.open(path)])
    assert (by_path.x, by_path.y) == (float(the_map.places.x[4]), float(the_map.places.y[4]))
    assert by_path.top_k[0].path == str(the_map.places.path[4])
    assert by_path.top_k[0].distance == pytest.approx(0.0, abs=1e-4)
    for other in (by_array, by_pil):  # the same pixels: the same fix (float rounding aside)
        assert (other.x, other.y) == (by_path.x, by_path.y)
        assert other.confidence == pytest.approx(by_path.confidence, abs=1e-5)
    assert by_array.image == "<array 1>" and 0.0 <= by_path.confidence <= 1.0
    with pytest.raises(softloc.localizer.ImageError, match="uint8"):
        localizer.localize([array.astype(np.float32)])


def test_readme_api_example_runs(street, street_map: Path, tmp_path: Path, monkeypatch) -> None:
    """The README's example, with its paths pointed at this test's map and images."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(import softloc\n.*?)```", readme, re.S)
    assert block, "README has no ```python block starting with `import softloc`"
    code = block.group(1)
    for name in ("q1.png", "q2.png"):
        Image.open(street.root / street.path[0]).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    code = code.replace("runs/demo/maps/soft_contrastive", str(street_map))
    printed = io.StringIO()
    exec(compile(code, "README.md", "exec"), {"print": lambda *a: printed.write(f"{a}\n")})
    assert printed.getvalue().count("\n") == 2


def test_json_and_csv_say_what_the_text_says(street, street_map: Path, tmp_path: Path,
                                              capsys) -> None:
    images = [str(street.root / street.path[i]) for i in (0, 9)]
    outputs = {}
    for fmt in ("text", "json", "csv"):
        assert main(["-q", "localize", "--map", str(street_map), "--top-k", "3",
                     "--format", fmt, *images]) == 0
        outputs[fmt] = capsys.readouterr().out
    fixes = json.loads(outputs["json"])
    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    heads = [line for line in outputs["text"].splitlines() if not line.startswith(" ")]
    assert len(fixes) == len(rows) == len(heads) == 2
    for fix, row, head in zip(fixes, rows, heads, strict=True):
        assert set(fix) >= {"image", "x", "y", "yaw", "confidence", "top_k"}
        assert len(fix["top_k"]) == 3 and set(fix["top_k"][0]) == {"path", "x", "y", "distance"}
        assert row["image"] == fix["image"] and head.startswith(fix["image"])
        assert float(row["x"]) == fix["x"] and float(row["confidence"]) == fix["confidence"]
        assert row["top1_path"] == fix["top_k"][0]["path"]
        assert f"x={fix['x']:.2f}" in head and f"confidence={fix['confidence']:.3f}" in head


def test_out_file_is_never_replaced_unasked(street, street_map: Path, tmp_path: Path,
                                             capsys) -> None:
    out = tmp_path / "fixes.json"
    out.write_text("mine")
    image = str(street.root / street.path[0])
    assert main(["-q", "localize", "--map", str(street_map), "--format", "json",
                 "--out", str(out), image]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "mine"
    assert main(["-q", "localize", "--map", str(street_map), "--format", "json",
                 "--out", str(out), "--overwrite", image]) == 0
    assert json.loads(out.read_text())[0]["image"] == image


def test_a_bad_image_is_an_error_entry_and_exit_1(street, street_map: Path, tmp_path: Path,
                                                   capsys) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    good = str(street.root / street.path[0])
    assert main(["-q", "localize", "--map", str(street_map), "--format", "json",
                 good, str(bad)]) == 1
    fixes = json.loads(capsys.readouterr().out)
    assert fixes[0]["x"] is not None
    assert fixes[1]["x"] is None and "broken.png" in fixes[1]["error"]


def test_sequence_csv_orders_by_time_and_localizes(street, street_map: Path, tmp_path: Path,
                                                    capsys) -> None:
    night = street.where(split="test", traversal="night")
    listing = tmp_path / "drive.csv"
    rows = [(str(night.image_path(i)), f"2020-05-01T10:00:{i:02d}") for i in range(6)][::-1]
    listing.write_text("image,timestamp\n" + "".join(f"{p},{t}\n" for p, t in rows))
    images, stamps = read_sequence_csv(listing)
    assert [str(p) for p in images] == [str(night.image_path(i)) for i in range(6)]
    assert np.all(np.diff(stamps) == 1.0)
    assert main(["-q", "localize", "--map", str(street_map), "--format", "json",
                 "--sequence-csv", str(listing)]) == 0
    fixes = json.loads(capsys.readouterr().out)
    assert [f["image"] for f in fixes] == [str(p) for p in images]
    bad = tmp_path / "bad.csv"
    bad.write_text("image,timestamp\na.png,yesterday\n")
    assert main(["-q", "localize", "--map", str(street_map), "--sequence-csv", str(bad)]) == 2
    assert "bad.csv line 2" in capsys.readouterr().err


def test_weighted_estimate_by_hand() -> None:
    positions = np.array([[0.0, 0.0], [10.0, 0.0], [100.0, 0.0]])
    distances = np.array([0.0, 1.0, 0.0])  # similarities 1, 0.5, 1 (the last is too far)
    assert estimate_position(positions, distances, "weighted") == pytest.approx((10 / 3, 0.0))
    assert estimate_position(positions, distances, "top1") == (0.0, 0.0)


def test_api_train_and_evaluate_entry_points(street, tmp_path: Path) -> None:
    from tests.tiny_run import SMALL

    model = softloc.train_model(None, tmp_path / "run", progress=False,
                          overrides=[f"data.root={street.root}", *SMALL, "train.steps=2"])
    assert model.is_file()
    map_dir = build_map(model, street, tmp_path / "m", progress=False)
    table = softloc.evaluate([map_dir], street.root, tmp_path / "eval", progress=False)
    assert "| m | night |" in table
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["m"]["night"]
