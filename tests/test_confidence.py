"""The fix confidence and its precision-coverage calibration, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from softloc.confidence import (
    fix_confidence,
    fix_confidences,
    precision_coverage,
    threshold_for_precision,
)


def test_confidence_uses_the_best_reference_elsewhere() -> None:
    d = np.array([0.2, 0.3, 0.5])
    pos = np.array([[0.0, 0.0], [5.0, 0.0], [100.0, 0.0]])
    assert fix_confidence(d, pos) == pytest.approx(1 - 0.2 / 0.5)
    # every retrieved reference near the top-1: the last distance is a cautious stand-in
    near = np.array([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0]])
    assert fix_confidence(d, near) == pytest.approx(1 - 0.2 / 0.5)
    assert fix_confidence(d[:2], near[:2]) == pytest.approx(1 - 0.2 / 0.3)
    # another place as similar as the chosen one: no confidence
    assert fix_confidence(np.array([0.4, 0.4]), np.array([[0, 0], [90, 0]])) == 0.0
    assert fix_confidence(np.array([0.4]), np.array([[0.0, 0.0]])) == 0.0


def test_precision_coverage_by_hand() -> None:
    curve = precision_coverage(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 0, 1, 0], bool))
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.8, 0.1])
    np.testing.assert_allclose(curve.coverage, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(curve.precision, [1.0, 2 / 3, 0.5])
    assert threshold_for_precision(curve, 0.95) == 0.9
    assert threshold_for_precision(curve, 0.6) == 0.8
    assert threshold_for_precision(curve, 0.5) == 0.1
    bad = precision_coverage(np.array([0.5]), np.array([False]))
    assert threshold_for_precision(bad, 0.95) is None


def test_confidence_orders_fixes_on_a_repeated_street() -> None:
    """Queries on a street with a repeated facade block: where the block repeats, the top-1 is
    a coin toss between two places 60 m apart and the confidence must be low; elsewhere the
    match is unique. Precision then rises with the threshold."""
    rng = np.random.default_rng(0)
    refs = np.stack([np.arange(100) * 3.0, np.zeros(100)], axis=1)
    dists, pos, correct = [], [], []
    for q in range(100):
        twin = (q + 20) % 100  # the same facade 60 m on
        repeated = q % 2 == 0
        order = [twin, q] if repeated and rng.random() < 0.5 else [q, twin]
        d_top = rng.uniform(0.2, 0.3)
        d = [d_top, d_top + (0.01 if repeated else 0.5)] + sorted(rng.uniform(1.0, 1.5, 3))
        rows = order + list(rng.choice(100, 3, replace=False))
        dists.append(d)
        pos.append(refs[rows])
        correct.append(rows[0] == q)
    conf = fix_confidences(np.array(dists), np.array(pos))
    curve = precision_coverage(conf, np.array(correct))
    assert curve.precision[0] == 1.0 and curve.precision[-1] < 0.9
    # accepting only fixes above the 95 % threshold: right 95 % of the time, and the unique
    # half of the street (50 queries, all right) is accepted
    threshold = threshold_for_precision(curve, 0.95)
    accepted = conf >= threshold
    assert np.mean(np.array(correct)[accepted]) >= 0.95
    assert np.all(accepted[1::2]) and accepted.mean() >= 0.5


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="expected"):
        fix_confidence(np.array([0.1, 0.2]), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="must be equal"):
        precision_coverage(np.array([0.1]), np.array([True, False]))
