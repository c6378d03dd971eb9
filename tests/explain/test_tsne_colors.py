"""The 2-D colour code, the t-SNE picture and its colour key, checked on rendered pixels."""

from __future__ import annotations

import numpy as np
import pytest

from softloc.explain.colors import RegionBounds, position_colors
from softloc.explain.tsne import TsnePanel, embed_tsne, subsample, tsne_figure


def test_colour_code_is_one_to_one_over_the_region() -> None:
    bounds = RegionBounds.around(np.array([[0.0, 0.0], [100.0, 50.0]]))
    grid = np.stack(np.meshgrid(np.linspace(0, 100, 11), np.linspace(0, 50, 6)), -1)
    colors = position_colors(grid.reshape(-1, 2), bounds)
    assert colors.shape == (66, 3) and colors.min() >= 0 and colors.max() <= 1
    # places 10 m apart never share a colour; corners differ strongly
    gaps = np.linalg.norm(colors[:, None] - colors[None], axis=2) + np.eye(66)
    assert gaps.min() > 0.02
    corners = position_colors(np.array([[0, 0], [100, 0], [0, 50], [100, 50]]), bounds)
    corner_gaps = np.linalg.norm(corners[:, None] - corners[None], axis=2)
    assert corner_gaps[np.triu_indices(4, 1)].min() > 0.3
    # outside the box: clipped to the border colour; a flat region does not divide by zero
    np.testing.assert_allclose(position_colors(np.array([[-5.0, 60.0]]), bounds),
                               position_colors(np.array([[0.0, 50.0]]), bounds))
    flat = RegionBounds.around(np.array([[3.0, 1.0], [3.0, 9.0]]))
    assert np.all(np.isfinite(position_colors(np.array([[3.0, 5.0]]), flat)))
    with pytest.raises(ValueError, match="NaN"):
        RegionBounds.around(np.array([[np.nan, 0.0]]))


def _pixel(figure, ax, xy) -> np.ndarray:
    """RGB in [0, 1] of the rendered figure at data position ``xy`` of ``ax``."""
    rgba = np.asarray(figure.canvas.buffer_rgba())
    px, py = ax.transData.transform(xy)
    row = int(round(rgba.shape[0] - py))
    return rgba[row, int(round(px)), :3] / 255.0


def test_key_colour_at_a_position_is_the_colour_of_a_query_there() -> None:
    # five references on an L-shaped street; two models' "embeddings" put the queries on a
    # well-spread grid so that markers do not overlap
    ref_xy = np.array([[0.0, 0.0], [40.0, 0.0], [80.0, 0.0], [80.0, 30.0], [80.0, 60.0]])
    query_xy = ref_xy[[4, 0, 2, 1, 3]]  # queries taken exactly at reference positions
    panels = [
        TsnePanel(name, np.array([[0, 0], [10, 0], [0, 10], [10, 10], [5, 5]], float) * s,
                  query_xy, np.array([f"q{i}" for i in range(5)]), np.array(["night"] * 5))
        for name, s in (("soft", 1.0), ("triplet", -2.0))
    ]
    figure = tsne_figure(panels, ref_xy, point_size=400.0)
    figure.canvas.draw()
    axes = figure.axes
    assert len(axes) == 3 and axes[-1].get_title().startswith("colour key")
    bounds = RegionBounds.around(ref_xy, query_xy)
    for i, xy in enumerate(query_xy):
        expected = position_colors(xy[None], bounds)[0]
        key = _pixel(figure, axes[-1], xy)
        np.testing.assert_allclose(key, expected, atol=0.02)
        for ax, panel in zip(axes[:2], panels, strict=True):
            np.testing.assert_allclose(_pixel(figure, ax, panel.embedding[i]), key, atol=0.02)


def test_tsne_keeps_separated_groups_apart() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    data = np.concatenate([c + rng.normal(size=(20, 16)) for c in centres])
    embedding = embed_tsne(data, seed=0)
    assert embedding.shape == (60, 2)
    np.testing.assert_array_equal(embedding, embed_tsne(data, seed=0))  # seeded
    labels = np.repeat(np.arange(3), 20)
    within = np.mean([np.linalg.norm(embedding[labels == k] - embedding[labels == k].mean(0),
                                     axis=1).mean() for k in range(3)])
    means = np.array([embedding[labels == k].mean(0) for k in range(3)])
    between = np.linalg.norm(means[:, None] - means[None], axis=2)[np.triu_indices(3, 1)].min()
    assert between > 3 * within
    with pytest.raises(ValueError, match="at least 5"):
        embed_tsne(data[:3])
    with pytest.raises(ValueError, match="NaN"):
        embed_tsne(np.full((10, 4), np.nan))
    assert subsample(10, 20).tolist() == list(range(10))
    picked = subsample(1000, 7)
    assert len(picked) == 7 and picked[0] == 0 and picked[-1] == 999
