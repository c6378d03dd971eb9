"""Localization metrics against values worked by hand and properties that must hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from softloc.evaluation.metrics import (
    accuracy_curve,
    curve_thresholds,
    position_errors,
    topn_accuracy,
    upper_bound,
    upper_bound_curve,
)

# Real Pittsburgh 30k test metadata (provenance and licence in the fixture's README.md).
PITTS_MAT = Path(__file__).parent.parent / "fixtures" / "pitts30k_test" / "pitts30k_test.mat"

# References on the x axis at 0, 10, 20, 30 m.
REFS = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])


def test_topn_accuracy_by_hand() -> None:
    queries = np.array(
        [
            [0.0, 3.0],  # q0: 3 m from ref 0, 10.44 m from ref 1
            [10.0, 0.0],  # q1: exactly on ref 1
            [100.0, 100.0],  # q2: > 25 m from every reference
        ]
    )
    retrieved = np.array(
        [
            [1, 0, 2],  # q0: top-1 ref 1 at sqrt(100 + 9) = 10.44 m, top-2 adds ref 0 at 3 m
            [3, 2, 1],  # q1: 20 m, 10 m, 0 m
            [0, 1, 2],  # q2: never within 25 m
        ]
    )
    accuracy = topn_accuracy(queries, REFS, retrieved, thresholds=[5, 10, 15, 25])
    # best-so-far distances: q0 = [10.44, 3, 3]; q1 = [20, 10, 0]; q2 = [>100, ...]
    expected = (
        np.array(
            [
                # 5 m          10 m           15 m           25 m
                [0, 0, 1, 2],  # n=1: q0 within 15, 25; q1 within 25
                [1, 2, 2, 2],  # n=2: q0 (3 m) everywhere; q1 (10 m) from 10 m (<= counts)
                [2, 2, 2, 2],  # n=3: q1 reaches 0 m
            ]
        )
        / 3.0
    )
    np.testing.assert_allclose(accuracy, expected)


def test_threshold_is_inclusive_and_ties_count_once() -> None:
    # One query at the origin; refs 0 and 1 both exactly 5 m away (a tie in distance).
    refs = np.array([[5.0, 0.0], [0.0, 5.0], [3.0, 4.0]])
    queries = np.zeros((1, 2))
    retrieved = np.array([[0, 1, 2]])
    accuracy = topn_accuracy(queries, refs, retrieved, thresholds=[4.999, 5.0])
    # All three lie at exactly 5 m: a miss at 4.999 m, a hit at 5 m for every n.
    np.testing.assert_array_equal(accuracy, [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])


def test_topn_is_monotone_in_n_and_threshold_and_bounded_by_upper_bound() -> None:
    rng = np.random.default_rng(0)
    queries = rng.uniform(0, 200, size=(60, 2))
    refs = rng.uniform(0, 200, size=(300, 2))
    retrieved = rng.integers(0, len(refs), size=(60, 10))
    thresholds = np.linspace(0, 60, 13)
    accuracy = topn_accuracy(queries, refs, retrieved, thresholds)
    assert accuracy.shape == (10, 13)
    assert np.all(np.diff(accuracy, axis=0) >= 0)  # more neighbours never hurt
    assert np.all(np.diff(accuracy, axis=1) >= 0)  # larger radius never hurts
    assert np.all(upper_bound(queries, refs, thresholds) >= accuracy[-1] - 1e-12)


def test_retrieving_the_nearest_reference_reaches_the_upper_bound() -> None:
    rng = np.random.default_rng(1)
    queries = rng.uniform(0, 100, size=(40, 2))
    refs = rng.uniform(0, 100, size=(80, 2))
    dist = np.linalg.norm(queries[:, None] - refs[None], axis=2)
    retrieved = np.argsort(dist, axis=1)[:, :3]  # oracle retrieval, brute force
    thresholds = [1, 3, 5, 10]
    np.testing.assert_allclose(
        topn_accuracy(queries, refs, retrieved, thresholds)[0],
        upper_bound(queries, refs, thresholds),
    )


def test_upper_bound_by_hand() -> None:
    queries = np.array([[0.0, 4.0], [15.0, 0.0], [5.0, 12.0], [30.0, 30.0]])
    # nearest ref: q0 -> ref 0 at 4 m; q1 -> refs 1/2 at 5 m; q2 -> ref 0 at 13 m;
    # q3 -> ref 3 at 30 m.
    np.testing.assert_allclose(
        upper_bound(queries, REFS, [4, 5, 13, 25, 30]), [0.25, 0.5, 0.75, 0.75, 1.0]
    )


def test_position_errors_and_curves() -> None:
    queries = np.array([[0.0, 3.0], [10.0, 0.0]])
    retrieved = np.array([[1, 0], [3, 1]])
    np.testing.assert_allclose(position_errors(queries, REFS, retrieved), [np.sqrt(109), 20.0])
    np.testing.assert_allclose(position_errors(queries, REFS, retrieved[:, 0]), [np.sqrt(109), 20])
    thresholds, values = accuracy_curve(queries, REFS, retrieved, n=2)
    assert thresholds.shape == (51,) and thresholds[0] == 0 and thresholds[-1] == 25
    # top-2 best distances: q0 -> 3 m, q1 -> 0 m
    assert values[0] == 0.5 and values[thresholds == 2.5][0] == 0.5 and values[6] == 1.0
    t_upper, v_upper = upper_bound_curve(queries, REFS)
    np.testing.assert_array_equal(t_upper, thresholds)
    assert np.all(v_upper >= values)
    np.testing.assert_allclose(curve_thresholds(2.0, 0.5), [0, 0.5, 1, 1.5, 2])


@pytest.mark.parametrize(
    ("queries", "refs", "retrieved", "message"),
    [
        (np.zeros((2, 3)), REFS, np.zeros((2, 1), int), "query_xy must have shape"),
        (np.zeros((0, 2)), REFS, np.zeros((0, 1), int), "query_xy is empty"),
        (np.array([[np.nan, 0.0]]), REFS, np.zeros((1, 1), int), "NaN"),
        (np.zeros((2, 2)), REFS, np.zeros((3, 1), int), "retrieved must have shape"),
        (np.zeros((1, 2)), REFS, np.array([[4]]), "outside"),
        (np.zeros((1, 2)), REFS, np.array([[-1]]), "nprobe"),
        (np.zeros((1, 2)), REFS, np.array([[0.0]]), "integer"),
    ],
)
def test_bad_inputs_raise(queries, refs, retrieved, message) -> None:
    with pytest.raises(ValueError, match=message):
        topn_accuracy(queries, refs, retrieved)


def test_bad_thresholds_and_n_raise() -> None:
    queries, retrieved = np.zeros((1, 2)), np.array([[0, 1]])
    with pytest.raises(ValueError, match="thresholds"):
        topn_accuracy(queries, REFS, retrieved, thresholds=[-1.0])
    with pytest.raises(ValueError, match="thresholds is empty"):
        upper_bound(queries, REFS, thresholds=[])
    with pytest.raises(ValueError, match="retrieve more"):
        accuracy_curve(queries, REFS, retrieved, n=3)


def test_pittsburgh_queries_all_have_a_database_image_within_25_m() -> None:
    db = scipy.io.loadmat(PITTS_MAT)["dbStruct"].item()
    # .item() gives the fields in NetVLAD's order: utmDb is 3rd, utmQ 5th, both (2, N).
    ref_xy, query_xy = db[2].T, db[4].T
    assert ref_xy.shape == (10000, 2) and query_xy.shape == (6816, 2)
    bound = upper_bound(query_xy, ref_xy, [5, 10, 25])
    # The dataset defines positives within 25 m and keeps only queries that have one.
    assert bound[2] == pytest.approx(1.0)
    assert 0.0 < bound[0] <= bound[1] <= bound[2]
