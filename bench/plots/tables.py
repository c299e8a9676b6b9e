"""The tables: mean, sd and count over seeds per (variant, objective, dataset), and the report's
Markdown tables, one per ``bench.vocabulary.TABLES`` entry, each with its "how to read this" line."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench import vocabulary
from bench.plots.store import KEY, metric_names, setting_order, skip_reason, values

NA = "n/a"  # a measurement the variant skips by design (the reason under the table)
MISSING = "—"  # not in the store (a failed run, or an older version of the harness)


def table_columns(df: pd.DataFrame) -> list[str]:
    """The concrete metric names of every report table, in report order: fixed names always,
    patterns (``test/active_units_l<layer>``) expanded over the names the runs have."""
    names = metric_names(df)
    return [n for m in vocabulary.table_metrics() for n in vocabulary.expand(m, names)]


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count over seeds of every table metric, per (variant, objective, dataset).

    Columns ``<metric> mean``, ``<metric> sd`` (sample sd, ddof=1; NaN for one seed),
    ``<metric> n`` and ``seeds`` (number of runs in the group). Runs missing a metric are left
    out of its mean. The gradient SNRs also get ``<metric>_lo mean`` / ``_hi mean`` (their
    intervals, averaged over seeds).
    """
    cols = table_columns(df)
    cols += [f"{n}_{b}" for n in cols if n.startswith("grad/") for b in ("lo", "hi") if f"metrics.{n}_{b}" in df]
    rows = []
    for key, g in sorted(df.groupby(KEY, sort=True), key=lambda kg: (setting_order(kg[0][0]), *kg[0][1:])):
        row = dict(zip(KEY, key))
        row["seeds"] = len(g)
        for name in cols:
            v = values(g, name).dropna()
            row[f"{name} mean"] = v.mean() if len(v) else np.nan
            row[f"{name} sd"] = _sd_over_seeds(v)
            row[f"{name} n"] = len(v)
        rows.append(row)
    return pd.DataFrame(rows)


def _sd_over_seeds(v: pd.Series) -> float:
    """Sample sd of the seeds' values; NaN for one seed, and where a value is infinite (a
    deterministic gradient's SNR) unless every value is the same."""
    if len(v) < 2:
        return np.nan
    if not np.isfinite(v).all():
        return 0.0 if (v == v.iloc[0]).all() else np.nan
    return v.std(ddof=1)


