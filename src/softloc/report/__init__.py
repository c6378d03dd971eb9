"""One static HTML page that compares trained models side by side (``softloc report``).

- :mod:`~softloc.report.collect`: what a RUN_DIR is, maps built (and cached) for training
  runs, sweep outputs found;
- :mod:`~softloc.report.tables`: result tables read generically from ``results.json``;
- :mod:`~softloc.report.html`: the page itself;
- :mod:`~softloc.report.build`: the whole report: evaluation, pictures, tables, page.
"""

from softloc.report.build import build_report

__all__ = ["build_report"]
