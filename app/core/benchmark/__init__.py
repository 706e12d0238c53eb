"""The evaluation engine: datasets, the resumable runner, results, report and figures.

Public entry points: :class:`BenchmarkPlan`, :func:`iter_benchmark`, :func:`run_benchmark`,
:func:`discover`, :func:`load_results`, :func:`write_report`, and the statistics of
:mod:`app.core.benchmark.stats` (:func:`bootstrap_ci`, :func:`paired_difference`, :func:`holm`,
:func:`spearman_ci`). Submodules are imported lazily so
that ``import app.core.benchmark`` stays cheap.
"""

from __future__ import annotations

import importlib

__all__ = [
    "BenchmarkPlan",
    "Progress",
    "iter_benchmark",
    "run_benchmark",
    "plan_from_manifest",
    "open_case",
    "discover",
    "load_results",
    "read_manifest",
    "write_report",
    "summarize",
    "analysis_tables",
    "bootstrap_ci",
    "paired_difference",
    "holm",
    "spearman_ci",
]

_WHERE = {
    "BenchmarkPlan": "runner",
    "Progress": "runner",
    "iter_benchmark": "runner",
    "run_benchmark": "runner",
    "plan_from_manifest": "runner",
    "open_case": "results",
    "discover": "datasets",
    "load_results": "results",
    "read_manifest": "results",
    "write_report": "report",
    "summarize": "report",
    "analysis_tables": "report",
    "bootstrap_ci": "stats",
    "paired_difference": "stats",
    "holm": "stats",
    "spearman_ci": "stats",
}


def __getattr__(name: str):
    if name in _WHERE:
        module = importlib.import_module(f"app.core.benchmark.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'app.core.benchmark' has no attribute {name!r}")
