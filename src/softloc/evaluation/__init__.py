"""Evaluation: localization accuracy metrics and reports (tables, plots)."""

from softloc.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    RECALL_RADIUS_M,
    RECALL_TOP_N,
    accuracy_curve,
    area_under_curve,
    error_percentiles,
    nearest_reference_distance,
    position_errors,
    recall_at_n,
    retrieved_distances,
    topn_accuracy,
    upper_bound,
    upper_bound_curve,
)
from softloc.evaluation.report import (
    curves_from_results,
    evaluate_retrieval,
    format_summary_table,
    format_table,
    plot_curves,
    threshold_key,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "RECALL_RADIUS_M",
    "RECALL_TOP_N",
    "accuracy_curve",
    "area_under_curve",
    "error_percentiles",
    "format_summary_table",
    "recall_at_n",
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
