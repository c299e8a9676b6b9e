"""The store reader: a suite's child runs from MLflow into pandas, and what is missing.

One row per run, ``params.*``, ``metrics.*`` (the last logged value) and ``tags.*`` columns as
``mlflow.search_runs`` names them, plus ``variant``, ``objective``, ``dataset``, ``seed``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from bench import vocabulary

KEY = ["variant", "objective", "dataset"]
# MLflow's SQL stores keep an infinite metric (a deterministic gradient's SNR) as the largest float
_STORED_INF = 1.7e308


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def store_name(uri: str) -> str:
    """The store as a report names it: never a machine's absolute path nor a password. A sqlite
    file is named relative to the working directory when it lies below it (``sqlite:///mlflow.db``
    for ``./mlflow.db``), else by its file name; a server or database by its scheme (and database
    name): ``http tracking server``, ``postgresql database mlflow``."""
    from pathlib import Path

    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        try:
            return f"sqlite:///{path.resolve().relative_to(Path.cwd().resolve())}"
        except ValueError:
            return f"sqlite store {path.name}"
    parts = urlsplit(uri)
    scheme = parts.scheme or "file"
    if scheme in ("http", "https", "databricks"):
        return f"{scheme} tracking server"
    db = parts.path.strip("/").rsplit("/", 1)[-1]
    return f"{scheme.split('+')[0]} database {db}".strip() if db else f"{scheme} store"


def _child_rows(suite: str, tracking_uri: str) -> list[dict] | None:
    """Every child run of ``suite`` as a flat dict (None: no such experiment)."""
    from bench.store import tracking

    c = client(tracking_uri)
    exp = c.get_experiment_by_name(suite)
    if exp is None:
        return None
    rows = []
    for r in tracking.search_all(c, [exp.experiment_id]):
        tags = r.data.tags
        if tags.get(tracking.TAG_ROLE) != "child" and "mlflow.parentRunId" not in tags:
            continue
        row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
               "start_time": r.info.start_time, "artifact_uri": r.info.artifact_uri}
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"tags.{k}": v for k, v in tags.items()})
        rows.append(row)
    return rows


def _is_trial(row: dict) -> bool:
    """A search trial (``bench.run.search``): it has a cell and is not a final run."""
    from bench.store.tracking import TAG_SEARCH_CELL, TAG_SEARCH_SELECTED

    return f"tags.{TAG_SEARCH_CELL}" in row and row.get(f"tags.{TAG_SEARCH_SELECTED}") != "true"


def setting_order(label: str) -> tuple:
    """A sort key that puts labelled runs in the order a reader expects: by the name before the
    settings, then by the settings' numbers, then the label: ``vanilla (latent_dim=3)``, ``=5``,
    ``=10``, ``=20``, ``=200`` (a string sort puts 10, 20, 200 before 3), ``lr=1e-05`` before
    ``lr=0.0003``; a bare setting (``latent_dim=3``) is ordered by its numbers too."""
    name = re.sub(r"=.*", "", label.split(" (")[0])
    nums = [float(x) for x in re.findall(r"=(-?\d+(?:\.\d+)?(?:e-?\d+)?)\b", label)]
    return (name, nums, label)


def load_trials(suite: str, tracking_uri: str) -> pd.DataFrame:
    """The search trials of ``suite`` (validation only; not in :func:`load_runs`): one row per
    trial with ``cell`` and ``trial`` (its number) columns. A run that served several trials (tag
    ``vaebench.search.trials``: settings that differ only where the run does not read them) gives
    each of them a row; where a trial was run more than once (an invocation at other code), the
    latest run. Empty without a search."""
    from bench.store.tracking import TAG_SEARCH_CELL, TAG_SEARCH_TRIAL, TAG_SEARCH_TRIALS

    rows = []
    for r in _child_rows(suite, tracking_uri) or []:
        if _is_trial(r):
            served = str(r.get(f"tags.{TAG_SEARCH_TRIALS}") or r.get(f"tags.{TAG_SEARCH_TRIAL}", "")).split()
            rows += [r | {f"tags.{TAG_SEARCH_TRIAL}": n} for n in served or [""]]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df["cell"] = df[f"tags.{TAG_SEARCH_CELL}"]
    df["trial"] = pd.to_numeric(df[f"tags.{TAG_SEARCH_TRIAL}"], errors="coerce")
    df = df.sort_values("start_time").drop_duplicates(["cell", "trial"], keep="last")
    return df.sort_values(["cell", "trial"]).reset_index(drop=True)


def load_runs(suite: str, tracking_uri: str) -> tuple[pd.DataFrame, list[str]]:
    """The child runs of ``suite`` as a DataFrame, and notes about what is missing. A searched
    suite's trials are not among them (:func:`load_trials`): its results are the final runs.

    Columns: ``run_id``, ``run_name``, ``status``, ``start_time``, ``artifact_uri``, ``metrics.<m>``
    (last logged value), ``params.<p>`` (strings), ``tags.<t>``, plus ``variant``, ``objective``,
    ``dataset``, ``seed`` taken from the params, and ``setting`` (below; "" for none). Children are runs tagged ``vaebench.role=child``
    or nested under a parent (``mlflow.parentRunId``). When a (variant, objective, dataset, seed)
    was run more than once (several invocations), the latest FINISHED run is kept (the latest run
    if none finished) and the others are counted in the notes. Runs that differ only in ``k``
    are distinct results: their objective reads ``iwae (k=5)``.
    """
    notes: list[str] = []
    rows = _child_rows(suite, tracking_uri)
    if rows is None:
        return pd.DataFrame(), [f"no experiment named {suite!r} in {store_name(tracking_uri)}: nothing has run yet"]
    trials = [r for r in rows if _is_trial(r)]
    rows = [r for r in rows if not _is_trial(r)]
    if not rows:
        if trials:  # a search under way: its trials are in the report's tuning section
            return pd.DataFrame(), [f"the search of {suite!r} has no final runs yet: its trials so far are in the "
                                    "tuning section (the same `python -m bench run` command goes on with it)"]
        return pd.DataFrame(), [f"experiment {suite!r} has no child runs yet"]
    df = pd.DataFrame(rows)
    mcols = [c for c in df.columns if c.startswith("metrics.")]
    m = df[mcols].astype(float)
    df = pd.concat([df.drop(columns=mcols), m.mask(m.abs() >= _STORED_INF, np.sign(m) * np.inf)], axis=1)
    for col in KEY + ["seed"]:
        p = f"params.{col}"
        df[col] = df[p].fillna("?") if p in df else "?"
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce")
    k = df["params.k"].fillna("?") if "params.k" in df else pd.Series("?", index=df.index)
    several = k.groupby([df[c] for c in KEY]).transform("nunique") > 1
    df.loc[several, "objective"] = df.loc[several, "objective"] + " (k=" + k[several] + ")"
    df["setting"] = _settings(df, setting_keys(suite))
    has = df["setting"] != ""
    df.loc[has, "variant"] = df["variant"] + " (" + df["setting"] + ")"
    df.loc[has, "run_name"] = df["run_name"] + " (" + df["setting"] + ")"  # the notes name runs by it
    df["_done"] = df["status"] == "FINISHED"
    df = df.sort_values(["_done", "start_time"])
    n = len(df)
    df = df.drop_duplicates(KEY + ["seed"], keep="last").drop(columns="_done")
    if len(df) < n:
        notes.append(f"{n - len(df)} other run(s) of an already reported variant/objective/dataset/seed "
                     "(earlier invocations, or later ones that did not finish) are not shown")
    mcols = [c for c in df.columns if c.startswith("metrics.")]
    empty = (df["status"] != "FINISHED") & (df[mcols].isna().all(axis=1) if mcols else True)
    for _, r in df[empty].iterrows():  # planned, never started (or killed before its first epoch)
        notes.append(f"run {r['run_name']} is {r['status']} and logged nothing: not shown")
    df = df[~empty]
    for _, r in df[df["status"] != "FINISHED"].iterrows():
        notes.append(f"run {r['run_name']} is {r['status']}: its metrics so far are used")
    return df.sort_values(KEY + ["seed"]).reset_index(drop=True), notes


_NOT_A_SETTING = {"variant", "objective", "dataset", "seed", "k", "device", "threads", "data_dir"}


def setting_keys(suite: str) -> dict[tuple[str, str, str], list[str]]:
    """Per (variant, objective, dataset) of the suite file ``bench/suites/<suite>.toml`` (or a
    path), the run-config params that tell its runs apart besides the seed and ``k`` (a grid's
    ``set``: the priors of the ``priors`` suite, the latent sizes of ``kingma2014``); {} when the
    file does not load. Taken from the file, not the store, so that an earlier invocation at
    other settings is an earlier invocation (not shown), not a result of its own."""
    from bench.errors import BenchError
    from bench.suite import load_suite, suite_path

    if not suite_path(suite).is_file():
        return {}
    try:
        runs = load_suite(suite).runs
    except BenchError:
        return {}
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for cfg in runs:
        groups.setdefault((cfg.variant, cfg.objective, cfg.dataset), []).append(cfg.params())
    return {g: sorted(n for n in set().union(*ps) - _NOT_A_SETTING if len({p.get(n) for p in ps}) > 1)
            for g, ps in groups.items()}


def _settings(df: pd.DataFrame, keys: dict[tuple[str, str, str], list[str]]) -> pd.Series:
    """``"name=value, ..."`` of each run's params named by ``keys`` for its group ("" for none)."""
    def one(r) -> str:
        names = keys.get((r["variant"], r["params.objective"] if "params.objective" in r else r["objective"],
                          r["dataset"]), [])
        return ", ".join(f"{n}={r.get(f'params.{n}', '?')}" for n in names)

    return df.apply(one, axis=1) if keys else pd.Series("", index=df.index)


