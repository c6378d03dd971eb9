"""Results dicts, Markdown tables and curve plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from softloc.evaluation.report import (
    curves_from_results,
    evaluate_retrieval,
    format_table,
    plot_curves,
    threshold_key,
)

REFS = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])
QUERIES = np.array([[0.0, 3.0], [10.0, 0.0], [100.0, 100.0]])
# Same layout as test_metrics.test_topn_accuracy_by_hand.
RETRIEVED = np.array([[1, 0, 2, 3, 3], [3, 2, 1, 0, 0], [0, 1, 2, 3, 3]])


def test_evaluate_retrieval_by_hand_and_json_round_trip() -> None:
    result = evaluate_retrieval(QUERIES, REFS, RETRIEVED)
    third = 1 / 3
    # top-1 distances: 10.44, 20, >100 m; top-5 best: 3, 0, >100 m.
    assert result["top1"] == pytest.approx({"5": 0, "10": 0, "15": third, "25": 2 * third})
    assert result["top5"] == pytest.approx({k: 2 * third for k in ("5", "10", "15", "25")})
    # nearest references: 3, 0, > 100 m
    assert result["upper_bound"] == pytest.approx({k: 2 * third for k in ("5", "10", "15", "25")})
    assert result["num_queries"] == 3 and result["num_references"] == 4
    curves = result["curves"]
    assert len(curves["thresholds"]) == len(curves["top1"]) == len(curves["upper_bound"]) == 51
    assert curves["top5"][0] == pytest.approx(third)  # q1 found at exactly 0 m
    assert json.loads(json.dumps(result)) == result


def test_evaluate_retrieval_leaves_out_top_n_beyond_k() -> None:
    result = evaluate_retrieval(QUERIES, REFS, RETRIEVED[:, :2])
    assert "top1" in result and "top5" not in result and "top5" not in result["curves"]


def test_threshold_key() -> None:
    assert [threshold_key(t) for t in (5, 10.0, 7.5, 0.25)] == ["5", "10", "7.5", "0.25"]


def _metrics(top1: float, top5: float, bound: float) -> dict:
    keys = ("5", "10", "15", "25")
    return {
        "top1": {k: top1 + 0.01 * i for i, k in enumerate(keys)},
        "top5": {k: top5 for k in keys},
        "upper_bound": {k: bound for k in keys},
    }


def test_format_table_model_by_condition() -> None:
    results = {
        "soft": {"night": _metrics(0.5, 0.75, 0.987), "snow": _metrics(0.2, 0.3, 1.0)},
        "triplet": {"night": _metrics(0.1234, 0.2, 0.987)},
    }
    lines = format_table(results).strip().splitlines()
    assert lines[0].split("|")[1:4] == [" model ", " condition ", " top-1 @5 m "]
    assert lines[0].count("@") == 12 and lines[1].count("---:") == 12
    assert len(lines) == 2 + 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    # top-1 at 5/10/15/25 m = 50, 51, 52, 53 %; top-5 75 %; upper bound 98.7 %
    assert cells == ["soft", "night", "50.0", "51.0", "52.0", "53.0"] + ["75.0"] * 4 + [
        "98.7"
    ] * 4
    assert lines[4].split("|")[3].strip() == "12.3"  # 0.1234 -> one decimal


def test_format_table_conditions_only_and_missing_values() -> None:
    metrics = _metrics(0.5, 0.75, 1.0)
    del metrics["top5"]
    table = format_table({"night": metrics}, thresholds=[10, 25], include_upper_bound=False)
    lines = table.strip().splitlines()
    assert lines[0] == "| condition | top-1 @10 m | top-1 @25 m | top-5 @10 m | top-5 @25 m |"
    assert lines[2] == "| night | 51.0 | 53.0 | - | - |"


def test_format_table_rejects_malformed_results() -> None:
    with pytest.raises(ValueError, match="empty"):
        format_table({})
    with pytest.raises(ValueError, match="evaluate_retrieval"):
        format_table({"night": {"top1": 0.5}})
    with pytest.raises(ValueError, match="one layout"):
        format_table({"night": _metrics(0.1, 0.2, 0.3), "soft": {"day": _metrics(0.1, 0.2, 0.3)}})


def test_plot_curves_writes_a_non_blank_png(tmp_path) -> None:
    results = {
        "soft": {
            "night": evaluate_retrieval(QUERIES, REFS, RETRIEVED),
            "snow": evaluate_retrieval(QUERIES, REFS, RETRIEVED[:, ::-1]),
        },
        "triplet": {"night": evaluate_retrieval(QUERIES, REFS, RETRIEVED[:, 2:])},
    }
    curves, upper = curves_from_results(results)
    assert set(curves) == {"night", "snow"} and set(curves["night"]) == {"soft", "triplet"}
    path = plot_curves(curves, upper, tmp_path / "curves.png", title="top-1")
    assert path == tmp_path / "curves.png"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temp file left behind
    image = imread(path)
    assert image.shape[:2] == (340, 800)  # two panels of 4.0 x 3.4 in at 100 dpi
    assert image[..., :3].std() > 0.05  # not a blank canvas
    # Some pixels are neither white nor grey (the coloured model curves were drawn).
    rgb = image[..., :3]
    assert np.any(rgb.max(axis=2) - rgb.min(axis=2) > 0.3)


def test_plot_curves_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="curves is empty"):
        plot_curves({}, {}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="equal-length"):
        plot_curves({"night": {"soft": ([0, 1], [0.5])}}, {}, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
    two_neighbours = evaluate_retrieval(QUERIES, REFS, RETRIEVED[:, :2])
    with pytest.raises(ValueError, match="top-5 curve"):
        curves_from_results({"soft": {"night": two_neighbours}}, n=5)
