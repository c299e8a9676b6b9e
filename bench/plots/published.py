"""A paper's numbers beside ours, for suites whose file carries a ``[published]`` table
(``bench.config``: the paper's numbers keyed by run config). The difference is always ours minus
published, in the metric's own units and sign."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench import vocabulary
from bench.plots.store import KEY
from bench.plots.style import WIDTH, variant_colors
from bench.plots.tables import fmt, sd


def _digits(metric: str, value: float) -> int:
    m = vocabulary.lookup(metric)
    return m.decimals if m is not None else (0 if float(value).is_integer() else 2)


def _head(metric: str) -> str:
    return vocabulary.head(metric) if vocabulary.lookup(metric) is not None else metric


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
            rows.append(dict(zip(KEY, key), metric=metric, ours=ours, sd=sd(vals) if len(vals) else np.nan,
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
        d = _digits(r["metric"], r["published"])
        ours = fmt(r["ours"], r["sd"], int(r["n"]), d)
        diff = f"{r['diff']:+.{d}f}" if np.isfinite(r["diff"]) else "—"
        out.append(f"| {r['variant']} | {r['objective']} | {r['dataset']} | {_head(r['metric'])} "
                   f"| {ours} | {r['published']:.{d}f} | {diff} |")
    return out + [""]


def published_figure(pub: pd.DataFrame, published, notes: list[str]):
    """Ours against published, one panel per metric: a row per (variant, objective), the paper's
    number (open diamond) joined to ours (filled, mean ± sd over seeds), ours − published at the
    right. Legible at any distance between the two, which a y = x scatter is not."""
    pub = pub[pd.to_numeric(pub["ours"], errors="coerce").notna()]
    if pub.empty:
        notes.append("no run has a metric the published table gives: published figure not drawn")
        return None
    metrics = list(dict.fromkeys(pub["metric"]))
    pal = variant_colors(sorted(pub["variant"].unique()))
    heights = [1.0 + 0.35 * len(pub[pub["metric"] == m]) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(WIDTH, sum(heights) + 0.5), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, metric in zip(axes[:, 0], metrics):
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
            ax.annotate(f"{diff:+.{_digits(metric, diff)}f}", (1.01, yi), xycoords=("axes fraction", "data"),
                        va="center", fontsize=9)
        ax.set_yticks(y, names, fontsize=9)
        ax.set_ylim(-0.7, len(d) - 0.3)
        ax.scatter([], [], marker="o", color="grey", edgecolors="black", label="ours (mean ± sd over seeds)")
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
        ax.annotate("ours −\npublished", (1.01, 1.0), xycoords="axes fraction", va="bottom", fontsize=8)
        ax.set(xlabel=vocabulary.axis(metric) if vocabulary.lookup(metric) is not None else metric)
        ax.grid(axis="x", alpha=0.3)
    title = textwrap.fill(f"Ours against {published.citation}, {published.table}", 110)
    fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    fig.tight_layout()
    return fig