def metric_names(df: pd.DataFrame) -> list[str]:
    return [c.removeprefix("metrics.") for c in df.columns if c.startswith("metrics.")]


def values(df: pd.DataFrame, name: str) -> pd.Series:
    """The column ``metrics.<name>`` (all NaN when no run has it)."""
    col = f"metrics.{name}"
    return df[col] if col in df else pd.Series(float("nan"), index=df.index, dtype=float)


def skipped(df: pd.DataFrame, name: str) -> pd.Series:
    """Runs that skipped ``name`` by design: the tag ``vaebench.skipped.<measurement>`` the driver
    sets (``bench.config.skipped_measurements``), the measurement named by the vocabulary."""
    col = _skip_column(name)
    return df[col].notna() if col in df else pd.Series(False, index=df.index)


def skip_reason(df: pd.DataFrame, name: str) -> pd.Series:
    """The reason per run (NaN where the run did not skip ``name``)."""
    col = _skip_column(name)
    return df[col] if col in df else pd.Series(float("nan"), index=df.index, dtype=object)


def _skip_column(name: str) -> str | None:
    """The DataFrame column of the tag that says a run skipped the measurement of ``name``."""
    from bench.store.tracking import TAG_SKIPPED

    m = vocabulary.lookup(name)
    return f"tags.{TAG_SKIPPED}{m.skip}" if m is not None and m.skip else None


