"""`softloc report`: tables read generically, every referenced file present, a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softloc.cli import main
from softloc.localize import build_map
from softloc.models import create_model, save_model
from softloc.report import build_report
from softloc.report.collect import ReportInputError
from softloc.report.tables import format_value, tables_from_results

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _metrics(top1: float, extra: dict | None = None) -> dict:
    return {"num_queries": 10, "top1": {"5": top1, "10": 0.9}, "upper_bound": {"5": 1.0},
            "curves": {"thresholds": [0.0, 5.0], "top1": [0.0, top1]}, **(extra or {})}


def test_tables_show_whatever_scalar_keys_exist() -> None:
    results = {
        "soft": {"night": _metrics(0.5, {"auc": 0.7, "median_error_m": 3.25,
                                         "recall_at_25m": {"1": 0.6, "5": 0.8}})},
        "triplet": {"night": _metrics(0.25, {"auc": 0.6, "median_error_m": 8.0,
                                             "recall_at_25m": {"1": 0.6, "5": 0.7}})},
    }
    tables = {t.name: t for t in tables_from_results(results)}
    # one table per metric in reading order, the upper bound and the counts last
    assert list(tables) == ["top1", "recall_at_25m", "auc", "median_error_m", "upper_bound",
                            "counts"]
    assert tables["auc"].columns == [("night", "auc")]
    assert tables["auc"].rows["soft"] == [0.7]
    assert tables["counts"].columns == [("night", "num_queries")]
    # best: the highest share, the lowest error; counts and the upper bound are not compared
    assert tables["auc"].best_rows() == [{"soft"}]
    assert tables["median_error_m"].best_rows() == [{"soft"}]
    assert tables["counts"].best_rows() == [set()]
    assert tables["recall_at_25m"].best_rows() == [{"soft", "triplet"}, {"soft"}]
    assert tables["upper_bound"].best_rows() == [set()]
    assert tables["top1"].csv_text().splitlines() == [
        "model,night/5,night/10", "soft,0.5,0.9", "triplet,0.25,0.9"]
    assert [format_value(v, s) for v, s in ((0.257, True), (10.0, False), (3.25, False),
                                            (None, True))] == ["25.7", "10", "3.250", "-"]
    with pytest.raises(ValueError, match="empty"):
        tables_from_results({})


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _referenced(html: str) -> list[str]:
    refs = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    assert refs, "the page references no file"
    return refs


@pytest.fixture
def report_inputs(street, tmp_path: Path) -> dict:
    run = tmp_path / "runs" / "gem"
    save_model(create_model("small_gem", image_size=(32, 24)), run / "model.safetensors")
    raw = save_model(create_model("raw_pixels", image_size=(32, 24)),
                     tmp_path / "raw.safetensors")
    raw_map = build_map(raw, street, tmp_path / "maps" / "raw_pixels", progress=False)
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "sweep_lr.csv").write_text("lr,top1_10m\n0.001,0.5\n0.0003,0.6\n")
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(sweeps / "sweep_lr.png")
    return {"places": street, "run": run, "raw_map": raw_map, "sweeps": sweeps}


def test_report_writes_every_file_it_references(report_inputs, tmp_path: Path) -> None:
    inputs = report_inputs
    out = tmp_path / "report"
    index = build_report([inputs["run"], inputs["raw_map"]], inputs["places"], out,
                         sweep_dirs=[inputs["sweeps"]], tsne_points=30, gradcam_count=2,
                         failure_count=3, progress=False)
    assert index == out / "index.html"
    html = index.read_text()
    for ref in _referenced(html):
        assert (out / ref).is_file(), ref
    summary = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["gem", "raw_pixels"]
    assert summary["models"][0]["map_built_by_report"] is True
    for name in summary["files"]:
        assert (out / name).is_file(), name
        assert name in html or name.endswith((".md", ".json")), name
    results = json.loads((out / "results.json").read_text())
    assert sorted(results) == ["gem", "raw_pixels"] and list(results["gem"]) == ["night"]
    # every table of the page has its CSV; the sweep table is on the page
    assert (out / "tables" / "top1.csv").read_text().startswith("model,night/5,")
    assert "0.0003" in html and "sweeps/sweep_lr.png" in html
    # Grad-CAM: one row per model per query, raw pixels explained as having no conv layer
    gradcam = (out / "gradcam" / "gradcam.csv").read_text().splitlines()
    assert len(gradcam) == 1 + 2 * 2 and "no convolutional layer" in gradcam[-1]
    with Image.open(out / "gradcam" / "query_1.png") as image:
        assert image.size[0] > 500 and image.size[1] > 150
    # the movie plays in the page, and the confidence curve is shown
    assert '<video controls' in html and 'src="movie.mp4"' in html
    assert (out / "movie.mp4").stat().st_size > 1000 and "precision_coverage.png" in html
    assert 0.0 <= results["gem"]["night"]["coverage_p95_10m"] <= 1.0
    # a second report reuses the map built for the training run
    stamp = (out / "maps" / "gem" / "manifest.json").stat().st_mtime_ns
    build_report([inputs["run"]], inputs["places"], out, tsne_points=30, gradcam_count=1,
                 failure_count=1, progress=False)
    assert (out / "maps" / "gem" / "manifest.json").stat().st_mtime_ns == stamp

    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser found (tried {', '.join(BROWSERS)}); "
                    "install one: apt-get install -y chromium")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1200,6000", index.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (6000, 1200)
    # not blank: dark text and coloured figures on a white page (the window is tall enough to
    # reach the Grad-CAM panels and failure galleries, whose town images are coloured)
    assert pixels.std() > 20
    assert (pixels.mean(axis=2) < 100).mean() > 0.002
    assert (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean() > 0.01


def test_report_rejects_what_it_cannot_read(street, tmp_path: Path, capsys) -> None:
    with pytest.raises(ReportInputError, match="not a map folder"):
        build_report([tmp_path / "images"], street, tmp_path / "r", progress=False)
    with pytest.raises(ReportInputError, match="at least one RUN_DIR"):
        build_report([], street, tmp_path / "r", progress=False)
    assert main(["-q", "report", str(tmp_path / "nothing"), "--data", str(tmp_path),
                 "--out", str(tmp_path / "r")]) == 2
    assert "not a map folder" in capsys.readouterr().err
    assert not (tmp_path / "r" / "index.html").exists()


def test_run_dirs_resolve_to_named_maps(street, tmp_path: Path) -> None:
    from softloc.report.collect import find_sweeps, resolve_runs

    def fake_map(folder: Path) -> Path:
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text("{}")
        return folder

    demo = tmp_path / "demo"
    for name in ("soft", "triplet"):
        fake_map(demo / "maps" / name)
    (demo / "maps" / "half_built").mkdir()  # no manifest: not a map, left out
    other = fake_map(tmp_path / "elsewhere" / "soft")
    runs = resolve_runs([demo, other], street, tmp_path / "out", progress=False)
    assert [r.name for r in runs] == ["maps-soft", "triplet", "elsewhere-soft"]
    assert [r.source for r in runs] == [demo, demo, other]
    assert not any(r.built for r in runs)
    (demo / "sweep_loss.csv").write_text("a\n1\n")
    (demo / "sweep_loss.txt").write_text("not a sweep output")
    assert find_sweeps([demo]) == {"loss": {".csv": demo / "sweep_loss.csv"}}
    with pytest.raises(ReportInputError, match="no such sweep folder"):
        find_sweeps([tmp_path / "missing"])


def test_report_tables_equal_the_evaluation_protocol(report_inputs, tmp_path: Path) -> None:
    # the report describes each model's queries once, for the pictures and the tables; the
    # numbers must be exactly what `softloc evaluate` (evaluate_map) gives on the same map
    from softloc.evaluation.protocol import evaluate_map

    inputs = report_inputs
    out = tmp_path / "report"
    build_report([inputs["run"], inputs["raw_map"]], inputs["places"], out, tsne_points=30,
                 gradcam_count=1, failure_count=1, progress=False)
    reported = json.loads((out / "results.json").read_text())
    for name, map_dir in (("gem", out / "maps" / "gem"), ("raw_pixels", inputs["raw_map"])):
        expected = json.loads(json.dumps(evaluate_map(map_dir, inputs["places"], progress=False)))
        assert reported[name] == expected
