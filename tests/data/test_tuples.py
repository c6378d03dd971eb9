from __future__ import annotations

import numpy as np
import pytest

from softloc.config import TupleConfig
from softloc.data.tuples import TupleError, TupleSampler, subsample_by_spacing
from softloc.geometry import heading_difference, pairwise_distances


def test_tuple_respects_radii_and_exclusion(street) -> None:
    train = street.where(split="train")
    config = TupleConfig(n_near=4, n_far=4, near_radius=5, far_radius=10, far_spacing=6,
                         band_radius=20, band_fraction=0.5, anchor_spacing=3)
    sampler = TupleSampler(train, config)
    for seed in range(20):
        tup = sampler.sample(np.random.default_rng(seed))
        assert len(tup.indices) == 9 and tup.n_near == 4 and tup.n_far == 4
        xy = train.xy[tup.indices]
        np.testing.assert_allclose(tup.distances, pairwise_distances(xy))
        assert train.traversal[tup.indices[0]] == "reference"
        d_anchor = tup.distances[0]
        assert np.all(d_anchor[1:5] < 5) and np.all(d_anchor[5:] >= 10)
        far = tup.distances[5:, 5:]
        assert np.all(far[~np.eye(4, dtype=bool)] >= 6)
        assert len(set(tup.indices.tolist())) == 9
        assert np.sum(d_anchor[5:] <= 20) >= 1  # the band supplies far images


def test_same_generator_same_tuple(street) -> None:
    sampler = TupleSampler(street.where(split="train"), TupleConfig(n_near=3, n_far=3))
    a = sampler.sample(np.random.default_rng([1, 2]))
    b = sampler.sample(np.random.default_rng([1, 2]))
    np.testing.assert_array_equal(a.indices, b.indices)


def test_near_images_need_similar_heading(street) -> None:
    train = street.where(split="train")
    flipped = train.yaw.copy()
    flipped[train.traversal == "night"] = np.pi
    turned = type(train)(**{**train.__dict__, "yaw": flipped})
    sampler = TupleSampler(turned, TupleConfig(n_near=3, n_far=3, near_radius=5))
    for seed in range(10):
        tup = sampler.sample(np.random.default_rng(seed))
        near = tup.indices[1:4]
        assert np.all(heading_difference(turned.yaw[near], turned.yaw[tup.indices[0]]) < 0.1)


def test_impossible_settings_raise(street) -> None:
    with pytest.raises(TupleError, match="lower tuples.n_near"):
        TupleSampler(street.where(split="train"), TupleConfig(n_near=50, near_radius=2))
    with pytest.raises(TupleError, match="empty"):
        TupleSampler(street.where(split="nope"), TupleConfig())


def test_subsample_and_heading() -> None:
    xy = np.array([[0, 0], [1, 0], [2.5, 0], [3, 0], [6, 0]], dtype=float)
    assert subsample_by_spacing(xy, 2.0).tolist() == [0, 2, 4]
    assert heading_difference(0.1, 2 * np.pi - 0.1) == pytest.approx(0.2)


def _epoch_anchors_every_grid_point(arc: np.ndarray, offset: float, spacing: float) -> np.ndarray:
    """The former implementation: one target per grid point of the whole arc."""
    if len(arc) == 1:
        return np.zeros(1, dtype=np.int64)
    targets = np.arange(offset, arc[-1] + 1e-9, spacing)
    if len(targets) == 0:
        targets = np.array([min(offset, arc[-1])])
    right = np.clip(np.searchsorted(arc, targets), 1, len(arc) - 1)
    left = right - 1
    nearer_left = (targets - arc[left]) <= (arc[right] - targets)
    return np.unique(np.where(nearer_left, left, right)).astype(np.int64)


def _sampler_with_arc(arc: np.ndarray, spacing: float) -> TupleSampler:
    sampler = TupleSampler.__new__(TupleSampler)
    sampler.config = TupleConfig(anchor_spacing=spacing)
    sampler._arc = arc
    sampler._anchors = list(range(len(arc)))
    return sampler


def test_epoch_anchors_equal_the_full_grid_on_drives_with_gaps() -> None:
    rng = np.random.default_rng(0)
    for case in range(300):
        n = int(rng.integers(1, 60))
        steps = rng.exponential(rng.uniform(0.2, 4.0), n - 1)
        jumps = rng.random(n - 1) < 0.1  # stretches left out of the split, other drives
        steps[jumps] += rng.uniform(5, 300, jumps.sum())
        steps[rng.random(n - 1) < 0.05] = 0.0  # repeated positions
        arc = np.concatenate([[0.0], np.cumsum(steps)])
        spacing = float(rng.choice([0.5, 2.0, 5.0, rng.uniform(0.1, 10)]))
        sampler = _sampler_with_arc(arc, spacing)
        seed = [case, 4]
        got = sampler.epoch_anchors(np.random.default_rng(seed))
        offset = np.random.default_rng(seed).uniform(0.0, spacing)
        np.testing.assert_array_equal(got, _epoch_anchors_every_grid_point(arc, offset, spacing))


def test_jumping_traversal_costs_memory_by_frames_not_span(street) -> None:
    """The same drive 40 times, 10 km apart, with the same timestamps: sorted by time its
    frames interleave and the arc spans over 50,000 km; the anchors of an epoch stay
    bounded by the frames and are formed without allocating per metre of the span."""
    import tracemalloc

    one = street.where(split="train")
    copies = 40
    tables = []
    for c in range(copies):
        shifted = type(one)(**{**one.__dict__, "x": one.x + 10_000.0 * c})
        tables.append(shifted)
    many = type(one).concat(tables)
    config = TupleConfig(n_near=2, n_far=2, near_radius=3, far_radius=10, far_spacing=2,
                         band_radius=20, anchor_spacing=2.0)
    single = TupleSampler(one, config)
    sampler = TupleSampler(many, config)
    assert sampler._arc[-1] > 5e7  # the interleaved arc jumps 10 km and more between frames
    tracemalloc.start()
    anchors = sampler.epoch_anchors(np.random.default_rng(0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000  # the full grid would be 5e7 / 2 points: 200 MB
    assert len(single.anchors) * copies == len(sampler.anchors)
    assert len(single.epoch_anchors(np.random.default_rng(0))) <= len(anchors)
    assert len(anchors) <= len(sampler.anchors)
    tup = sampler.sample(np.random.default_rng(1), anchors=anchors)
    assert np.all(tup.distances[0, 1:3] < 3) and np.all(tup.distances[0, 3:] >= 10)