def expected_metrics() -> list[str]:
    """The metric names every run should have, unless it skipped them: the report tables' fixed
    names that are not optional, and the per-epoch validation ELBO."""
    return [m.name for m in vocabulary.table_metrics() if "<" not in m.name and not m.optional] + ["val/elbo"]


# what a run with evaluate = "validation" (a search trial's kind of run) logs: it never reads the test split
VALIDATION_ONLY_LOGS = ("val/", "train/", "perf/train_", "perf/peak_mem")


def validation_only(df: pd.DataFrame) -> pd.Series:
    """Runs made with ``evaluate = "validation"``: trained and scored on the validation split only."""
    return df["params.evaluate"].eq("validation") if "params.evaluate" in df else pd.Series(False, index=df.index)


def missing_notes(df: pd.DataFrame, names: list[str]) -> list[str]:
    """One note per set of runs that lacks the same metrics: "metric(s) a, b missing in ...".
    A metric a run skipped by design (not applicable to its variant, the reason in its tags) is
    not missing, nor a final measurement of a validation-only run."""
    by_runs: dict[tuple[str, ...], list[str]] = {}
    val_only = validation_only(df)
    for name in names:
        unlogged = val_only & (not name.startswith(VALIDATION_ONLY_LOGS))
        missing = df["run_name"][values(df, name).isna() & ~skipped(df, name) & ~unlogged]
        if len(missing):
            by_runs.setdefault(tuple(missing.astype(str)), []).append(name)
    notes = []
    for runs, ms in by_runs.items():
        shown = ", ".join(runs[:6]) + (" ..." if len(runs) > 6 else "")
        notes.append(f"metric(s) {', '.join(ms)} missing in {len(runs)} of {len(df)} run(s): {shown}")
    return notes


