"""Figures, tables and the report of a suite, drawn from the MLflow store (``python -m bench plots``).

The modules, one job each:

==================  ==============================================================================
``store``           the reader: a suite's child runs as a DataFrame, what is missing, what was skipped
``tables``          mean ± sd over seeds per (variant, objective, dataset); the report's tables
``figures``         the figure registry (file, title, caption, function) and the comparison figures
``published``       a paper's numbers beside ours (suites with a ``[published]`` table)
``report``          :func:`draw`: every registered figure, the CSVs and ``README.md``
``curves``          the per-run figure the harness logs with each run (matplotlib only: no seaborn
                    in the workers)
``style``           fixed colours per variant and per estimator, how figures are saved
==================  ==============================================================================

Metric names, labels, units and directions come from ``bench.vocabulary``; adding a figure is one
``@figure(...)`` function in ``bench/plots/figures.py``.

The names below are imported on first use (so that ``bench.plots.curves`` does not load seaborn).
"""

from __future__ import annotations

import importlib

__all__ = ["draw", "run_figure", "load_runs", "variant_colors", "summary_table", "published_frame",
           "with_published_columns", "published_section", "FIGURES"]

_WHERE = {"draw": "report", "run_figure": "curves", "load_runs": "store", "variant_colors": "style",
          "summary_table": "tables", "published_frame": "published", "with_published_columns": "published",
          "published_section": "published", "FIGURES": "figures"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"bench.plots.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'bench.plots' has no attribute {name!r}")
