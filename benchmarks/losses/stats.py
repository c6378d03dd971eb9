"""Statistics of the decisive loss benchmark (pure functions, no training).

- :func:`choose_lr`: each loss's learning rate, the grid value with the best mean top-1 at
  10 m over the query conditions of the validation region.
- :func:`mean_over_conditions`: a run's score, the mean over conditions of the per-condition
  top-1 accuracy (each condition weighs the same, whatever its number of queries).
- :func:`paired_difference` and :func:`bootstrap_difference_ci`: a loss's difference to the
  soft loss (sigmoid) in points, and its 95 % confidence interval by a paired bootstrap over
  seeds and queries. Tuples depend on (seed, step) only and every loss is evaluated on the
  same queries, so loss and soft loss are compared seed by seed and query by query.
- :func:`loss_summary` and :func:`results_document`: the ``results.json`` entries.

Hits are arrays of 0/1 (or booleans): ``hits[seed][condition]`` = per-query top-1 correct
within 10 m, the queries of a condition in one fixed order for every loss and seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Hits = Mapping[int, Mapping[str, Sequence[float]]]

#: The issue's bar: every interval at most this wide (points), else run more seeds.
MAX_CI_WIDTH = 6.0


def choose_lr(grid: Mapping[float, Mapping[str, float]]) -> float:
    """The learning rate whose validation scores have the best mean over conditions.

    Args:
        grid: ``{lr: {condition: top-1 at 10 m}}`` (shares or percents, one seed or a mean).

    Returns:
        The best lr; on a tie (equal means), the smallest of the tied rates, the
        conservative choice.

    Raises:
        ValueError: an empty grid or a rate without scores.
    """
    if not grid:
        raise ValueError("the learning-rate grid is empty")
    means = {}
    for lr, scores in grid.items():
        if not scores:
            raise ValueError(f"learning rate {lr:g} has no validation scores")
        means[float(lr)] = float(np.mean(list(scores.values())))
    best = max(means.values())
    return min(lr for lr, mean in means.items() if mean == best)


def mean_over_conditions(hits: Mapping[str, Sequence[float]]) -> float:
    """Mean over conditions of the share of correct queries, in points (0-100)."""
    if not hits:
        raise ValueError("no conditions")
    return 100.0 * float(np.mean([np.mean(np.asarray(v, dtype=np.float64)) for v in hits.values()]))


def _paired_arrays(
    loss: Hits, soft: Hits
) -> tuple[list[int], list[str], list[np.ndarray]]:
    """Seeds both hold, their shared conditions, and per condition the (S, Q_c) differences.

    Raises:
        ValueError: no shared seed, or a condition whose query counts differ.
    """
    seeds = sorted(set(loss) & set(soft))
    if not seeds:
        raise ValueError("the loss and the soft loss share no seed")
    conditions = sorted(loss[seeds[0]])  # a fixed order: the bootstrap draws follow it
    differences = []
    for condition in conditions:
        rows = []
        for seed in seeds:
            a = np.asarray(loss[seed][condition], dtype=np.float64)
            b = np.asarray(soft[seed][condition], dtype=np.float64)
            if a.shape != b.shape or a.ndim != 1 or a.size == 0:
                raise ValueError(
                    f"seed {seed}, {condition}: the loss has {a.size} queries and the soft "
                    f"loss {b.size}; a paired comparison needs the same queries"
                )
            rows.append(a - b)
        differences.append(np.stack(rows))
    return seeds, conditions, differences


def paired_difference(loss: Hits, soft: Hits) -> float:
    """Mean over seeds of (loss - soft) mean over conditions, in points."""
    _, _, differences = _paired_arrays(loss, soft)
    return 100.0 * float(np.mean([d.mean() for d in differences]))


def bootstrap_difference_ci(
    loss: Hits,
    soft: Hits,
    replicates: int = 10000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`paired_difference`, over seeds and queries.

    Each replicate draws the seeds with replacement and, per condition, the queries with
    replacement (one draw of queries for all seeds, since every seed is evaluated on the same
    queries), and recomputes the difference on the draw; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates.

    Returns:
        ``(low, high)`` in points.
    """
    if replicates < 1 or not 0.0 < level < 1.0:
        raise ValueError("need replicates >= 1 and 0 < level < 1")
    _, _, differences = _paired_arrays(loss, soft)
    rng = np.random.default_rng(seed)
    n_seeds = differences[0].shape[0]
    values = np.empty(replicates)
    for r in range(replicates):
        seed_draw = rng.integers(0, n_seeds, n_seeds)
        per_condition = []
        for d in differences:
            query_draw = rng.integers(0, d.shape[1], d.shape[1])
            per_condition.append(d[np.ix_(seed_draw, query_draw)].mean())
        values[r] = np.mean(per_condition)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(100.0 * values, [tail, 100.0 - tail])
    return float(low), float(high)