def history(c, df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per-step values of ``key`` for every run: columns run_id, variant, objective, dataset, seed,
    step, value."""
    out = []
    for _, r in df.iterrows():
        for m in c.get_metric_history(r["run_id"], key):
            out.append({"run_id": r["run_id"], "variant": r["variant"], "objective": r["objective"],
                        "dataset": r["dataset"], "seed": r["seed"], "step": m.step, "value": m.value})
    return pd.DataFrame(out, columns=["run_id", "variant", "objective", "dataset", "seed", "step", "value"])


GRAD_RE = re.compile(rf"^grad/(?P<objective>[^/]+)/k(?P<k>\d+)/(?P<group>{vocabulary.PLACEHOLDERS['group']})_"
                     rf"(?P<stat>{vocabulary.PLACEHOLDERS['stat']})$")


def gradient_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Every gradient measurement of the runs, long: columns variant, dataset, seed, run_id,
    objective (the estimator measured), k, group, and one column per statistic (``snr``,
    ``snr_lo``, ...). A run without ``grad_objectives`` contributes its own objective at its k
    (``grad/<group>_<stat>``)."""
    rows: dict[tuple, dict] = {}
    own_re = re.compile(rf"^grad/(?P<group>{vocabulary.PLACEHOLDERS['group']})_(?P<stat>{vocabulary.PLACEHOLDERS['stat']})$")
    names = metric_names(df)
    measured = [(n, GRAD_RE.match(n)) for n in names]
    measured = [(n, m) for n, m in measured if m]
    own = [(n, own_re.match(n)) for n in names]
    own = [(n, m) for n, m in own if m]
    for _, r in df.iterrows():
        base = {"variant": r["variant"], "dataset": r["dataset"], "seed": r["seed"], "run_id": r["run_id"]}
        found = False
        for n, m in measured:
            v = r[f"metrics.{n}"]
            if pd.notna(v):
                found = True
                row = rows.setdefault((r["run_id"], m["objective"], int(m["k"]), m["group"]),
                                      base | {"objective": m["objective"], "k": int(m["k"]), "group": m["group"]})
                row[m["stat"]] = v
        k = pd.to_numeric(r.get("params.k"), errors="coerce")
        if found or pd.isna(k):
            continue
        for n, m in own:
            v = r[f"metrics.{n}"]
            if pd.notna(v):
                objective = r.get("params.objective", r["objective"])
                row = rows.setdefault((r["run_id"], objective, int(k), m["group"]),
                                      base | {"objective": objective, "k": int(k), "group": m["group"]})
                row[m["stat"]] = v
    cols = ["variant", "dataset", "seed", "run_id", "objective", "k", "group", *vocabulary.GRADIENT_STATS]
    return pd.DataFrame(list(rows.values()), columns=cols)
