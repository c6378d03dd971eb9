"""The sequence filter on synthetic lattices where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from softloc.sequence import (
    SequenceConfig,
    emission_log_weights,
    filter_sequence,
    fit_temperature,
    transition_weights,
    windowed_fixes,
)

SPACING = 3.0


def street(n: int = 120) -> np.ndarray:
    """References every 3 m along a straight street."""
    return np.stack([np.arange(n) * SPACING, np.zeros(n)], axis=1)


def noisy_lattice(path: np.ndarray, n_refs: int, k: int, wrong_every: int, seed: int = 0):
    """Top-k lattice for a drive along ``path`` (true reference rows).

    Every ``wrong_every``-th frame ranks a decoy first (single-image retrieval fails there);
    the true reference is always among the candidates, at rank 2 on those frames. Decoys lie
    more than 10 references (30 m) from the true one.
    """
    rng = np.random.default_rng(seed)
    cands, dists = [], []
    rows = np.arange(n_refs)
    for t, true in enumerate(path):
        far = rows[np.abs(rows - true) > 10]
        others = rng.choice(far, size=k - 1, replace=False)
        d_others = np.sort(rng.uniform(0.9, 1.4, size=k - 1))
        if t % wrong_every == 0:
            row = np.r_[others[0], true, others[1:]]
            d = np.r_[0.5, 0.6, d_others[1:]]
        else:
            row = np.r_[true, others]
            d = np.r_[0.6, d_others]
        cands.append(row)
        dists.append(d)
    return np.array(cands), np.array(dists)


def test_transition_weights_by_hand() -> None:
    config = SequenceConfig(min_speed=2.0, max_speed=10.0, slack=1.0, sigma=2.0, jump=0.01)
    # dt = 1: full weight for 1..11 m; 13 m is 2 m (one sigma) past the top end
    got = transition_weights(np.array([0.0, 1.0, 6.0, 11.0, 13.0]), 1.0, config)
    low = 0.99 * np.exp(-0.5 * (1.0 / 2.0) ** 2) + 0.01  # 0 m is 1 m below the 1 m floor
    np.testing.assert_allclose(got, [low, 1.0, 1.0, 1.0, 0.99 * np.exp(-0.5) + 0.01])


def test_emission_is_a_softmax() -> None:
    d = np.array([[0.0, np.log(2.0) * 0.1]])
    np.testing.assert_allclose(np.exp(emission_log_weights(d, 0.1)), [[2 / 3, 1 / 3]])


def test_filter_recovers_a_known_path_where_single_images_fail() -> None:
    refs = street()
    path = np.arange(5, 105)  # one reference (3 m) per frame, 1 s apart: 3 m/s
    cands, dists = noisy_lattice(path, len(refs), k=8, wrong_every=3)
    single = cands[:, 0]
    assert np.mean(single == path) < 0.7
    config = SequenceConfig(temperature=0.05, max_speed=6.0, slack=3.0, sigma=3.0)
    fixes = filter_sequence(cands, dists, refs, config, timestamps=np.arange(len(path)) * 1.0,
                            smooth=True)
    # causal filter: only the very first frame (a decoy ranks first, no history) may fail
    assert np.array_equal(fixes.rows[1:], path[1:])
    assert np.array_equal(fixes.smoothed_rows, path)  # Viterbi uses the future too
    assert fixes.resets.tolist() == [True] + [False] * (len(path) - 1)
    assert np.all((fixes.probabilities > 0) & (fixes.probabilities <= 1))


def test_a_time_gap_resets_the_filter() -> None:
    refs = street()
    path = np.r_[np.arange(10, 20), np.arange(80, 90)]  # a jump of 180 m ...
    stamps = np.r_[np.arange(10.0), 100.0 + np.arange(10.0)]  # ... after a 91 s gap
    cands, dists = noisy_lattice(path, len(refs), k=6, wrong_every=4)
    config = SequenceConfig(max_speed=6.0, max_gap=10.0)
    fixes = filter_sequence(cands, dists, refs, config, timestamps=stamps)
    assert np.flatnonzero(fixes.resets).tolist() == [0, 10]
    assert np.array_equal(fixes.rows[11:], path[11:])  # the new segment is tracked at once


def test_one_frame_is_single_image_retrieval() -> None:
    refs = street()
    cands, dists = noisy_lattice(np.arange(30), len(refs), k=5, wrong_every=2)
    for t in range(len(cands)):
        fixes = filter_sequence(cands[t : t + 1], dists[t : t + 1], refs, SequenceConfig())
        assert fixes.rows[0] == cands[t, 0]
    np.testing.assert_array_equal(
        windowed_fixes(cands, dists, refs, SequenceConfig(), length=1), cands[:, 0]
    )


def test_windows_use_only_the_past() -> None:
    refs = street()
    path = np.arange(40)
    cands, dists = noisy_lattice(path, len(refs), k=6, wrong_every=3, seed=1)
    config = SequenceConfig(max_speed=6.0)
    full = windowed_fixes(cands, dists, refs, config, length=5)
    # changing a future frame never changes an earlier fix
    changed = dists.copy()
    changed[30] = changed[30][::-1]
    again = windowed_fixes(cands, changed, refs, config, length=5)
    assert np.array_equal(full[:30], again[:30])
    assert np.mean(full[4:] == path[4:]) == 1.0


def test_without_timestamps_the_order_is_used() -> None:
    refs = street()
    path = np.arange(20, 40)
    cands, dists = noisy_lattice(path, len(refs), k=6, wrong_every=3)
    config = SequenceConfig(max_speed=4.0)
    a = filter_sequence(cands, dists, refs, config)
    b = filter_sequence(cands, dists, refs, config, timestamps=np.arange(20.0))
    assert np.array_equal(a.rows, b.rows)


def test_fit_temperature_recovers_the_generating_one() -> None:
    rng = np.random.default_rng(3)
    true_t = 0.08
    dists = np.sort(rng.uniform(0.3, 1.0, size=(4000, 10)), axis=1)
    p = np.exp(emission_log_weights(dists, true_t))
    picks = np.array([rng.choice(10, p=row) for row in p])
    correct = np.zeros_like(dists, dtype=bool)
    correct[np.arange(len(picks)), picks] = True
    fitted = fit_temperature(dists, correct)
    assert true_t / 1.5 < fitted < true_t * 1.5


@pytest.mark.parametrize(
    "kwargs", [{"temperature": 0.0}, {"max_speed": -1.0}, {"jump": 1.0}, {"sigma": float("nan")}]
)
def test_bad_parameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SequenceConfig(**kwargs)