def sd(values: pd.Series) -> float:
    """Sample sd over seeds; 0 for a single seed (an error bar of nothing, not NaN)."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def fmt(mean: float, sd: float, n: int, digits: int, thousands: bool = False) -> str:
    """``mean ± sd`` (``mean`` alone for one seed), or the missing mark."""
    if n == 0 or not np.isfinite(mean):
        return MISSING if n == 0 or np.isnan(mean) else ("inf" if mean > 0 else "-inf")
    f = f"{{:{',' if thousands else ''}.{digits}f}}"
    s = f.format(mean)
    if n > 1 and np.isfinite(sd):
        s += " ± " + f.format(sd)
    return s


def _cell(r: pd.Series, name: str, na: bool) -> str:
    m = vocabulary.get(name)
    if r[f"{name} n"] == 0:
        return NA if na else MISSING
    s = fmt(r[f"{name} mean"], r[f"{name} sd"], r[f"{name} n"], m.decimals, m.unit == "examples/s")
    if f"{name}_lo mean" in r and r[f"{name} n"] == 1 and np.isfinite(r[f"{name}_lo mean"]):
        s += f" [{r[f'{name}_lo mean']:.{m.decimals}f}, {r[f'{name}_hi mean']:.{m.decimals}f}]"
    if r[f"{name} n"] < r["seeds"]:  # a run of the group that did not get this far
        s += f" (n = {r[f'{name} n']})"
    return s


def markdown_tables(df: pd.DataFrame, summary: pd.DataFrame, level: str = "###") -> list[str]:
    """The report's results: one Markdown table per vocabulary table that has data, with its title
    and how-to-read line; a group's row appears where it has a value or a skip reason. A metric
    the group's runs skipped by design reads ``n/a``, its reason listed under the table."""
    out: list[str] = []
    cols = table_columns(df)
    nothing = {tuple(r[KEY]) for _, r in summary.iterrows()  # groups without a single table value
               if all(r[f"{n} n"] == 0 for n in cols)}
    first = True
    for table in vocabulary.TABLES.values():
        names = [n for n in cols if vocabulary.get(n).table == table.name and summary[f"{n} n"].sum() > 0]
        if not names:
            continue
        head = [*KEY, "seeds", *(vocabulary.head(n) for n in names)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        reasons: dict[tuple[str, str], list[str]] = {}  # (variant, reason) -> labels
        for _, r in summary.iterrows():
            g = df[(df[KEY] == r[KEY].to_numpy()).all(axis=1)]
            why = {n: skip_reason(g, n).dropna() for n in names}
            if all(r[f"{n} n"] == 0 and why[n].empty for n in names) and not (first and tuple(r[KEY]) in nothing):
                continue
            for n in names:
                if r[f"{n} n"] == 0 and len(why[n]):
                    labels = reasons.setdefault((r["variant"], str(why[n].iloc[0])), [])
                    if vocabulary.label_of(n) not in labels:
                        labels.append(vocabulary.label_of(n))
            cells = [str(r[c]) for c in KEY] + [str(r["seeds"])] + [_cell(r, n, bool(len(why[n]))) for n in names]
            lines.append("| " + " | ".join(cells) + " |")
        first = False
        out += [f"{level} {table.title}", "", table.how_to_read, "", *lines, ""]
        if reasons:
            out += [f"{NA}: not applicable, by design (the run's tag `vaebench.skipped.<measurement>`): "
                    + "; ".join(f"{v} ({', '.join(labels)}): {why}" for (v, why), labels in reasons.items()) + ".", ""]
    return out


def validation_section(runs: pd.DataFrame, history: pd.DataFrame, level: str = "###") -> list[str]:
    """The result of validation-only runs (``evaluate = "validation"``, which have no test metrics):
    per (variant, objective, dataset) the validation ELBO at the last epoch, and the best over the
    epochs with the epoch of it, mean ± sd over seeds. ``runs``: those runs (``store.load_runs``
    rows); ``history``: ``store.history`` of their ``val/elbo``. Markdown lines; none without one."""
    if runs.empty or history.empty:
        return []
    per_run = []
    for rid, h in history.groupby("run_id"):
        h = h.sort_values("step")
        best = h.loc[h["value"].idxmax()]
        per_run.append({"run_id": rid, "epoch": int(h["step"].iloc[-1]), "last": h["value"].iloc[-1],
                        "best": best["value"], "best_epoch": int(best["step"])})
    per_run = runs[[*KEY, "run_id"]].merge(pd.DataFrame(per_run), on="run_id")
    lines = ["| " + " | ".join([*KEY, "seeds", "epochs", "validation ELBO at the last epoch [nats] ↑",
                                "best validation ELBO [nats] ↑", "at epoch"]) + " |", "|" + "---|" * (len(KEY) + 5)]
    groups = sorted(per_run.groupby(KEY, sort=True), key=lambda kg: (setting_order(kg[0][0]), *kg[0][1:]))
    for key, g in groups:
        epochs = ", ".join(str(e) for e in sorted(set(g["epoch"])))
        lines.append("| " + " | ".join([*key, str(len(g)), epochs, fmt(g["last"].mean(), sd(g["last"]), len(g), 2),
                                         fmt(g["best"].mean(), sd(g["best"]), len(g), 2),
                                         ", ".join(str(e) for e in g["best_epoch"])]) + " |")
    return [f"{level} Validation ELBO of the validation-only runs", "",
            'Runs made with `evaluate = "validation"` train on the training split and are scored on the validation '
            "split only; they have no test metrics. Nats per example, higher is better: the validation ELBO after the "
            "run's last epoch and the best over its epochs, mean ± sd over seeds, and the epoch of each seed's best "
            "(a run still training shows the epoch it reached).", "", *lines, ""]
