"""The report of a searched suite's tuning (``bench.run.search``): the budget each cell spent, the
setting it selected on validation with its score, and the final seeds' test numbers (its figure,
the expected best validation score against the number of trials, is ``tuning.png`` in
``bench.plots.figures``).
"""

from __future__ import annotations

import contextlib

import pandas as pd

from bench import vocabulary
from bench.plots.store import values
from bench.store.tracking import TAG_SEARCH_CELL, TAG_SEARCH_PRUNED, TAG_SEARCH_TRIAL


def search_spec(suite: str, tracking_uri: str | None = None):
    """The suite file's ``[search]`` (a :class:`bench.suite.SearchSpec`): ``bench/suites/<suite>.toml``,
    else the file the last invocation in the store ran (its parent's ``suite_file``); None when
    neither loads (the report then names the metric ``val/elbo``)."""
    from bench.errors import BenchError
    from bench.suite import load_suite, suite_path

    path = suite_path(suite)
    if not path.is_file() and tracking_uri:
        from bench.plots.store import client
        from bench.store import tracking

        c = client(tracking_uri)
        exp = c.get_experiment_by_name(suite)
        parents = c.search_runs([exp.experiment_id], tracking.role_filter("parent"), max_results=1,
                                order_by=["attributes.start_time DESC"]) if exp else []
        path = suite_path(parents[0].data.params.get("suite_file", "")) if parents else path
    if not path.is_file():
        return None
    try:
        return load_suite(str(path)).search
    except BenchError:
        return None


def _setting(row: pd.Series, spec) -> str:
    """The searched parameters of a trial run, as its params record them."""
    if spec is None:
        return "?"
    out = []
    for name in spec.space:
        if name.startswith("objective_option."):
            col = f"params.objective_option.{row.get('params.objective', '?')}.{name.removeprefix('objective_option.')}"
        else:
            col = f"params.{name}"
        value = row.get(col)
        if value is None or (isinstance(value, float) and pd.isna(value)):
            value = "(not read)" if name.startswith("option.") else "?"  # bench.config.unread_options
        with contextlib.suppress(ValueError):
            value = f"{float(value):.3g}" if "." in str(value) or "e" in str(value) else value
        out.append(f"{name}={value}")
    return ", ".join(out)


def _mean_sd(v: pd.Series, decimals: int) -> str:
    v = v.dropna()
    if v.empty:
        return "—"
    if len(v) == 1:
        return f"{v.iloc[0]:.{decimals}f} (1 seed)"
    return f"{v.mean():.{decimals}f} ± {v.std(ddof=1):.{decimals}f} ({len(v)} seeds)"


def pruned(trials: pd.DataFrame) -> pd.Series:
    """Trials a pruner stopped (tag ``vaebench.search.pruned``, the epoch)."""
    col = f"tags.{TAG_SEARCH_PRUNED}"
    return trials[col].notna() if col in trials else pd.Series(False, index=trials.index)


def completed(trials: pd.DataFrame) -> pd.Series:
    """Trials that trained to the end: FINISHED and not pruned."""
    return (trials["status"] == "FINISHED") & ~pruned(trials)


def tuning_section(finals: pd.DataFrame, trials: pd.DataFrame, spec) -> list[str]:
    """The report's "Tuning" section (Markdown lines): one row per cell."""
    if trials.empty:
        return []
    metric = spec.metric if spec is not None else "val/elbo"
    m = vocabulary.get(metric)
    tests = [x for x in vocabulary.summary_metrics() if x.unit == "nats"]
    how = "" if spec is None else (
        f" Budget: {spec.trials} trial(s) a cell, sampler `{spec.sampler}`, pruner `{spec.pruner}`"
        + (f" (reduction factor {spec.reduction_factor}, epochs as the resource)" if spec.pruner != "none" else "")
        + (f"; trials trained {spec.trial_epochs} epoch(s), the final runs the suite's full length"
           if spec.trial_epochs else "")
        + f"; trials trained with seed {spec.seed}; final seeds {', '.join(map(str, spec.final_seeds))}.")
    out = ["## Tuning", "",
           f"Every cell (variant / objective / dataset and the grid's settings) had the same budget of trials, each "
           f"a setting of the search space trained on the training split and scored by `{metric}` on the validation "
           "split at its last epoch; the test split is never read by a trial. The selected setting (the best completed "
           "trial) was trained again with each final seed and evaluated on the test split: those runs are the results "
           f"above.{how}", "",
           f"| cell | trials run | pruned | failed | selected setting | {metric} of the selected trial | "
           + " | ".join(f"{x.name} (final seeds)" for x in tests) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(tests)]
    cells = sorted(trials["cell"].unique())
    for cell in cells:
        t = trials[trials["cell"] == cell]
        n_pruned = int(pruned(t).sum())
        failed = int((t["status"] == "FAILED").sum())
        f = finals[finals.get(f"tags.{TAG_SEARCH_CELL}", pd.Series(dtype=object)) == cell] \
            if f"tags.{TAG_SEARCH_CELL}" in finals else finals.iloc[:0]
        chosen = f[f"tags.{TAG_SEARCH_TRIAL}"].dropna().unique() if len(f) else []
        sel = t[t["trial"] == int(chosen[0])] if len(chosen) == 1 else t.iloc[:0]
        setting = _setting(sel.iloc[0], spec) if len(sel) else "not selected yet"
        score = m.format(values(sel, metric).iloc[0]) if len(sel) else "—"
        t = t[values(t, metric).notna() | (t["status"] == "FAILED")]  # begun (a search under way has trials not begun)
        runs = t["run_id"].nunique()
        n_trials = f"{len(t)} ({runs} runs)" if runs < len(t) else f"{len(t)}"
        out.append(f"| {cell} | {n_trials} | {n_pruned} | {failed} | {setting} | {score} | "
                   + " | ".join(_mean_sd(values(f, x.name), x.decimals) for x in tests) + " |")
    out += ["", "The trials' own runs are in the store (tag `vaebench.search.cell`), beside the study of each cell; "
            "`runs.csv` holds the final runs only."]
    if trials["run_id"].nunique() < len(trials):
        out += ["", "Trials whose settings differ only in what their runs do not read (a discrete variant's temperature "
                "schedule, where every sample is exact: the score function) are one run, counted once in the runs and "
                "once per trial in the trials and the pruned; such a setting reads `(not read)`."]
    out += [""]
    return out
