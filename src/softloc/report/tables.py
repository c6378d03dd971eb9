"""Result tables read generically from ``results.json`` (``results[model][condition]``).

Every entry of a metrics dict becomes part of a table, whatever its name, so metrics added
later (AUC, recall at 25 m, median error, ...) show up without touching this module:

- a dict of numbers (``top1: {"5": .., "10": ..}``) becomes one table: a row per model, a
  column per condition and key;
- a number (``auc``, ``median_error_m``) becomes a table of its own: a row per model, a column
  per condition; counts (keys starting with ``num_``) share the table "counts";
- lists (the ``curves``) are plotted, not tabulated.

Tables come in reading order (:data:`ORDER` first, then others by name, the upper-bound tables,
and the counts last), one table per metric so that a page stays as wide as its conditions.

Keys that start with a share prefix (:data:`SHARE_PREFIXES`) are shares in [0, 1] and are
shown in percent; the best model of each column is marked (highest share; lowest value for a
key containing ``error``). The upper bound is nobody's best.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Keys read as shares in [0, 1], shown in percent.
SHARE_PREFIXES: tuple[str, ...] = ("top", "upper_bound", "recall", "auc", "accuracy",
                                   "coverage")
COUNTS = "counts"
#: The metrics a reader looks for first, in this order.
ORDER: tuple[str, ...] = (
    "top1", "top5", "recall_at_25m", "auc", "median_error_m", "p90_error_m"
)


@dataclass(frozen=True)
class Table:
    """A table: ``columns`` are (condition, key) pairs; ``rows`` map model -> values."""

    name: str
    columns: list[tuple[str, str]]
    rows: dict[str, list[float | None]]
    shares: list[bool]
    best: list[str | None]  # "max", "min" or None per column

    def csv_text(self) -> str:
        """The table as CSV: ``model, <condition>/<key>, ...`` with raw values."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["model"] + [f"{c}/{k}" for c, k in self.columns])
        for model, values in self.rows.items():
            writer.writerow([model] + ["" if v is None else repr(v) for v in values])
        return buffer.getvalue()

    def best_rows(self) -> list[set[str]]:
        """Per column, the models holding the best value (empty when not compared)."""
        marks: list[set[str]] = []
        for j, rule in enumerate(self.best):
            values = {m: v[j] for m, v in self.rows.items() if v[j] is not None}
            if rule is None or len(values) < 2:
                marks.append(set())
                continue
            target = max(values.values()) if rule == "max" else min(values.values())
            marks.append({m for m, v in values.items() if v == target})
        return marks


def is_share(key: str) -> bool:
    """Whether values of ``key`` are shares in [0, 1] (shown in percent)."""
    return key.startswith(SHARE_PREFIXES)


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _best_rule(group: str, key: str) -> str | None:
    if "upper_bound" in group or "upper_bound" in key or key.startswith("num_"):
        return None
    if "error" in group or "error" in key:
        return "min"
    return "max" if is_share(group) or is_share(key) else None


def tables_from_results(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[Table]:
    """The tables of ``results[model][condition] = metrics`` (see the module docstring).

    Raises:
        ValueError: ``results`` is not a ``{model: {condition: dict}}`` nest.
    """
    if not results:
        raise ValueError("results is empty: nothing to tabulate")
    groups: dict[str, list[tuple[str, str]]] = {}
    cells: dict[str, dict[tuple[str, str], dict[str, float]]] = {}
    for model, by_condition in results.items():
        if not isinstance(by_condition, Mapping):
            raise ValueError(f"results[{model!r}] must map condition -> metrics dict")
        for condition, metrics in by_condition.items():
            if not isinstance(metrics, Mapping):
                raise ValueError(f"results[{model!r}][{condition!r}] must be a metrics dict")
            for key, value in metrics.items():
                if _number(value):
                    group = COUNTS if str(key).startswith("num_") else str(key)
                    entries = {(group, key): float(value)}
                elif isinstance(value, Mapping) and value and all(map(_number, value.values())):
                    entries = {(key, str(sub)): float(v) for sub, v in value.items()}
                else:
                    continue
                for (group, sub), number in entries.items():
                    column = (str(condition), sub)
                    if column not in groups.setdefault(group, []):
                        groups[group].append(column)
                    cells.setdefault(group, {}).setdefault(column, {})[model] = number
    tables = []
    order = sorted(
        groups,
        key=lambda g: (
            g == COUNTS,
            "upper_bound" in g,
            ORDER.index(g) if g in ORDER else len(ORDER),
            g,
        ),
    )
    for group in order:
        columns = groups[group]
        rows = {
            str(model): [cells[group][column].get(model) for column in columns]
            for model in results
        }
        shares = [is_share(group) or is_share(sub) for _, sub in columns]
        best = [_best_rule(group, sub) for _, sub in columns]
        tables.append(Table(group, columns, rows, shares, best))
    return tables


def format_value(value: float | None, share: bool) -> str:
    """A cell: shares in percent with one decimal, whole numbers as such, else 3 decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if share:
        return f"{100.0 * value:.1f}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}"
