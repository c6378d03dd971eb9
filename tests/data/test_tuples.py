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
