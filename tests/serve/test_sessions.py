"""Step-by-step filtering (the service's sessions) against the whole-sequence filter."""

from __future__ import annotations

import numpy as np
import pytest

from softloc.sequence import SequenceConfig, filter_sequence
from softloc.serve.sessions import FilterState, SessionStore, filter_step


@pytest.mark.parametrize("with_stamps", [True, False])
def test_steps_choose_what_the_whole_sequence_filter_chooses(with_stamps: bool) -> None:
    rng = np.random.default_rng(3)
    ref_xy = np.c_[np.arange(200.0), np.zeros(200)]
    frames, width = 40, 8
    truth = np.clip(np.arange(frames) * 2 + 20, 0, 199)
    candidates = np.stack([rng.choice(200, width, replace=False) for _ in range(frames)])
    candidates[:, 3] = truth  # the right place is a candidate, but rarely the nearest
    distances = np.sort(rng.uniform(0.2, 0.4, (frames, width)), axis=1)
    candidates[5, 2] = -1  # IVF padding
    stamps = np.cumsum(rng.uniform(0.5, 1.5, frames))
    stamps[25:] += 30.0  # a gap: the filter restarts
    stamps = stamps if with_stamps else None
    config = SequenceConfig(temperature=0.02, max_speed=3.0)
    expected = filter_sequence(candidates, distances, ref_xy, config, stamps).rows
    state: FilterState | None = None
    chosen = []
    for t in range(frames):
        row, state = filter_step(state, candidates[t], distances[t], ref_xy, config,
                                 None if stamps is None else stamps[t])
        chosen.append(row)
    assert chosen == expected.tolist()
    assert (expected != candidates[:, 0]).any()  # the filter did more than take the top-1
    assert state.log_belief.shape == (width,)


def test_store_forgets_idle_and_oldest_sessions() -> None:
    now = [0.0]
    store = SessionStore(expiry_s=10, max_sessions=2, clock=lambda: now[0])
    state = FilterState(np.array([1]), np.array([0.0]), None)
    store.put("a", state)
    now[0] = 5.0
    store.put("b", state)
    store.put("c", state)  # full: "a", the least recently used, goes
    assert store.get("a") is None and store.get("b") is state and len(store) == 2
    now[0] = 15.5  # "b" and "c" last seen at 5.0: expired
    assert store.get("b") is None and len(store) == 0