def ci_width_ok(interval: Sequence[float], max_width: float = MAX_CI_WIDTH) -> bool:
    """Whether an interval is at most ``max_width`` points wide (the decisive bar)."""
    return float(interval[1]) - float(interval[0]) <= max_width


def loss_summary(
    lr_grid: Sequence[float],
    lr: float | None,
    hits: Hits,
    soft_hits: Hits | None,
    replicates: int = 10000,
) -> dict[str, Any]:
    """One loss's ``results.json`` entry.

    Args:
        lr_grid: the rates tried on validation (empty for a loss that does not train).
        lr: the chosen rate (None for a loss that does not train).
        hits: the final runs' per-query hits, ``{seed: {condition: [0/1, ...]}}``.
        soft_hits: the soft loss's (sigmoid), for the paired interval; None for the soft
            loss itself (its difference is 0 by definition and gets ``[0.0, 0.0]``).

    Returns:
        ``lr_grid``, ``lr``, ``seeds``, ``per_seed`` (mean top-1 at 10 m over conditions, per
        seed), ``mean_top1_10m``, ``diff_to_soft`` and ``diff_to_soft_ci95`` ([low, high],
        points), ``ci_width_ok`` and ``per_condition`` (``{condition: {"per_seed": [...],
        "mean": m}}``, points).
    """
    seeds = sorted(hits)
    per_seed = [mean_over_conditions(hits[s]) for s in seeds]
    conditions = list(hits[seeds[0]])
    per_condition = {}
    for condition in conditions:
        values = [100.0 * float(np.mean(hits[s][condition])) for s in seeds]
        per_condition[condition] = {"per_seed": values, "mean": float(np.mean(values))}
    if soft_hits is None:
        difference, interval = 0.0, [0.0, 0.0]
    else:
        difference = paired_difference(hits, soft_hits)
        interval = list(bootstrap_difference_ci(hits, soft_hits, replicates=replicates))
    return {
        "lr_grid": [float(v) for v in lr_grid],
        "lr": None if lr is None or math.isnan(lr) else float(lr),
        "seeds": seeds,
        "per_seed": per_seed,
        "mean_top1_10m": float(np.mean(per_seed)),
        "diff_to_soft": difference,
        "diff_to_soft_ci95": interval,
        "ci_width_ok": ci_width_ok(interval),
        "per_condition": per_condition,
    }


def results_document(
    lr_grid: Sequence[float],
    chosen: Mapping[str, float],
    hits: Mapping[str, Hits],
    reference: str = "soft_sigmoid",
    untrained: Sequence[str] = ("off_the_shelf",),
    replicates: int = 10000,
) -> dict[str, Any]:
    """``{loss: loss_summary(...)}`` for every loss with final runs, paired with ``reference``.

    Raises:
        ValueError: the reference loss has no final runs.
    """
    if reference not in hits:
        raise ValueError(f"the reference loss {reference!r} has no final runs")
    document = {}
    for name, loss_hits in hits.items():
        grid = [] if name in untrained else lr_grid
        soft = None if name == reference else hits[reference]
        document[name] = loss_summary(grid, chosen.get(name), loss_hits, soft, replicates)
    return document
