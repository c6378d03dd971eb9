"""Whitening protocol, descriptor reuse and the three sweeps on the tiny street."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import softloc.evaluation.whitening as whitening_module
from softloc.cli import main
from softloc.evaluation.protocol import evaluate_map
from softloc.evaluation.whitening import (
    WhiteningLeakError,
    WhiteningProtocol,
    evaluation_sets,
)
from softloc.localize import build_map
from softloc.models import DescriptorModel, create_model, save_model
from softloc.sweeps.descriptors import sweep_descriptors
from softloc.sweeps.dimension import evaluate_at_dim, run_dimension_sweep
from softloc.sweeps.spacing import run_spacing_sweep


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return save_model(create_model("small_gem", image_size=(32, 24)), tmp_path / "m.safetensors")


@pytest.fixture
def forwarded(monkeypatch) -> list[int]:
    """Number of images of every DescriptorModel.forward call (the network runs)."""
    calls: list[int] = []
    original = DescriptorModel.forward

    def counting(self, x):
        calls.append(int(x.shape[0]))
        return original(self, x)

    monkeypatch.setattr(DescriptorModel, "forward", counting)
    return calls


def test_fit_set_never_holds_the_evaluated_queries(street) -> None:
    sets = evaluation_sets(street, "test")
    assert not np.intersect1d(sets.fit, sets.queries).size
    assert set(street.split[sets.fit]) == {"train"}
    assert set(street.traversal[sets.fit]) == {"reference", "night"}  # mixed conditions
    assert np.all(np.diff(street.timestamp[sets.references]) > 0)  # drive order
    # the map's references as fit set: allowed, and exactly the references
    refs_only = WhiteningProtocol(fit_split="test", fit_traversals=("reference",))
    sets = evaluation_sets(street, "test", protocol=refs_only)
    assert np.array_equal(np.sort(sets.fit), np.sort(sets.references))
    # the evaluated split with every traversal would include the queries
    with pytest.raises(WhiteningLeakError, match="holds 20 of the evaluated queries"):
        evaluation_sets(street, "test", protocol=WhiteningProtocol(fit_split="test"))
    with pytest.raises(ValueError, match="no images for the whitening fit"):
        evaluation_sets(street, "test", protocol=WhiteningProtocol(fit_split="nope"))
    # a capped fit set is a seeded subset
    capped = evaluation_sets(street, "test", protocol=WhiteningProtocol(max_fit_images=30))
    again = evaluation_sets(street, "test", protocol=WhiteningProtocol(max_fit_images=30))
    assert len(capped.fit) == 30 and np.array_equal(capped.fit, again.fit)


def test_whitening_is_fitted_on_the_fit_descriptors_only(
    street, tmp_path: Path, model_file, monkeypatch
) -> None:
    raw = sweep_descriptors(model_file, street, tmp_path / "s", progress=False)
    fitted: list[np.ndarray] = []
    original = whitening_module.fit_pca_whitening

    def recording(descriptors, dim, **kwargs):
        fitted.append(np.asarray(descriptors).copy())
        return original(descriptors, dim, **kwargs)

    monkeypatch.setattr(whitening_module, "fit_pca_whitening", recording)
    before = evaluate_at_dim(raw, street, 16)
    assert len(fitted) == 1 and np.array_equal(fitted[0], raw.fit)
    # no query descriptor is among the rows the whitening saw
    gaps = np.linalg.norm(raw.queries[:, None, :] - fitted[0][None, :, :], axis=2)
    assert gaps.min() > 1e-6
    # and the evaluation does not depend on the queries through the fit: scrambling the
    # queries' order scrambles nothing but their order
    order = np.random.default_rng(0).permutation(len(raw.queries))
    shuffled = type(raw)(
        sets=type(raw.sets)(raw.sets.fit, raw.sets.references, raw.sets.queries[order]),
        fit=raw.fit, references=raw.references, queries=raw.queries[order],
    )
    assert evaluate_at_dim(shuffled, street, 16)["night"]["top1"] == before["night"]["top1"]
    assert np.array_equal(fitted[1], fitted[0])


def test_raw_evaluation_matches_the_map_path(street, tmp_path: Path, model_file) -> None:
    # A model without whitening: the sweep's exact search must give the map's numbers.
    raw = sweep_descriptors(model_file, street, tmp_path / "s", progress=False)
    ours = evaluate_at_dim(raw, street, None)
    map_dir = build_map(model_file, street, tmp_path / "map", progress=False)
    theirs = evaluate_map(map_dir, street, progress=False)
    for key in ("top1", "top5", "upper_bound", "recall_at_25m", "auc", "median_error_m"):
        assert ours["night"][key] == pytest.approx(theirs["night"][key], abs=1e-9), key


def test_sweeps_compute_descriptors_once(street, tmp_path: Path, model_file, forwarded) -> None:
    out = tmp_path / "sweep"
    table = run_dimension_sweep(model_file, street, out, dims=[8, 16, 32, 256], progress=False)
    described = len(evaluation_sets(street, "test").all_rows())
    assert sum(forwarded) == described  # each image once, whatever the number of sizes
    rows = list(csv.DictReader((out / "sweep_dimension.csv").open()))
    assert [r["dim"] for r in rows] == ["8", "16", "32"]
    assert all(0.0 <= float(r["night"]) <= 1.0 for r in rows)
    document = json.loads((out / "sweep_dimension.json").read_text())
    assert "256" in document["skipped"] and document["config"]["raw_dim"] == 128
    assert document["results"]["16"]["night"]["top1"]["10"] == pytest.approx(
        float(rows[1]["night"])
    )
    assert (out / "sweep_dimension.png").stat().st_size > 1000
    assert table.splitlines()[0] == "| dim | night | mean |"

    forwarded.clear()
    run_spacing_sweep(model_file, street, out, spacings=[0, 2, 5],
                      protocol=WhiteningProtocol(dim=16), progress=False)
    assert forwarded == []  # reused the dimension sweep's descriptors
    spacing = json.loads((out / "sweep_spacing.json").read_text())
    counts = [row["references"] for row in spacing["rows"]]
    assert counts[0] == 20 and counts[0] > counts[1] > counts[2]
    # spacing 0 is the full reference set, as in the dimension sweep at the same size
    assert spacing["rows"][0]["night"] == pytest.approx(float(rows[1]["night"]))

    # other weights in the same file: the cache no longer matches
    save_model(create_model("small_gem", image_size=(32, 24), pooling_kwargs={"p": 2.0}),
               model_file)
    run_spacing_sweep(model_file, street, out, spacings=[0], progress=False)
    assert sum(forwarded) == described


def test_dimension_sweep_with_no_feasible_size_is_an_error(street, tmp_path, model_file) -> None:
    with pytest.raises(ValueError, match="no size in"):
        run_dimension_sweep(model_file, street, tmp_path / "s", dims=[4096], progress=False)


def test_cli_sweeps(street, tmp_path: Path, model_file, capsys) -> None:
    common = ["--data", str(tmp_path), "--out", str(tmp_path / "cli")]
    assert main(["-q", "sweep", "dimension", "--model", str(model_file), *common,
                 "--dims", "8", "16"]) == 0
    assert "| 16 |" in capsys.readouterr().out
    assert main(["-q", "sweep", "spacing", "--model", str(model_file), *common,
                 "--spacings", "0", "3", "--whitening-dim", "0"]) == 0
    assert (tmp_path / "cli" / "sweep_spacing.png").is_file()
    assert main(["-q", "sweep", "sensitivity", *common, "--tuple-sizes", "2"]) == 2
    assert "NEAR/FAR" in capsys.readouterr().err
    assert main(["-q", "sweep", "spacing", "--model", str(tmp_path / "none.safetensors"),
                 *common]) == 2
    assert "no such model file" in capsys.readouterr().err
