"""Evaluation: localization accuracy metrics and reports (tables, plots)."""

from softloc.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    accuracy_curve,
    nearest_reference_distance,
    position_errors,
    retrieved_distances,
    topn_accuracy,
    upper_bound,
    upper_bound_curve,
)
from softloc.evaluation.report import (
    curves_from_results,
    evaluate_retrieval,
    format_table,
    plot_curves,
    threshold_key,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "accuracy_curve",
    "curves_from_results",
    "evaluate_retrieval",
    "format_table",
    "nearest_reference_distance",
    "plot_curves",
    "position_errors",
    "retrieved_distances",
    "threshold_key",
    "topn_accuracy",
    "upper_bound",
    "upper_bound_curve",
]
