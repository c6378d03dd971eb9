"""AUC, recall@N and error percentiles against hand-worked values and brute force."""

from __future__ import annotations

import numpy as np
import pytest

from softloc.evaluation.metrics import (
    accuracy_curve,
    area_under_curve,
    error_percentiles,
    recall_at_n,
)
from softloc.evaluation.protocol import order_ties
from softloc.evaluation.report import evaluate_retrieval, format_summary_table
from softloc.index import DescriptorIndex

REFS = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])


def test_auc_of_a_known_step_curve() -> None:
    # Errors 0, 5, 20 and 40 m: the curve is 1/4 on [0, 5), 2/4 on [5, 20), 3/4 on [20, 25].
    # Area = 0.25 * 5 + 0.5 * 15 + 0.75 * 5 = 12.5; / 25 m = 0.5.
    assert area_under_curve(np.array([0.0, 5.0, 20.0, 40.0])) == pytest.approx(0.5)
    # Every query exact: the curve is 1 everywhere; none within 25 m: 0.
    assert area_under_curve(np.zeros(3)) == 1.0
    assert area_under_curve(np.array([25.0, 30.0, 1e6])) == 0.0
    # Other range: errors 1 and 3 m on [0, 2]: curve 0 on [0, 1), 1/2 on [1, 2]: area 0.5 / 2.
    assert area_under_curve(np.array([1.0, 3.0]), max_m=2.0) == pytest.approx(0.25)


def test_auc_matches_a_fine_riemann_sum_of_the_curve() -> None:
    rng = np.random.default_rng(3)
    queries = rng.uniform(0, 40, (50, 2))
    retrieved = rng.integers(0, 4, (50, 1))
    errors = np.linalg.norm(REFS[retrieved[:, 0]] - queries, axis=1)
    thresholds, curve = accuracy_curve(queries, REFS, retrieved, max_m=25.0, step_m=0.001)
    riemann = curve[:-1].sum() * 0.001 / 25.0  # left sum of a non-decreasing step function
    assert area_under_curve(errors) == pytest.approx(riemann, abs=2e-3)


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        area_under_curve(np.zeros(0))
    with pytest.raises(ValueError, match="finite"):
        area_under_curve(np.array([np.nan]))
    with pytest.raises(ValueError, match="max_m"):
        area_under_curve(np.ones(2), max_m=0.0)


def test_recall_at_n_against_a_brute_force_loop() -> None:
    rng = np.random.default_rng(0)
    refs = rng.uniform(0, 200, (60, 2))
    queries = rng.uniform(0, 200, (40, 2))
    retrieved = np.stack([rng.permutation(60)[:20] for _ in range(40)])
    recalls = recall_at_n(queries, refs, retrieved, (1, 5, 10, 20), radius_m=25.0)
    for n in (1, 5, 10, 20):
        hits = 0
        for q in range(40):
            for r in retrieved[q, :n]:
                if np.hypot(*(refs[r] - queries[q])) <= 25.0:
                    hits += 1
                    break
        assert recalls[n] == pytest.approx(hits / 40)


def test_recall_counts_queries_without_any_reference_within_the_radius() -> None:
    queries = np.array([[0.0, 3.0], [100.0, 100.0]])  # q1 has no reference within 25 m
    retrieved = np.array([[1, 0], [3, 2]])
    # q0: top-1 ref 1 at 10.4 m (within 25 m) -> hit at N=1; q1 never.
    assert recall_at_n(queries, REFS, retrieved, (1, 2)) == {1: 0.5, 2: 0.5}


def test_recall_beyond_k_only_when_every_reference_was_retrieved() -> None:
    queries = np.array([[31.0, 0.0]])
    everything = np.array([[0, 1, 2, 3]])  # K = R = 4: recall@20 = recall@4
    assert recall_at_n(queries, REFS, everything, (1, 20), radius_m=5.0) == {1: 0.0, 20: 1.0}
    with pytest.raises(ValueError, match="k >= 20"):
        recall_at_n(queries, REFS, everything[:, :2], (20,))


def test_error_percentiles_by_hand() -> None:
    # Sorted 1, 2, 3, 10: median = (2 + 3) / 2; p90 at rank 0.9 * 3 = 2.7 -> 3 + 0.7 * 7.
    assert error_percentiles(np.array([10.0, 1.0, 3.0, 2.0])) == pytest.approx([2.5, 7.9])
    with pytest.raises(ValueError, match="non-empty"):
        error_percentiles(np.zeros(0))


def test_evaluate_retrieval_summary_keys_by_hand() -> None:
    queries = np.array([[0.0, 3.0], [10.0, 0.0], [100.0, 100.0]])
    retrieved = np.array([[1, 0, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]])
    result = evaluate_retrieval(queries, REFS, retrieved)
    top1 = np.array([np.hypot(10, 3), 20.0, np.hypot(100, 100)])
    assert result["median_error_m"] == pytest.approx(20.0)
    assert result["p90_error_m"] == pytest.approx(20 + 0.8 * (top1[2] - 20))
    # AUC = mean(1 - 10.44/25, 1 - 20/25, 0); upper bound: nearest 3, 0, > 25 m.
    assert result["auc"] == pytest.approx(((1 - top1[0] / 25) + 0.2) / 3)
    assert result["auc_upper_bound"] == pytest.approx(((1 - 3 / 25) + 1.0) / 3)
    # K = R = 4 references, so every N of recall@N is defined; q2 is never within 25 m.
    assert result["recall_at_25m"] == pytest.approx({"1": 2 / 3, "5": 2 / 3, "10": 2 / 3,
                                                     "20": 2 / 3})


def test_evaluate_retrieval_leaves_out_recall_beyond_k() -> None:
    queries = np.array([[0.0, 3.0]])
    result = evaluate_retrieval(queries, np.vstack([REFS, REFS + 100]), np.array([[0, 1]]))
    assert list(result["recall_at_25m"]) == ["1"]


def test_summary_table_shows_new_keys_and_dashes_for_old_results() -> None:
    queries = np.array([[0.0, 3.0], [10.0, 0.0]])
    new = evaluate_retrieval(queries, REFS, np.array([[0, 1, 2, 3], [1, 0, 2, 3]]))
    old = {k: v for k, v in new.items() if k in ("top1", "upper_bound", "curves")}
    lines = format_summary_table({"m": {"night": new, "snow": old}}).strip().splitlines()
    assert lines[0].startswith("| model | condition | AUC 0-25 m | upper AUC | R@1 @25 m")
    night = [c.strip() for c in lines[2].strip("|").split("|")]
    # errors 3 and 0 m: AUC = (22/25 + 1) / 2 = 94 %; recall 100 %; median 1.5; p90 2.7 m
    assert night == ["m", "night", "94.0", "94.0", "100.0", "100.0", "100.0", "100.0", "1.5",
                     "2.7"]
    assert lines[3].count("-") == 8


def test_order_ties_puts_the_lower_reference_row_first() -> None:
    # Ten identical references: FAISS returns the first five, highest row first.
    refs = np.zeros((10, 4), np.float32)
    refs[:, 0] = 1
    index = DescriptorIndex(4)
    index.add(refs)
    scores, found = order_ties(*index.search(refs[:2], 5))
    assert found.tolist() == [[0, 1, 2, 3, 4]] * 2
    # Mixed scores with padding: best score first, ties by row, -1 last.
    scores, found = order_ties(np.array([[0.5, 0.9, 0.5, -1e30]]), np.array([[7, 3, 2, -1]]))
    assert found.tolist() == [[3, 2, 7, -1]] and scores[0, 0] == 0.9
