"""Comparison figures, tables and the report of a suite, drawn from the MLflow store.

The store is the record: :func:`draw` reads the child runs of a suite's experiment with MLflow's
search API into pandas (one row per run, ``params.*``, ``metrics.*``, ``tags.*`` columns as
``mlflow.search_runs`` names them), fetches per-epoch curves with ``get_metric_history`` and the
``samples.png`` artifacts, and draws with seaborn into ``out/<suite>/``:

==========================  ===============================================================
``learning_curves.png``     ``val/elbo`` against epoch, mean and sd band over seeds
``test_log_likelihood.png`` ``test/elbo`` and ``test/log_px`` per objective and variant, mean
                            and sd over seeds, each seed a dot
``gaps.png``                Cremer, Li & Duvenaud (2018): log p(x) - ELBO = approximation gap
                            (log p(x) - ELBO of optimal local q) + amortization gap (ELBO of
                            local q - ELBO of the encoder's q), stacked per variant/objective
``gradient_snr.png``        Rainforth et al. (2018): encoder and decoder gradient SNR and
                            variance against the number of samples k, per objective
``throughput.png``          train and eval examples/s per variant, device and threads named
``cost_quality.png``        test log p(x) against training seconds (the cost-quality front)
``samples.png``             the ``samples.png`` artifact of every variant side by side
``published.png``           ours against the paper's numbers (suites with a ``[published]``
                            table only), one panel per metric, the line y = x
``summary.csv``/``runs.csv`` the tables: mean and sd over seeds / one row per run
``README.md``               the report: protocol, tables (mean +- sd, nats), figures, gaps in data
==========================  ===============================================================

All quantities are in nats per example, higher is better, except the gaps (lower is better) and
the gradient variance. Every variant keeps one colour in every figure (:func:`variant_colors`).
A half-finished store (failed or running runs, missing metrics, no runs at all) is reported in the
README and on stderr, and whatever exists is drawn.

A suite whose file carries a ``[published]`` table (``bench.config``: a paper's numbers keyed by
run config) also gets a "Published" section in the README, ``<metric> published`` and
``<metric> ours-published`` columns in ``summary.csv``, and ``published.png``; the difference is
always ours minus published, in the metric's own units and sign. Other suites are unchanged.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import sys
import tempfile
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

__all__ = ["draw", "run_figure", "load_runs", "variant_colors", "summary_table"]

# Fixed colours for the registered variants (seaborn's colour-blind palette), so a variant has
# the same colour in every figure of every suite. Names not listed get a stable colour from a
# hash of the name (see ``variant_colors``).
_CB = sns.color_palette("colorblind", 10)
_FIXED = {
    "vanilla": _CB[0],
    "iwae": _CB[1],
    "planar-flow": _CB[2],
    "iaf": _CB[3],
    "hierarchical": "#332288",  # indigo (Tol): the colour-blind palette's 4/5 sit near 6 and 1
    "ladder": _CB[9],
    "gumbel-softmax": _CB[6],
    "linear-gaussian": _CB[7],
}
_SPARE = [_CB[4], _CB[5], _CB[8], *sns.color_palette("dark", 10), *sns.color_palette("pastel", 10)]

# The final metrics of the tables, in report order:
# (metric, label, unit, higher is better?, decimals shown in the README).
TABLE_METRICS = [
    ("test/log_px", "log p(x)", "nats", True, 2),
    ("test/exact_log_px", "exact log p(x)", "nats", True, 2),
    ("test/elbo", "ELBO", "nats", True, 2),
    ("test/recon", "recon.", "nats", True, 2),
    ("test/kl", "KL", "nats", False, 2),
    ("test/active_units", "active units", "count", True, 1),
    ("gap/approximation", "approx. gap", "nats", False, 2),
    ("gap/amortization", "amort. gap", "nats", False, 2),
    ("perf/train_examples_per_s", "train", "examples/s", True, 0),
    ("perf/eval_examples_per_s", "eval", "examples/s", True, 0),
    ("perf/train_seconds", "train time", "s", False, 2),
    ("perf/peak_mem_mb", "peak mem", "MB", False, 0),
]
# metrics only some variants have (the oracle's exact log-likelihood): absent is not missing
OPTIONAL_METRICS = {"test/exact_log_px"}
KEY = ["variant", "objective", "dataset"]
PROTOCOL_PARAMS = [
    "dataset", "binarization", "eval_k", "epochs", "batch_size", "lr", "latent_dim", "k",
    "device", "threads",
]
PROTOCOL_TAGS = ["device_name", "torch_version", "git_commit"]
_GRAD_RE = re.compile(r"^grad/(?P<objective>.+)/k(?P<k>\d+)/(?P<part>encoder|decoder)_(?P<stat>snr|var)$")
NATS = "nats per example"


def variant_colors(names) -> dict[str, tuple]:
    """Colour of each variant name: fixed for registered names, else stable per name.

    The fallback colour depends only on the name (crc32 into a spare palette), never on which
    other variants a suite holds, so a variant keeps its colour across figures and suites.
    """
    return {n: _FIXED.get(n) or _SPARE[zlib.crc32(n.encode()) % len(_SPARE)] for n in names}


# ----------------------------------------------------------------------------------- loading


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def load_runs(suite: str, tracking_uri: str) -> tuple[pd.DataFrame, list[str]]:
    """The child runs of ``suite`` as a DataFrame, and notes about what is missing.

    Columns: ``run_id``, ``run_name``, ``status``, ``start_time``, ``artifact_uri``, ``metrics.<m>``
    (last logged value), ``params.<p>`` (strings), ``tags.<t>``, plus ``variant``, ``objective``,
    ``dataset``, ``seed`` taken from the params. Children are runs tagged ``vaebench.role=child``
    or nested under a parent (``mlflow.parentRunId``). When a (variant, objective, dataset, seed)
    was run more than once (several invocations), the latest FINISHED run is kept (the latest run
    if none finished) and the others are counted in the notes.
    """
    notes: list[str] = []
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        return pd.DataFrame(), [f"no experiment named {suite!r} in {tracking_uri}: nothing has run yet"]
    rows, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        for r in page:
            tags = r.data.tags
            if tags.get("vaebench.role") != "child" and "mlflow.parentRunId" not in tags:
                continue
            row = {
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "status": r.info.status,
                "start_time": r.info.start_time,
                "artifact_uri": r.info.artifact_uri,
            }
            row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
            row.update({f"params.{k}": v for k, v in r.data.params.items()})
            row.update({f"tags.{k}": v for k, v in tags.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    if not rows:
        return pd.DataFrame(), [f"experiment {suite!r} has no child runs yet"]
    df = pd.DataFrame(rows)
    for col in KEY + ["seed"]:
        p = f"params.{col}"
        df[col] = df[p].fillna("?") if p in df else "?"
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce")
    # runs that differ only in k (Burda et al.'s k = 1, 5, 50) are distinct results: name k in
    # the objective's label wherever one (variant, objective, dataset) was run with several k
    k = df["params.k"].fillna("?") if "params.k" in df else pd.Series("?", index=df.index)
    several = k.groupby([df[c] for c in KEY]).transform("nunique") > 1
    df.loc[several, "objective"] = df.loc[several, "objective"] + " (k=" + k[several] + ")"
    df["_done"] = df["status"] == "FINISHED"
    df = df.sort_values(["_done", "start_time"])
    n = len(df)
    df = df.drop_duplicates(KEY + ["seed"], keep="last").drop(columns="_done")
    if len(df) < n:
        notes.append(
            f"{n - len(df)} other run(s) of an already reported variant/objective/dataset/seed "
            "(earlier invocations, or later ones that did not finish) are not shown"
        )
    bad = df[df["status"] != "FINISHED"]
    for _, r in bad.iterrows():
        notes.append(f"run {r['run_name']} is {r['status']}: its metrics so far are used")
    return df.sort_values(KEY + ["seed"]).reset_index(drop=True), notes


def _skipped(df: pd.DataFrame, metric: str) -> pd.Series:
    """Runs that skipped ``metric`` by design: the tag ``vaebench.skipped.<measurement>`` the
    driver sets (``bench.train.skipped_measurements``; ``gap/*`` is ``gaps``, ``grad/*`` ``grad``,
    ``test/<m>`` ``<m>``)."""
    name = {"gap": "gaps", "grad": "grad"}.get(metric.split("/")[0], metric.split("/")[-1])
    col = f"tags.vaebench.skipped.{name}"
    return df[col].notna() if col in df else pd.Series(False, index=df.index)


def _missing_notes(df: pd.DataFrame, metrics: list[str]) -> list[str]:
    """One note per set of runs that lacks the same metrics: "metric(s) a, b missing in ...".
    A metric a run skipped by design (not applicable to its variant, the reason in its tags) is
    not missing."""
    by_runs: dict[tuple[str, ...], list[str]] = {}
    for m in metrics:
        col = f"metrics.{m}"
        lacking = df[col].isna() if col in df else pd.Series(True, index=df.index)
        missing = df["run_name"][lacking & ~_skipped(df, m)]
        if len(missing):
            by_runs.setdefault(tuple(missing.astype(str)), []).append(m)
    notes = []
    for runs, ms in by_runs.items():
        names = ", ".join(runs[:6]) + (" ..." if len(runs) > 6 else "")
        notes.append(f"metric(s) {', '.join(ms)} missing in {len(runs)} of {len(df)} run(s): {names}")
    return notes


def _history(client, df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per-step values of ``key`` for every run: columns run_id, variant, objective, seed, step, value."""
    out = []
    for _, r in df.iterrows():
        for m in client.get_metric_history(r["run_id"], key):
            out.append({"run_id": r["run_id"], "variant": r["variant"], "objective": r["objective"],
                        "dataset": r["dataset"], "seed": r["seed"], "step": m.step, "value": m.value})
    return pd.DataFrame(out, columns=["run_id", "variant", "objective", "dataset", "seed", "step", "value"])


# ----------------------------------------------------------------------------------- tables


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count over seeds of every table metric, per (variant, objective, dataset).

    Columns ``<metric> mean``, ``<metric> sd`` (sample sd, ddof=1; NaN for one seed) and
    ``seeds`` (number of runs in the group). Runs missing a metric are left out of its mean.
    """
    rows = []
    for key, g in df.groupby(KEY, sort=True):
        row = dict(zip(KEY, key))
        row["seeds"] = len(g)
        for m, *_ in TABLE_METRICS:
            v = g[f"metrics.{m}"].dropna() if f"metrics.{m}" in g else pd.Series(dtype=float)
            row[f"{m} mean"] = v.mean() if len(v) else np.nan
            row[f"{m} sd"] = v.std(ddof=1) if len(v) > 1 else np.nan
            row[f"{m} n"] = len(v)
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(mean: float, sd: float, n: int, digits: int) -> str:
    if n == 0 or not np.isfinite(mean):
        return "—"
    s = f"{mean:.{digits}f}"
    if n > 1 and np.isfinite(sd):
        s += f" ± {sd:.{digits}f}"
    return s


def _markdown_table(summary: pd.DataFrame) -> str:
    present = [t for t in TABLE_METRICS if summary[f"{t[0]} n"].sum() > 0]
    head = ["variant", "objective", "dataset", "seeds"] + [
        f"{label} [{unit}] {'↑' if up else '↓'}" for _, label, unit, up, _ in present
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [str(r["variant"]), str(r["objective"]), str(r["dataset"]), str(r["seeds"])]
        cells += [_fmt(r[f"{m} mean"], r[f"{m} sd"], r[f"{m} n"], d) for m, *_, d in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- figures


def _ordered(df: pd.DataFrame) -> tuple[list[str], list[str], dict]:
    variants = sorted(df["variant"].unique())
    objectives = sorted(df["objective"].unique())
    return variants, objectives, variant_colors(variants)


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)


def _learning_curves(client, df, path, written, notes):
    h = _history(client, df, "val/elbo")
    if h.empty:
        notes.append("no val/elbo history in any run: learning curves not drawn")
        return
    variants, objectives, pal = _ordered(df)
    datasets = sorted(h["dataset"].unique())
    fig, axes = plt.subplots(len(datasets), 1, figsize=(8.5, 4.5 * len(datasets)), squeeze=False)
    for ax, ds in zip(axes[:, 0], datasets):
        d = h[h["dataset"] == ds]
        sns.lineplot(data=d, x="step", y="value", hue="variant",
                     hue_order=[v for v in variants if v in set(d["variant"])], palette=pal,
                     style="objective", style_order=[o for o in objectives if o in set(d["objective"])],
                     errorbar="sd", markers=True, dashes=True, ax=ax)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel=f"validation ELBO [{NATS}] (higher is better)",
               title=f"Learning curves on {ds} (mean ± sd over seeds)")
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, written)


def _group_label(variant: str, objective: str) -> str:
    return f"{variant}\n{objective}"


def _points(ax, data, variants, pal, y):
    """One x slot per (variant, objective), coloured by variant: the mean (large marker) with sd
    error bars over seeds, each seed a small dot. Points, not bars: the values are negative nats."""
    data = data.assign(group=[_group_label(v, o) for v, o in zip(data["variant"], data["objective"])])
    order = sorted(set(data["group"]), key=lambda g: (variants.index(g.split("\n")[0]), g))
    present = [v for v in variants if v in set(data["variant"])]
    sns.stripplot(data=data, x="group", y=y, hue="variant", order=order, hue_order=present,
                  palette=pal, alpha=0.5, size=5, legend=False, ax=ax)
    sns.pointplot(data=data, x="group", y=y, hue="variant", order=order, hue_order=present,
                  palette=pal, errorbar="sd", linestyle="none", markers="D", markersize=8,
                  capsize=0.15, err_kws={"linewidth": 1.5}, legend=False, ax=ax)
    ax.tick_params(axis="x", labelsize=9)
    if len(order) > 6:
        ax.tick_params(axis="x", labelrotation=45)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")


def _grid_by_dataset(df, path, written, cols, ylabels, titles, note, zero=False):
    """One panel per (dataset, metric in ``cols``), stacked in one column so the figure stays
    legible at the width GitHub shows it (datasets are never mixed in a panel: their values are
    not comparable); x = variant and training objective, colour = variant, mean ± sd over seeds.
    ``zero``: the y axis starts at 0 (rates, where ratios matter)."""
    cols = [c for c in cols if c in df and df[c].notna().any()]
    if not cols:
        return False
    variants, _, pal = _ordered(df)
    datasets = sorted(df["dataset"].unique())
    groups = df[["dataset", "variant", "objective"]].drop_duplicates().groupby("dataset").size().max()
    width = min(max(5.0, 0.8 * groups + 2.0), 10.0)
    fig, axes = plt.subplots(len(datasets) * len(cols), 1, figsize=(width, 4.2 * len(datasets) * len(cols)),
                             squeeze=False)
    for i, ds in enumerate(datasets):
        for ax, c, ylabel, title in zip(axes[i * len(cols):, 0], cols, ylabels, titles):
            d = df[(df["dataset"] == ds) & df[c].notna()]
            if d.empty:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            else:
                _points(ax, d, variants, pal, c)
                if zero:
                    ax.set_ylim(0, 1.1 * d[c].max())
            ax.set(xlabel="variant / training objective", ylabel=ylabel, title=f"{title} on {ds}")
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.suptitle(note, fontsize=10, y=1.0, va="bottom")  # above the panels; bbox "tight" keeps it
    _save(fig, path, written)
    return True


def _test_ll(df, path, written, notes):
    if not _grid_by_dataset(
            df, path, written, ["metrics.test/log_px", "metrics.test/elbo"],
            [f"test log p(x) [{NATS}]", f"test ELBO [{NATS}]"],
            ["Test log p(x), IWAE estimate with eval_k samples", "Test ELBO"],
            "higher is better; large marker: mean ± sd over seeds, small dots: seeds"):
        notes.append("no test/log_px or test/elbo in any run: test log-likelihood figure not drawn")


def _gaps(df, path, written, notes):
    a, m = "metrics.gap/approximation", "metrics.gap/amortization"
    if a not in df or m not in df:
        notes.append("no gap/approximation or gap/amortization in any run: gap figure not drawn")
        return
    d = df[df[a].notna() & df[m].notna()]
    if d.empty:
        notes.append("no run has both gap metrics: gap figure not drawn")
        return
    variants, _, pal = _ordered(df)
    g = pd.DataFrame(
        [(*key, gg[a].mean(), gg[m].mean(), _sd(gg[a] + gg[m]))
         for key, gg in d.groupby(KEY, sort=True)],
        columns=[*KEY, "approximation", "amortization", "sd"])
    multi_ds = g["dataset"].nunique() > 1
    labels = [f"{v}\n{o}" + (f"\n{ds}" if multi_ds else "")
              for v, o, ds in zip(g["variant"], g["objective"], g["dataset"])]
    x = np.arange(len(g))
    colors = [pal[v] for v in g["variant"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(g) + 2), 4.8))
    am, mm = g["approximation"].to_numpy(), g["amortization"].to_numpy()
    ax.bar(x, am, color=colors, edgecolor="black", label="approximation gap")
    ax.bar(x, mm, bottom=am, color=colors, edgecolor="black", hatch="//", alpha=0.55,
           label="amortization gap")
    ax.errorbar(x, am + mm, yerr=g["sd"].to_numpy(), fmt="none", ecolor="black", capsize=4)
    ax.set_xticks(x, labels, fontsize=9)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel=f"log p(x) − ELBO [{NATS}] (lower is better)",
           title="Inference gap = approximation (solid) + amortization (hatched)\n"
                 "mean over seeds, error bar: sd of the total")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", label="approximation gap"),
                       Patch(facecolor="white", edgecolor="black", hatch="//", label="amortization gap")],
              fontsize=9)
    ax.xaxis.grid(False)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, written)


def _grad_frame(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in df.iterrows():
        found = False
        for col in df.columns:
            mt = _GRAD_RE.match(col[len("metrics."):]) if col.startswith("metrics.") else None
            if mt and pd.notna(r[col]):
                found = True
                rows.append({"variant": r["variant"], "objective": mt["objective"], "k": int(mt["k"]),
                             "part": mt["part"], "stat": mt["stat"], "value": r[col], "seed": r["seed"]})
        if not found:  # fall back to the run's own objective and k
            for part in ("encoder", "decoder"):
                for stat in ("snr", "var"):
                    c = f"metrics.grad/{part}_{stat}"
                    k = pd.to_numeric(r.get("params.k"), errors="coerce")
                    if c in df and pd.notna(r[c]) and pd.notna(k):
                        rows.append({"variant": r["variant"], "objective": r.get("params.objective", r["objective"]), "k": int(k),
                                     "part": part, "stat": stat, "value": r[c], "seed": r["seed"]})
    return pd.DataFrame(rows, columns=["variant", "objective", "k", "part", "stat", "value", "seed"])


def _gradients(df, path, written, notes):
    g = _grad_frame(df)
    if g.empty:
        notes.append("no grad/* metrics in any run: gradient figure not drawn")
        return
    variants, _, pal = _ordered(df)
    present = [v for v in variants if v in set(g["variant"])]
    objectives = sorted(g["objective"].unique())
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), squeeze=False)
    for i, stat in enumerate(("snr", "var")):
        for j, part in enumerate(("encoder", "decoder")):
            ax = axes[i][j]
            d = g[(g["stat"] == stat) & (g["part"] == part) & (g["value"] > 0)]
            if d.empty:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            else:
                sns.lineplot(data=d, x="k", y="value", hue="variant", hue_order=present,
                             palette=pal, style="objective", style_order=objectives, markers=True,
                             errorbar="sd", ax=ax, legend=i == 0 and j == 1)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ks = sorted(d["k"].unique())
                ax.set_xticks(ks, [str(k) for k in ks])
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                if i == 0 and j == 1:
                    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9)
            what = "SNR = |mean| / sd (higher is better)" if stat == "snr" else "variance (lower is better)"
            ax.set(xlabel="samples per example k", ylabel=f"{part} gradient {what.split(' (')[0]}",
                   title=f"{part.capitalize()} gradient {what}")
            ax.grid(alpha=0.3, which="both")
    fig.suptitle("Gradient estimator quality against k (Rainforth et al. 2018), "
                 "averaged over parameters; mean ± sd over seeds", fontsize=11)
    fig.tight_layout()
    _save(fig, path, written)


def _device_label(df: pd.DataFrame) -> str:
    parts = []
    for col in ("tags.device_name", "params.device", "params.threads"):
        if col in df:
            vals = sorted({str(v) for v in df[col].dropna()})
            if vals:
                name = {"tags.device_name": "", "params.device": "device ",
                        "params.threads": "threads "}[col]
                parts.append(name + "/".join(vals))
    return ", ".join(parts) or "device not recorded"


def _throughput(df, path, written, notes):
    if not _grid_by_dataset(
            df, path, written,
            ["metrics.perf/train_examples_per_s", "metrics.perf/eval_examples_per_s"],
            ["training throughput [examples / s]", "evaluation throughput [examples / s]"],
            ["Training throughput", "Evaluation throughput"],
            f"higher is better; mean ± sd over seeds — {_device_label(df)}", zero=True):
        notes.append("no perf/*_examples_per_s in any run: throughput figure not drawn")


def _sd(values: pd.Series) -> float:
    """Sample sd over seeds; 0 for a single seed (an error bar of nothing, not NaN)."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _cost_quality(df, path, written, notes):
    x, y = "metrics.perf/train_seconds", "metrics.test/log_px"
    if x not in df or y not in df or df[[x, y]].dropna().empty:
        notes.append("no run has both perf/train_seconds and test/log_px: cost-quality figure not drawn")
        return
    variants, objectives, pal = _ordered(df)
    markers = dict(zip(objectives, ["o", "X", "s", "P", "D", "^", "v", "*", "p", "h"] * 3))
    datasets = sorted(df["dataset"].unique())
    fig, axes = plt.subplots(len(datasets), 1, figsize=(8.5, 5 * len(datasets)), squeeze=False)
    for ax, ds in zip(axes[:, 0], datasets):
        d = df[(df["dataset"] == ds) & df[x].notna() & df[y].notna()]
        if d.empty:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        else:
            sns.scatterplot(data=d, x=x, y=y, hue="variant", hue_order=variants, palette=pal,
                            style="objective", style_order=objectives, markers=markers, s=40,
                            alpha=0.45, ax=ax, legend=False)
            for (v, o), g in d.groupby(["variant", "objective"], sort=True):
                ax.errorbar(g[x].mean(), g[y].mean(), xerr=_sd(g[x]), yerr=_sd(g[y]), fmt=markers[o],
                            color=pal[v], markersize=9, markeredgecolor="black", capsize=3,
                            label=f"{v} / {o}")
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set(xlabel="training time [s]", ylabel=f"test log p(x) [{NATS}] (higher is better)",
               title=f"Cost-quality front on {ds}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.suptitle(f"large markers: mean ± sd over seeds, small: seeds\n{_device_label(df)}",
                 fontsize=10, y=1.0, va="bottom")
    _save(fig, path, written)


def _samples(client, df, path, written, notes):
    import matplotlib.image as mpimg

    groups = list(df.groupby(["variant", "objective", "dataset"], sort=True))
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for (v, o, ds), g in groups:
            r = g.sort_values("seed").iloc[0]
            try:
                local = client.download_artifacts(r["run_id"], "samples.png", tmp)
                images.append((v, o, ds, int(r["seed"]) if pd.notna(r["seed"]) else "?",
                               mpimg.imread(local)))
            except Exception as exc:  # a missing artifact is reported, not fatal
                notes.append(f"no samples.png artifact in run {r['run_name']} ({type(exc).__name__})")
    if not images:
        notes.append("no samples.png artifact in any run: samples figure not drawn")
        return
    n = len(images)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    _, _, pal = _ordered(df)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 4.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    multi_ds = len({i[2] for i in images}) > 1
    for ax, (v, o, ds, seed, img) in zip(axes.flat, images):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"{v}\n{o}, seed {seed}" + (f", {ds}" if multi_ds else ""), fontsize=10,
                     color=pal[v], fontweight="bold")
    fig.suptitle("Samples x ~ p(x|z), z ~ p(z) of every variant", fontsize=12)
    fig.tight_layout()
    _save(fig, path, written)


# ----------------------------------------------------------------------------------- report


def _protocol(df: pd.DataFrame) -> list[str]:
    import mlflow

    lines = ["| setting | value(s) over the runs (distinct values separated by ;) |", "|---|---|"]

    def row(name: str, col: str) -> None:
        vals = sorted({str(v) for v in df[col].dropna()}) if col in df else []
        text = "; ".join(v if v else "(empty)" for v in vals) if vals else "not recorded"
        lines.append(f"| {name} | {text.replace('|', '/')} |")

    others = sorted(c.removeprefix("params.") for c in df.columns if c.startswith("params."))
    shown = {"variant", "objective", "seed"}  # in the results table
    for p in PROTOCOL_PARAMS + [p for p in others if p not in PROTOCOL_PARAMS and p not in shown]:
        row(p, f"params.{p}")
    for t in PROTOCOL_TAGS:
        row(t, f"tags.{t}")
    lines.append(f"| mlflow | {mlflow.__version__} |")
    seeds = sorted({int(s) for s in df["seed"].dropna()})
    lines.append(f"| seeds | {', '.join(map(str, seeds)) or 'not recorded'} |")
    start = pd.to_datetime(df["start_time"].dropna(), unit="ms", utc=True)
    if len(start):
        lines.append(f"| runs started (UTC) | {start.min():%Y-%m-%d %H:%M} to {start.max():%Y-%m-%d %H:%M} |")
    return lines


def _report(suite, df, summary, figures, notes, tracking_uri, published_md=()) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# vaebench results: suite `{suite}`", "",
           f"Drawn by `python -m bench plots` on {now} from the MLflow store `{tracking_uri}` "
           "(the store is the record; this directory is generated, never hand-edited).", ""]
    if notes:
        out += ["## What is missing", ""] + [f"- {n}" for n in notes] + [""]
    if df.empty:
        out += ["No runs to report: run the suite first "
                f"(`python -m bench run --suite {suite}`).", ""]
        return "\n".join(out)
    out += ["## Results", "",
            "Mean ± sd over seeds (sample sd; a single seed shows its value alone). Bounds and "
            f"log-likelihoods are in {NATS}: **higher is better** (↑); KL and the gaps: lower is "
            "better (↓). `log p(x)` is the importance-sampled estimate with `eval_k` samples "
            "(Burda et al. 2016). The same table is in `summary.csv` (means, sds and counts) and "
            "every run in `runs.csv`.", "", _markdown_table(summary), "", *published_md]
    captions = {
        "learning_curves.png": "Validation ELBO against epoch, mean ± sd over seeds.",
        "test_log_likelihood.png": "Test ELBO and log p(x) per objective and variant; bars: mean, "
                                   "whiskers: sd over seeds, dots: seeds.",
        "gaps.png": "Inference gap log p(x) − ELBO split into the approximation gap (solid) and "
                    "the amortization gap (hatched) (Cremer et al. 2018).",
        "gradient_snr.png": "Encoder and decoder gradient SNR and variance against k, per "
                            "objective (Rainforth et al. 2018).",
        "throughput.png": "Training and evaluation throughput.",
        "cost_quality.png": "Test log p(x) against training time: the cost-quality front.",
        "samples.png": "Samples from each variant (first seed).",
        "published.png": "Ours (mean ± sd over seeds) against the paper's number; on the dashed "
                         "line y = x they agree.",
    }
    out += ["## Figures", ""]
    for f in figures:
        out += [f"### {f.stem.replace('_', ' ')}", "", captions.get(f.name, ""), "", f"![{f.stem}]({f.name})", ""]
    out += ["## Protocol", "", *_protocol(df), "",
            f"{len(df)} run(s); statuses: "
            + ", ".join(f"{s} {n}" for s, n in df["status"].value_counts().sort_index().items()), ""]
    return "\n".join(out)


def draw(suite: str, out: Path, tracking_uri: str, published=None) -> list[Path]:
    """Draw the figures, tables and report of ``suite`` into ``out/<suite>/``; return the paths.

    Reads the suite's child runs from the store at ``tracking_uri``. Whatever is missing (no
    experiment, no runs, failed runs, metrics or artifacts missing in some runs) is written to
    the report's "What is missing" section and to stderr; the figures that can be drawn are.
    ``published`` (a :class:`bench.config.Published`; default: the ``[published]`` table of the
    suite file ``bench/suites/<suite>.toml``, if any) puts the paper's numbers beside ours.
    Returns the files written (PNGs, CSVs, README.md), README last.
    """
    from bench import config

    dest = Path(out) / suite
    dest.mkdir(parents=True, exist_ok=True)
    if published is None:
        published = config.load_published(suite)
    df, notes = load_runs(suite, tracking_uri)
    written: list[Path] = []
    summary = pd.DataFrame()
    published_md: list[str] = []
    if not df.empty:
        notes += _missing_notes(df, [m for m, *_ in TABLE_METRICS if m not in OPTIONAL_METRICS] + ["val/elbo"])
        client = _client(tracking_uri)
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.95):
            _learning_curves(client, df, dest / "learning_curves.png", written, notes)
            _test_ll(df, dest / "test_log_likelihood.png", written, notes)
            _gaps(df, dest / "gaps.png", written, notes)
            _gradients(df, dest / "gradient_snr.png", written, notes)
            _throughput(df, dest / "throughput.png", written, notes)
            _cost_quality(df, dest / "cost_quality.png", written, notes)
            _samples(client, df, dest / "samples.png", written, notes)
        summary = summary_table(df)
        if published is not None:
            pub = published_frame(df, published, notes)
            summary = with_published_columns(summary, pub)
            published_md = published_section(published, pub)
            with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.95):
                published_figure(pub, published, dest / "published.png", written, notes)
        summary.to_csv(dest / "summary.csv", index=False)
        keep = ["run_name", "run_id", "status", *KEY, "seed"] + sorted(
            c for c in df.columns if c.startswith(("metrics.", "params.")))
        df[keep].to_csv(dest / "runs.csv", index=False)
        written += [dest / "summary.csv", dest / "runs.csv"]
    figures = [p for p in written if p.suffix == ".png"]
    for n in notes:
        print(f"vaebench plots [{suite}]: {n}", file=sys.stderr)
    readme = dest / "README.md"
    readme.write_text(_report(suite, df, summary, figures, notes, tracking_uri, published_md), encoding="utf-8")
    written.append(readme)
    return written


# ----------------------------------------------------------------------------------- published


def published_frame(df: pd.DataFrame, published, notes: list[str]) -> pd.DataFrame:
    """Ours beside the paper's: one row per (variant, objective, dataset) group and published metric.

    A group takes the published row that matches every one of its runs' params; no row or
    several rows (an ambiguous table) leave it out, with a note. Columns: the KEY columns,
    ``metric``, ``ours`` (mean over seeds), ``sd``, ``n`` (seeds with the metric), ``published``,
    ``diff`` = ours - published (NaN where ours is missing).
    """
    params = [c for c in df.columns if c.startswith("params.")]
    used, rows, absent = set(), [], {}
    for key, g in df.groupby(KEY, sort=True):
        runs = [{c.removeprefix("params."): v for c, v in r.items() if isinstance(v, str)}
                for r in g[params].to_dict("records")]
        hits = [i for i, row in enumerate(published.rows) if all(row.matches(p) for p in runs)]
        if len(hits) > 1:
            notes.append(f"published rows {', '.join(str(i + 1) for i in hits)} all match "
                         f"{'/'.join(key)}: the table is ambiguous, none is shown for it")
            continue
        if not hits:
            continue
        used.add(hits[0])
        for metric, value in published.rows[hits[0]].values.items():
            vals = g[f"metrics.{metric}"].dropna() if f"metrics.{metric}" in g else pd.Series(dtype=float)
            ours = float(vals.mean()) if len(vals) else np.nan
            rows.append(dict(zip(KEY, key), metric=metric, ours=ours, sd=_sd(vals) if len(vals) else np.nan,
                             n=len(vals), published=value, diff=ours - value))
            if not len(vals):
                absent.setdefault(metric, []).append("/".join(key))
    for metric, groups in absent.items():
        notes.append(f"published {metric} has no measured counterpart in {len(groups)} group(s) "
                     f"({', '.join(groups[:4])}{' ...' if len(groups) > 4 else ''}): shown as —")
    unrun = [i for i in range(len(published.rows)) if i not in used]
    if unrun:
        desc = "; ".join(", ".join(f"{k}={v}" for k, v in published.rows[i].match.items()) for i in unrun[:8])
        notes.append(f"{len(unrun)} published result(s) have no run in the store ({desc}"
                     f"{' ...' if len(unrun) > 8 else ''})")
    return pd.DataFrame(rows, columns=[*KEY, "metric", "ours", "sd", "n", "published", "diff"])


def with_published_columns(summary: pd.DataFrame, pub: pd.DataFrame) -> pd.DataFrame:
    """``summary`` plus ``<metric> published`` and ``<metric> ours-published`` for every
    published metric (NaN for groups without a published number)."""
    out = summary.copy()
    for metric, g in pub.groupby("metric", sort=True):
        g = g.set_index(KEY)
        idx = pd.MultiIndex.from_frame(out[KEY])
        out[f"{metric} published"] = g["published"].reindex(idx).to_numpy()
        out[f"{metric} ours-published"] = g["diff"].reindex(idx).to_numpy()
    return out


def published_section(published, pub: pd.DataFrame) -> list[str]:
    """The README's "Published" section: the source, the protocol and the table."""
    label = {m: f"{lab} [{unit}] {'↑' if up else '↓'}" for m, lab, unit, up, _ in TABLE_METRICS}
    digits = {m: d for m, *_, d in TABLE_METRICS}
    out = ["## Published numbers", "",
           f"**Source:** {published.citation}, {published.table}.", "",
           f"**The paper's protocol:** {published.protocol}", ""]
    if published.note:
        out += [published.note, ""]
    out += [("**ours − published** is our mean over seeds minus the paper's number, in the metric's own "
             "units and sign: for a bound or log-likelihood (↑) a positive difference means ours is higher "
             "(better) than the paper's; for a count, ours has more. Every difference carries the protocol "
             "differences listed in the suite's description."), ""]
    if pub.empty:
        return out + ["No run of this suite matches a published result yet.", ""]
    out += ["| variant | objective | dataset | metric | ours | published | ours − published |",
            "|---|---|---|---|---|---|---|"]
    for _, r in pub.iterrows():
        d = digits.get(r["metric"], 0 if float(r["published"]).is_integer() else 2)
        ours = _fmt(r["ours"], r["sd"], int(r["n"]), d)
        diff = f"{r['diff']:+.{d}f}" if np.isfinite(r["diff"]) else "—"
        out.append(f"| {r['variant']} | {r['objective']} | {r['dataset']} | {label.get(r['metric'], r['metric'])} "
                   f"| {ours} | {r['published']:.{d}f} | {diff} |")
    return out + [""]


def published_figure(pub: pd.DataFrame, published, path: Path, written: list[Path], notes: list[str]) -> None:
    """Ours against published, one panel per metric: a row per (variant, objective), the paper's
    number (open diamond) joined to ours (filled, mean ± sd over seeds), ours − published at the
    right. Legible at any distance between the two, which a y = x scatter is not."""
    pub = pub[pd.to_numeric(pub["ours"], errors="coerce").notna()]
    if pub.empty:
        notes.append("no run has a metric the published table gives: published figure not drawn")
        return
    metrics = list(dict.fromkeys(pub["metric"]))
    label = {m: f"{lab} [{unit}] {'(higher is better)' if up else '(lower is better)'}"
             for m, lab, unit, up, _ in TABLE_METRICS}
    digits = {m: d for m, *_, d in TABLE_METRICS}
    pal = variant_colors(sorted(pub["variant"].unique()))
    n_rows = max(len(pub[pub["metric"] == m]) for m in metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 1.2 + 0.42 * n_rows), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        d = pub[pub["metric"] == metric].reset_index(drop=True)
        multi_ds = d["dataset"].nunique() > 1
        names = [f"{v} / {o}" + (f" / {ds}" if multi_ds else "")
                 for v, o, ds in zip(d["variant"], d["objective"], d["dataset"])]
        y = np.arange(len(d))[::-1]
        sd = d["sd"].fillna(0).to_numpy()
        ax.hlines(y, d["published"], d["ours"], color="grey", lw=1, zorder=1)
        ax.scatter(d["published"], y, marker="D", s=55, facecolors="white", edgecolors="black", zorder=3,
                   label="published")
        for yi, (_, r), e in zip(y, d.iterrows(), sd):
            ax.errorbar(r["ours"], yi, xerr=e or None, fmt="o", color=pal[r["variant"]], markersize=8,
                        markeredgecolor="black", capsize=3, zorder=4)
        lo = min(d["published"].min(), (d["ours"] - sd).min())
        hi = max(d["published"].max(), (d["ours"] + sd).max())
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.set_xlim(lo - pad, hi + pad)
        for yi, diff in zip(y, d["diff"]):
            ax.annotate(f"{diff:+.{digits.get(metric, 2)}f}", (1.01, yi), xycoords=("axes fraction", "data"),
                        va="center", fontsize=9)
        ax.set_yticks(y, names, fontsize=9)
        ax.set_ylim(-0.7, len(d) - 0.3)
        ax.scatter([], [], marker="o", color="grey", edgecolors="black", label="ours (mean ± sd over seeds)")
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
        ax.annotate("ours −\npublished", (1.01, 1.0), xycoords="axes fraction", va="bottom", fontsize=8)
        ax.set(xlabel=label.get(metric, metric))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Ours against {published.citation}, {published.table}", fontsize=10, y=1.0, va="bottom")
    fig.tight_layout()
    _save(fig, path, written)


def run_figure(history: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """A per-run figure of its per-epoch curves, logged by the harness as ``figures/curves.png``.

    ``history`` maps a metric name to ``[(epoch, value), ...]``. Panels, each drawn when present:
    ``train/loss`` (minus the training bound), ``val/elbo``, and every ``gap/*`` curve together
    (nats per example). An empty history writes a figure that says so.
    """
    panels = [("train/loss", ["train/loss"], "training loss = −bound [nats/example] (lower is better)"),
              ("val/elbo", ["val/elbo"], "validation ELBO [nats/example] (higher is better)"),
              ("gaps", sorted(k for k in history if k.startswith("gap/") and history[k]),
               "gap / bound [nats/example]")]
    panels = [p for p in panels if any(history.get(k) for k in p[1])]
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 3.8), squeeze=False)
        if not panels:
            axes[0][0].text(0.5, 0.5, "no per-epoch metrics logged", ha="center", va="center")
            axes[0][0].axis("off")
        for ax, (title, keys, ylabel) in zip(axes[0], panels):
            for k in keys:
                pts = sorted(history.get(k) or [])
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=k)
            ax.set(xlabel="epoch", ylabel=ylabel, title=title)
            if len(keys) > 1:
                ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
