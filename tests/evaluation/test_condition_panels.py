"""The one grid of condition panels that every per-condition figure shares."""

from __future__ import annotations

import pytest

from softloc.evaluation.plots import condition_panels, is_first_in_row


@pytest.mark.parametrize(("count", "rows", "columns"), [(1, 1, 1), (4, 1, 4), (5, 2, 4), (9, 3, 4)])
def test_grid_shape_and_hidden_slots(count: int, rows: int, columns: int) -> None:
    figure, axes = condition_panels(count)
    assert len(axes) == count
    every = figure.axes
    assert len(every) == rows * columns
    assert sum(ax.get_visible() for ax in every) == count
    # the panels come in reading order: row by row, left to right
    positions = [ax.get_subplotspec().get_geometry()[2] for ax in axes]
    assert positions == list(range(count))


def test_first_in_row_marks_the_left_column() -> None:
    assert [s for s in range(9) if is_first_in_row(s, 9)] == [0, 4, 8]
    assert [s for s in range(3) if is_first_in_row(s, 3)] == [0]
