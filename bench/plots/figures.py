"""The figure registry and the comparison figures of a suite.

A figure is one function decorated with :func:`figure` (file name, title, caption): it takes the
:class:`Context` (the suite's runs, the store, the notes) and returns a matplotlib figure, or None
after a note saying why it could not be drawn. ``bench.plots.report.draw`` iterates
:data:`FIGURES` in registration order; the report's caption of a figure is the one registered
with it. Adding a figure is one decorated function here.

Colours: a variant keeps one colour in every figure of every suite; a figure of a single variant
trained with several estimators colours the estimators instead (distinct within the figure); in
the gradient panels an estimator's colour is fixed by its place in its family. Every
figure is drawn for the ~900 px GitHub shows (:data:`bench.plots.style.WIDTH`): labels
horizontal, one panel per dataset (their values are not comparable), small multiples where one
axis would hold more than a handful of lines, and lines labelled at their ends rather than in a
legend. Names, labels, units and directions come from ``bench.vocabulary``.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from bench import vocabulary
from bench.plots import store
from bench.plots.store import KEY, setting_order, values
from bench.plots.style import WIDTH, estimator_color, variant_colors
from bench.plots.tables import sd

NATS = "nats per example"


@dataclass
class Context:
    """What a figure function may read."""

    suite: str
    df: pd.DataFrame  # bench.plots.store.load_runs
    tracking_uri: str
    notes: list[str]  # append a line when a figure cannot be drawn, or leaves something out
    published: object | None = None  # bench.suite.Published
    pub: pd.DataFrame | None = None  # bench.plots.published.published_frame
    trials: pd.DataFrame | None = None  # a searched suite's trials (bench.plots.store.load_trials)
    _client: object = field(default=None, repr=False)

    @property
    def client(self):
        if self._client is None:
            self._client = store.client(self.tracking_uri)
        return self._client


@dataclass(frozen=True)
class Figure:
    file: str
    title: str
    caption: str
    draw: Callable[[Context], object]
    published_only: bool = False  # drawn for suites with a [published] table only


FIGURES: dict[str, Figure] = {}


def figure(file: str, title: str, caption: str, published_only: bool = False):
    """Register a figure function under its file name (see the module docstring)."""

    def deco(fn):
        if file in FIGURES:
            raise ValueError(f"figure {file!r} registered twice")
        FIGURES[file] = Figure(file, title, caption, fn, published_only)
        return fn

    return deco


# -- helpers ----------------------------------------------------------------------------------------


def _group_label(variant: str, objective: str) -> str:
    """``variant / objective``, or the name alone where the two are one (``iwae``, ``vq-vae``)."""
    return variant if objective == variant else f"{variant} / {objective}"


def _colors(d: pd.DataFrame):
    """``color(variant, objective)``: the variant's fixed colour, or, where ``d`` holds a single
    variant trained with several objectives (the estimator suites), one colour per objective,
    distinct within the figure."""
    if d["variant"].nunique() == 1 and d["objective"].nunique() > 1:
        est = {o: estimator_color(i) for i, o in enumerate(sorted(d["objective"].unique()))}
        return lambda v, o: est[o]
    pal = variant_colors(sorted(d["variant"].unique()))
    return lambda v, o: pal[v]


def _spread(fracs: list[float], gap: float) -> list[float]:
    """Positions in [0, 1] (axes fraction) at least ``gap`` apart and in the same order as
    ``fracs``, each as near its own as that allows: labels at the ends of lines that end close."""
    order = sorted(range(len(fracs)), key=lambda i: fracs[i])
    pos = [min(max(fracs[i], 0.0), 1.0) for i in order]
    for i in range(1, len(pos)):
        pos[i] = max(pos[i], pos[i - 1] + gap)
    over = pos[-1] - 1.0 if pos else 0.0
    if over > 0:
        pos[-1] -= over
        for i in range(len(pos) - 2, -1, -1):
            pos[i] = min(pos[i], pos[i + 1] - gap)
    out = [0.0] * len(fracs)
    for j, i in enumerate(order):
        out[i] = pos[j]
    return out


def end_labels(ax, items: list[tuple[float, float, str, str]], fontsize: float = 8.0) -> None:
    """Label lines at the right edge of ``ax``: ``items`` = (x, y, text, colour) of each line's
    last point (data coordinates). Call after the axes' limits and the layout are final."""
    items = [i for i in items if np.isfinite(i[0]) and np.isfinite(i[1])]
    if not items:
        return
    to_axes = ax.transAxes.inverted()
    fracs = [float(to_axes.transform(ax.transData.transform((x, y)))[1]) for x, y, *_ in items]
    height_pt = ax.get_position().height * ax.figure.get_figheight() * 72
    placed = _spread(fracs, 1.15 * fontsize / max(height_pt, 1.0))
    for (_, _, text, color), f, p in zip(items, fracs, placed):
        ax.annotate(text, xy=(1.0, min(max(f, 0.0), 1.0)), xycoords="axes fraction", xytext=(1.03, p),
                    textcoords="axes fraction", color=color, fontsize=fontsize, va="center",
                    arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6, "alpha": 0.6} if abs(p - f) > 0.02 else None,
                    annotation_clip=False)


def _datasets(df: pd.DataFrame) -> list[str]:
    return sorted(df["dataset"].unique())


def _dataset_panels(d: pd.DataFrame, datasets: list[str], base: float, per_row: float):
    """One panel per dataset, stacked, each ``base + per_row x`` its variant / objective groups
    high (the rows of a dot or bar plot)."""
    sizes = [d[d["dataset"] == ds][["variant", "objective"]].drop_duplicates().shape[0] for ds in datasets]
    return _rows_figure([base + per_row * n for n in sizes])


def _rows_figure(heights: list[float], width: float = WIDTH, ncols: int = 1, **kw):
    """A figure of stacked panels whose heights follow their contents (rows of a dot plot)."""
    fig, axes = plt.subplots(len(heights), ncols, figsize=(width, sum(heights) + 0.4 * len(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False, **kw)
    return fig, axes


def _device_label(df: pd.DataFrame) -> str:
    parts = []
    for col, name in (("tags.device_name", ""), ("params.device", "device "), ("params.threads", "threads ")):
        if col in df:
            vals = sorted({str(v) for v in df[col].dropna()})
            if vals:
                parts.append(name + "/".join(vals))
    return ", ".join(parts) or "device not recorded"


# -- learning curves -----------------------------------------------------------------------------


@figure("learning_curves.png", "Learning curves",
        "Validation ELBO (nats per example, higher is better) against epoch, one panel per dataset, each "
        "line a variant / training objective labelled at its end: mean over seeds, band ± sd. The y axis "
        "starts where the curves have left their first epochs (the panel says when earlier values lie below it).")
def learning_curves(ctx: Context):
    h = store.history(ctx.client, ctx.df, "val/elbo")
    if h.empty:
        ctx.notes.append("no val/elbo history in any run: learning curves not drawn")
        return None
    datasets = sorted(h["dataset"].unique())
    color = _colors(h)
    fig, axes = plt.subplots(len(datasets), 1, figsize=(WIDTH * 0.78, 3.6 * len(datasets)), squeeze=False)
    labels = []
    for ax, ds in zip(axes[:, 0], datasets):
        d = h[h["dataset"] == ds]
        g = d.groupby(["variant", "objective", "step"])["value"].agg(["mean", "std"]).reset_index()
        last_epoch = int(g["step"].max())
        start = math.ceil(0.1 * last_epoch) if last_epoch >= 10 else 1  # (short runs: no cut)
        late = g[g["step"] >= start]["mean"] if (g["step"] >= start).any() else g["mean"]
        lo, hi = float(late.min()), float(g["mean"].max())
        pad = 0.06 * (hi - lo) if hi > lo else 1.0
        items = []
        for (v, o), c in g.groupby(["variant", "objective"], sort=True):
            style = ["-", "--", ":", "-."][sorted(d[d["variant"] == v]["objective"].unique()).index(o) % 4]
            ax.plot(c["step"], c["mean"], color=color(v, o), lw=1.6, ls=style, marker="o" if last_epoch < 15 else None,
                    ms=4)
            if c["std"].notna().any():
                ax.fill_between(c["step"], c["mean"] - c["std"], c["mean"] + c["std"], color=color(v, o), alpha=0.15,
                                lw=0)
            items.append((c["step"].iloc[-1], c["mean"].iloc[-1], _group_label(v, o), color(v, o)))
        ax.set_ylim(lo - pad, hi + pad)
        if (g["mean"] < lo - pad).any():
            ax.text(0.01, 0.02, f"below the axis: epochs before {start}", transform=ax.transAxes, fontsize=8,
                    color="0.35")
        ax.set_xlim(0.5 if last_epoch < 15 else 0, last_epoch + (0.5 if last_epoch < 15 else 0))
        if last_epoch < 15:
            ax.set_xticks(range(1, last_epoch + 1))
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel=vocabulary.axis("val/elbo").replace(" (", "\n("), title=f"{ds}")
        ax.grid(alpha=0.3)
        labels.append((ax, items))
    fig.tight_layout()
    for ax, items in labels:
        end_labels(ax, items)
    return fig


@figure("bounds_vs_examples.png", "Training and held-out bounds against training examples",
        "For suites whose runs a setting sets apart (the latent size of `kingma2014`, the prior of "
        "`priors`): one panel per setting, the training bound (solid: minus `train/loss`, the objective's "
        "value averaged over each epoch's minibatches while training) and the held-out bound (dashed: "
        "`val/elbo` after each epoch on the validation split) against the number of training examples "
        "evaluated (epochs x training images, log axis), as Kingma & Welling (2014) draw their Figure 2; "
        "mean over seeds. A gap opening between solid and dashed is overfitting.")
def bounds_vs_examples(ctx: Context):
    df = ctx.df
    if "setting" not in df or not (df["setting"] != "").any():
        return None  # a suite without settings that set runs apart: learning_curves.png is its figure
    train = store.history(ctx.client, df, "train/loss")
    held = store.history(ctx.client, df, "val/elbo")
    if train.empty and held.empty:
        ctx.notes.append("no train/loss or val/elbo history: bounds against training examples not drawn")
        return None
    train["value"] = -train["value"]
    n_train = pd.to_numeric(df.set_index("run_id").get("params.train_examples"), errors="coerce")
    setting = df.set_index("run_id")["setting"]
    base = df.set_index("run_id")["params.variant"]  # the variant's name, without the setting's label
    parts = []
    for h, kind in ((train, "train"), (held, "held-out")):
        if h.empty:
            continue
        h = h.assign(kind=kind, setting=h["run_id"].map(setting), model=h["run_id"].map(base),
                     examples=h["step"] * h["run_id"].map(n_train))
        parts.append(h[np.isfinite(h["value"]) & (h["examples"] > 0)])
    h = pd.concat(parts, ignore_index=True)
    if h["examples"].isna().all():
        ctx.notes.append("no run logged train_examples: bounds against training examples not drawn")
        return None
    g = h.groupby(["setting", "dataset", "model", "objective", "kind", "examples"])["value"].mean().reset_index()
    panels = sorted(g[["setting", "dataset"]].drop_duplicates().itertuples(index=False),
                    key=lambda p: (p[1], setting_order(p[0])))
    # the y range from one decade of examples on (the first epochs of a poor start would flatten the
    # rest); lines shorter than a decade keep all their points
    first = g.groupby(["setting", "model", "objective"])["examples"].transform("min")
    last = g.groupby(["setting", "model", "objective"])["examples"].transform("max")
    late = g[(g["examples"] >= 10 * first) | (last < 10 * first)]
    lo, hi = float(late["value"].min()), float(g["value"].max())
    pad = 0.06 * (hi - lo) if hi > lo else 1.0
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, 2.9 * nrows + 0.6), squeeze=False, sharey=True)
    lines = g[["model", "objective"]].drop_duplicates().sort_values(["model", "objective"])
    several_models = lines["model"].nunique() > 1
    palette = {(m, o): estimator_color(i) for i, (m, o) in enumerate(lines.itertuples(index=False))}
    cut = False
    for ax, (st, ds) in zip(axes.flat, panels):
        d = g[(g["setting"] == st) & (g["dataset"] == ds)]
        for (m, o, kind), c in d.groupby(["model", "objective", "kind"], sort=True):
            ax.plot(c["examples"], c["value"], color=palette[(m, o)], lw=1.5, ls="-" if kind == "train" else "--")
        cut |= bool((d["value"] < lo - pad).any())
        ax.set_xscale("log")
        ax.set_title(st + (f" ({ds})" if g["dataset"].nunique() > 1 else ""), fontsize=9)
        ax.grid(alpha=0.3, which="both", lw=0.5)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("bound [nats per example]\n(higher is better)")
    for ax in axes[-1, :]:
        ax.set_xlabel("training examples evaluated")
    axes[0, 0].set_ylim(lo - pad, hi + pad)
    handles = [plt.Line2D([], [], color=palette[(m, o)], lw=2, label=(f"{m} / {o}" if several_models else o))
               for m, o in lines.itertuples(index=False)]
    handles += [plt.Line2D([], [], color="0.3", ls="-", label="training"),
                plt.Line2D([], [], color="0.3", ls="--", label="held-out (validation)")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.05 if nrows > 1 else 0.08, 1, 1))
    if cut:
        ctx.notes.append("bounds_vs_examples.png: the first epochs of some runs lie below its y axis")
    return fig


# -- test log-likelihood --------------------------------------------------------------------------

_LL_MARKS = [  # (metric, legend, marker kwargs)
    ("test/elbo", "ELBO", {"marker": "o", "facecolor": "white"}),
    ("test/log_px", "log p(x), IWAE with eval_k samples", {"marker": "o"}),
    ("test/log_px_ais", "log p(x), AIS", {"marker": "x"}),
    ("test/exact_log_px", "exact log p(x)", {"marker": "|"}),
]


@figure("test_log_likelihood.png", "Test log-likelihood and ELBO",
        "Per variant / training objective, nats per test example, higher is better: the ELBO (open "
        "circle) and the importance-sampled log p(x) (filled; `eval_k` samples), joined by a segment, the "
        "bound's gap; × the AIS estimate and | the exact log p(x) where a run has them (the pPCA oracle has "
        "the exact one). Mean ± sd over seeds (error bars), small dots single seeds; rows sorted by log p(x); "
        "one panel per dataset.")
def test_log_likelihood(ctx: Context):
    df = ctx.df
    marks = [(m, lab, kw) for m, lab, kw in _LL_MARKS if values(df, m).notna().any()]
    if not any(m in ("test/elbo", "test/log_px") for m, *_ in marks):
        ctx.notes.append("no test/log_px or test/elbo in any run: test log-likelihood figure not drawn")
        return None
    datasets = [ds for ds in _datasets(df) if any(values(df[df["dataset"] == ds], m).notna().any() for m, *_ in marks)]
    color = _colors(df)
    fig, axes = _dataset_panels(df, datasets, 0.6, 0.3)
    for ax, ds in zip(axes[:, 0], datasets):
        d = df[df["dataset"] == ds]
        groups = []
        for (v, o), g in d.groupby(["variant", "objective"], sort=True):
            means = {m: values(g, m).dropna() for m, *_ in marks}
            order = means["test/log_px"].mean() if "test/log_px" in means and len(means["test/log_px"]) else (
                means["test/elbo"].mean() if "test/elbo" in means and len(means["test/elbo"]) else -np.inf)
            groups.append((order, v, o, g, means))
        groups.sort(key=lambda t: (np.nan_to_num(t[0], nan=-np.inf), t[1]))
        for y, (_, v, o, _, means) in enumerate(groups):
            have = [means[m].mean() for m in ("test/elbo", "test/log_px") if m in means and len(means[m])]
            if len(have) == 2:
                ax.plot(have, [y, y], color=color(v, o), lw=2, alpha=0.5, zorder=1)
            for m, _, kw in marks:
                vals = means[m]
                if not len(vals):
                    continue
                ax.scatter(vals, [y] * len(vals), color=color(v, o), s=10, alpha=0.5, zorder=2)
                exact = kw["marker"] == "|"
                c = "black" if exact else color(v, o)
                ax.errorbar(vals.mean(), y, xerr=sd(vals) or None, fmt=kw["marker"], color=c,
                            mfc=kw.get("facecolor", c), mec="black" if kw["marker"] == "o" else c,
                            ms=16 if exact else 8, mew=2.0 if exact else 1.0, capsize=3, zorder=4 if exact else 3)
        ax.set_yticks(range(len(groups)), [_group_label(v, o) for _, v, o, *_ in groups], fontsize=9)
        ax.set_ylim(-0.6, len(groups) - 0.4)
        ax.set_title(ds, fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"test bound / log p(x) [{NATS}] (higher is better)", fontsize=9)
    handles = [plt.Line2D([], [], ls="none", marker=kw["marker"], color="black" if kw["marker"] == "|" else "0.3",
                          mfc=kw.get("facecolor", "0.3"), mec="black" if kw["marker"] in "o|" else "0.3",
                          ms=8 if kw["marker"] != "|" else 12, mew=1 if kw["marker"] != "|" else 2, label=lab)
               for _, lab, kw in marks]
    axes[0, 0].legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.08), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


# -- gaps ------------------------------------------------------------------------------------------


@figure("gaps.png", "Inference gaps",
        "The inference gap log p(x) − ELBO of each variant / training objective split as Cremer, Li & "
        "Duvenaud (2018) do: approximation gap (solid; the best per-datapoint q of the family against the true "
        "posterior) plus amortization gap (hatched; the encoder against that q), nats per example on a fixed "
        "test subset, lower is better; mean over seeds, error bar the sd of the total. \"no gain on N%\": the "
        "share of examples where the per-datapoint optimization did not beat the encoder, so there the "
        "amortization gap is 0 by construction.")
def gaps(ctx: Context):
    a, m = values(ctx.df, "gap/approximation"), values(ctx.df, "gap/amortization")
    d = ctx.df[a.notna() & m.notna()]
    if d.empty:
        ctx.notes.append("no run has both gap/approximation and gap/amortization: gap figure not drawn")
        return None
    color = _colors(d)
    datasets = _datasets(d)
    fig, axes = _dataset_panels(d, datasets, 0.5, 0.32)
    for ax, ds in zip(axes[:, 0], datasets):
        dd = d[d["dataset"] == ds]
        rows = []
        for (v, o), g in dd.groupby(["variant", "objective"], sort=True):
            ap, am = values(g, "gap/approximation"), values(g, "gap/amortization")
            ng = values(g, "gap/local_no_gain").dropna()
            rows.append((ap.mean() + am.mean(), v, o, ap.mean(), am.mean(), sd(ap + am), ng.mean() if len(ng) else np.nan))
        rows.sort(key=lambda r: -r[0])
        y = np.arange(len(rows))
        colors = [color(r[1], r[2]) for r in rows]
        ap = np.array([r[3] for r in rows])
        am = np.array([r[4] for r in rows])
        ax.barh(y, ap, color=colors, edgecolor="black", height=0.7)
        ax.barh(y, am, left=ap, color=colors, edgecolor="black", hatch="//", alpha=0.5, height=0.7)
        ax.errorbar(ap + am, y, xerr=[r[5] for r in rows], fmt="none", ecolor="black", capsize=3)
        top = float((ap + am).max()) if len(rows) else 1.0
        for yi, r in zip(y, rows):
            text = f"{r[0]:.2f}" + (f"  (no gain on {r[6]:.0%})" if np.isfinite(r[6]) and r[6] >= 0.5 else "")
            ax.text(r[0] + r[5] + 0.01 * top, yi, text, va="center", fontsize=8)
        ax.set_yticks(y, [_group_label(r[1], r[2]) for r in rows], fontsize=9)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlim(0, 1.3 * top if top > 0 else 1.0)
        ax.set_title(ds, fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"log p(x) − ELBO [{NATS}] (lower is better)", fontsize=9)
    axes[0, 0].legend(handles=[Patch(facecolor="white", edgecolor="black", label="approximation gap"),
                               Patch(facecolor="white", edgecolor="black", hatch="//", label="amortization gap")],
                      loc="lower left", bbox_to_anchor=(0, 1.08), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


# -- gradients -------------------------------------------------------------------------------------

FAMILY_ORDER = ("reparameterized", "relaxed", "score function", "binary (ARM family)", "other")


def family(objective: str) -> str:
    """The estimator family, from what the objective registry declares: reparameterized
    (pathwise: ``reparam``, ``stop-q`` modes), relaxed (``relaxed``, ``straight-through``), the
    ARM family of binary latents (``needs binary_terms``: ARM, DisARM, REBAR, RELAX) and other
    score-function estimators (``score``)."""
    from bench import objectives

    try:
        s = objectives.spec(objective.split(" (k=")[0])
    except KeyError:
        return "other"
    if "binary_terms" in s.needs:
        return "binary (ARM family)"
    if s.modes & {"reparam", "stop-q"}:
        return "reparameterized"
    if s.modes & {"relaxed", "straight-through"}:
        return "relaxed"
    return "score function" if "score" in s.modes else "other"


def estimator_colors(names) -> dict[str, str]:
    """A fixed colour per estimator: its position among the registered members of its family."""
    from bench import objectives

    members: dict[str, list[str]] = {}
    for o in objectives.available():
        members.setdefault(family(o), []).append(o)
    out = {}
    for n in names:
        f = members.get(family(n), [])
        out[n] = estimator_color(f.index(n) if n in f else len(f))
    return out


def _gradient_figure(ctx: Context, group: str, stat: str, what: str):
    """The estimators' ``group`` gradient ``stat`` (``snr`` or ``var``): against k, one panel per
    variant and estimator family, when some estimator was measured at several k; else one panel
    per variant, an estimator a row (suites that train each estimator at its own k)."""
    g = store.gradient_frame(ctx.df)
    g = g[(g["group"] == group) & g[stat].notna()] if not g.empty else g
    if g.empty:
        ctx.notes.append(f"no grad/*{group}_{stat} metrics in any run: {group} gradient {what} figure not drawn")
        return None
    bad = g[~np.isfinite(g[stat]) | (g[stat] <= 0)]
    if len(bad):
        ctx.notes.append(f"{group} gradient {what}: {len(bad)} measurement(s) 0 or infinite (a group no gradient "
                         f"reaches, or a deterministic gradient) are not drawn on the log axis: "
                         + ", ".join(sorted({f'{r.variant}/{r.objective}/k{r.k}' for r in bad.itertuples()})[:6]))
    g = g[np.isfinite(g[stat]) & (g[stat] > 0)].copy()
    if g.empty:
        return None
    multi_ds = g["dataset"].nunique() > 1
    g["panel_variant"] = g["variant"] + (" on " + g["dataset"] if multi_ds else "")
    g["family"] = g["objective"].map(family)
    vmin, vmax = float(g[stat].min()), float(g[stat].max())
    if stat == "snr":
        lo_all = g["snr_lo"][g["snr_lo"] > 0]
        vmin = min(vmin, float(lo_all.min())) if len(lo_all) else vmin
        hi_all = g["snr_hi"].replace(np.inf, np.nan).dropna()
        vmax = max(vmax, float(hi_all.max())) if len(hi_all) else vmax
        floors = g["snr_floor"].replace(np.inf, np.nan).dropna()
        vmin = min(vmin, float(floors.min())) if len(floors) else vmin
        vmax = max(vmax, float(floors.max())) if len(floors) else vmax
    limits = (vmin / 1.6, vmax * 1.6)
    lines = bool((g.groupby(["panel_variant", "objective"])["k"].nunique() > 1).any())
    draw = _gradient_lines if lines else _gradient_dots
    fig = draw(ctx, g, stat, f"{group} gradient {what}", limits)
    epochs = sorted({str(e) for e in ctx.df.get("params.epochs", pd.Series(dtype=str)).dropna()})
    when = f"at the final parameters (epoch {'/'.join(epochs)})" if epochs else "at the final parameters"
    band = ("; band: 95% interval" if lines else "; bar: 95% interval") if stat == "snr" else ""
    fig.suptitle(f"{group.capitalize()} gradient {what} of each estimator {when}{band}", fontsize=10, y=1.0,
                 va="bottom")
    return fig


def _floor(ax, d: pd.DataFrame, df: pd.DataFrame, vertical: bool) -> None:
    """The plug-in SNR's noise floor at the panel's number of draws, dashed."""
    if "snr_floor" not in d or not d["snr_floor"].notna().any():
        return
    floor = float(d["snr_floor"].mean())
    if not np.isfinite(floor):  # (n = 2 draws: the plug-in has no finite floor)
        return
    line = ax.axvline if vertical else ax.axhline
    line(floor, color="0.35", ls="--", lw=1)
    if vertical:
        ax.text(floor, 1.0, f" plug-in floor{_draws(df, d)}", transform=ax.get_xaxis_transform(), fontsize=7,
                color="0.35", va="bottom", ha="center")
    else:
        ax.text(0.02, floor, f"plug-in floor{_draws(df, d)}", transform=ax.get_yaxis_transform(), fontsize=7,
                color="0.35", va="bottom")


def _gradient_lines(ctx: Context, g: pd.DataFrame, stat: str, ylabel: str, limits: tuple[float, float]):
    bottom, top = limits
    panels = sorted({(v, f) for v, f in zip(g["panel_variant"], g["family"])},
                    key=lambda t: (setting_order(t[0]), FAMILY_ORDER.index(t[1])))
    colors = estimator_colors(sorted(g["objective"].unique()))
    ks = sorted(g["k"].unique())
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, 2.2 * nrows + 0.4), squeeze=False, sharey=True)
    labels = []
    for ax, (pv, fam) in zip(axes.flat, panels):
        d = g[(g["panel_variant"] == pv) & (g["family"] == fam)]
        items = []
        for o, e in d.groupby("objective", sort=True):
            s = e.groupby("k").agg(mean=(stat, "mean"), lo=("snr_lo", "min"), hi=("snr_hi", "max")).reset_index()
            ax.plot(s["k"], s["mean"], color=colors[o], marker="o", ms=3.5, lw=1.5)
            if stat == "snr":
                ax.fill_between(s["k"], s["lo"].clip(lower=bottom), s["hi"].clip(upper=top), color=colors[o], alpha=0.13,
                                lw=0)
            items.append((s["k"].iloc[-1], s["mean"].iloc[-1], o, colors[o]))
        if stat == "snr":
            _floor(ax, d, ctx.df, vertical=False)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_yscale("log")
        ax.set_ylim(bottom, top)
        ax.set_title(f"{pv} · {fam}", fontsize=9, loc="left")
        ax.grid(alpha=0.3, which="major")
        ax.tick_params(labelsize=8)
        labels.append((ax, items))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=9)
    for ax in axes[-1, :]:
        ax.set_xlabel("samples per example k", fontsize=9)
    fig.tight_layout()
    fig.subplots_adjust(wspace=0.1 + 1.0 / max((WIDTH * 0.72) / ncols, 1.0), right=0.86)
    for ax, items in labels:
        end_labels(ax, items, fontsize=7.5)
    return fig


def _gradient_dots(ctx: Context, g: pd.DataFrame, stat: str, xlabel: str, limits: tuple[float, float]):
    """Each estimator at its one k: a row per estimator (best at the top), the value (mean over
    seeds) and, for the SNR, its 95% interval (the union over seeds)."""
    bottom, top = limits
    variants = sorted(g["panel_variant"].unique(), key=setting_order)
    colors = {o: estimator_color(i) for i, o in enumerate(sorted(g["objective"].unique()))}  # distinct here
    sizes = [g[g["panel_variant"] == v]["objective"].nunique() for v in variants]
    fig, axes = _rows_figure([0.5 + 0.3 * n for n in sizes], sharex=True)
    better = vocabulary.HIGHER if stat == "snr" else vocabulary.LOWER
    for ax, v in zip(axes[:, 0], variants):
        d = g[g["panel_variant"] == v]
        rows = []
        for o, e in d.groupby("objective", sort=True):
            k = sorted(e["k"].unique())
            rows.append((float(e[stat].mean()), o, "/".join(map(str, k)), float(e["snr_lo"].min()),
                         float(e["snr_hi"].max())))
        rows.sort(key=lambda r: r[0] if better == vocabulary.HIGHER else -r[0])
        for y, (val, o, _, lo, hi) in enumerate(rows):
            err = None
            if stat == "snr" and np.isfinite(lo) and np.isfinite(hi):
                err = [[max(val - max(lo, bottom), 0.0)], [max(min(hi, top) - val, 0.0)]]
            ax.errorbar(val, y, xerr=err, fmt="o", color=colors[o], capsize=3, ms=7, mec="black")
            ax.text(val, y + 0.28, f"{val:.3g}", fontsize=7.5, ha="center", va="bottom", color="0.25")
        if stat == "snr":
            _floor(ax, d, ctx.df, vertical=True)
        ax.set_yticks(range(len(rows)), [f"{o} (k={k})" for _, o, k, *_ in rows], fontsize=9)
        ax.set_ylim(-0.6, len(rows) - 0.2)
        ax.set_xscale("log")
        ax.set_xlim(bottom, top)
        ax.set_title(v, fontsize=9, loc="left")
        ax.grid(alpha=0.3, axis="x", which="major")
        ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel(f"{xlabel} ({'higher' if better == vocabulary.HIGHER else 'lower'} is better)", fontsize=9)
    fig.tight_layout()
    return fig


def _draws(df: pd.DataFrame, d: pd.DataFrame) -> str:
    runs = df[df["run_id"].isin(d["run_id"])]
    n = sorted({str(v) for v in runs.get("params.grad_draws", pd.Series(dtype=str)).dropna()})
    return f" (n = {'/'.join(n)} draws)" if n else ""


_GRAD_CAPTION = (
    "One panel per variant and estimator family, each estimator labelled at its line's end, against the number "
    "of samples k per example (Rainforth et al. 2018: IWAE's inference-network SNR falls with k, DReG's does not), "
    "measured with `grad_draws` gradient draws on a fixed batch at the run's final parameters. ")


@figure("gradient_snr.png", "Encoder gradient SNR",
        _GRAD_CAPTION + "Encoder (inference network) SNR |E g| / sd(g), median over coordinates, noise removed (`bench/snr.py`), higher is "
        "better; band: its 95% interval; dashed: the plug-in estimate's noise floor at that number of draws (what "
        "|mean| / sd reads at zero signal). Several seeds: the mean, and the union of their intervals.")
def gradient_snr(ctx: Context):
    return _gradient_figure(ctx, "encoder", "snr", "SNR")


@figure("gradient_snr_decoder.png", "Decoder gradient SNR",
        _GRAD_CAPTION + "Decoder (generative model) SNR, as for the encoder: higher is better, band its 95% "
        "interval, dashed the plug-in noise floor.")
def gradient_snr_decoder(ctx: Context):
    return _gradient_figure(ctx, "decoder", "snr", "SNR")


@figure("gradient_variance.png", "Encoder gradient variance",
        _GRAD_CAPTION + "Encoder gradient variance (mean over parameters of the per-coordinate variance), lower is "
        "better; scale-dependent, so compare estimators within a panel.")
def gradient_variance(ctx: Context):
    return _gradient_figure(ctx, "encoder", "var", "variance")


# -- throughput and cost -----------------------------------------------------------------------------


@figure("throughput.png", "Throughput",
        "Training throughput (examples/s, the first epoch excluded) and evaluation throughput of the test log p(x) "
        "(test examples/s at `eval_k` samples each) per variant / training objective, higher is better; mean ± sd "
        "over seeds. The device and thread count are in the title: compare within one machine and one load.")
def throughput(ctx: Context):
    df = ctx.df
    cols = [m for m in ("perf/train_examples_per_s", "perf/eval_examples_per_s") if values(df, m).notna().any()]
    if not cols:
        ctx.notes.append("no perf/*_examples_per_s in any run: throughput figure not drawn")
        return None
    color = _colors(df)
    multi_ds = df["dataset"].nunique() > 1
    rows = []
    for (ds, v, o), g in df.groupby(["dataset", "variant", "objective"], sort=True):
        rows.append((ds, v, o, g))
    n = len(rows)
    fig, axes = plt.subplots(1, len(cols), figsize=(WIDTH, 0.8 + 0.3 * n), squeeze=False, sharey=True)
    names = [_group_label(v, o) + (f" ({ds})" if multi_ds else "") for ds, v, o, _ in rows]
    y = np.arange(n)[::-1]
    for ax, col in zip(axes[0], cols):
        means = [values(g, col).mean() for *_, g in rows]
        sds = [sd(values(g, col).dropna()) for *_, g in rows]
        ax.barh(y, np.nan_to_num(means), xerr=sds, color=[color(v, o) for _, v, o, _ in rows], height=0.7, capsize=2)
        top = np.nanmax(means) if np.isfinite(np.nanmax(means)) else 1.0
        for yi, mval in zip(y, means):
            if np.isfinite(mval):
                ax.text(mval + 0.01 * top, yi, f"{mval:,.0f}", va="center", fontsize=7.5)
        ax.set_xlim(0, 1.25 * top)
        ax.set_title(vocabulary.get(col).label + " [examples/s]", fontsize=9)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))  # labels that do not run together
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(y, names, fontsize=9)
    axes[0, 0].set_ylim(-0.6, n - 0.4)
    fig.suptitle(f"Throughput (higher is better) — {_device_label(df)}", fontsize=9)
    fig.tight_layout()
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both cost (x, lower is better) and quality
    (y, higher is better), by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


@figure("cost_quality.png", "Cost and quality",
        "Test log p(x) (nats per example, higher is better) against training time (s, lower is better) per "
        "variant / training objective, mean ± sd over seeds; the line joins the cost-quality front (no other run is "
        "both faster and better). One panel per dataset; times depend on the machine and its load.")
def cost_quality(ctx: Context):
    x, y = "perf/train_seconds", "test/log_px"
    df = ctx.df[values(ctx.df, x).notna() & values(ctx.df, y).notna()]
    if df.empty:
        ctx.notes.append("no run has both perf/train_seconds and test/log_px: cost-quality figure not drawn")
        return None
    color = _colors(df)
    datasets = _datasets(df)
    sizes = [df[df["dataset"] == ds][["variant", "objective"]].drop_duplicates().shape[0] for ds in datasets]
    fig, axes = _rows_figure([1.6 if n == 1 else 3.8 for n in sizes], width=WIDTH * 0.8)
    for ax, ds in zip(axes[:, 0], datasets):
        d = df[df["dataset"] == ds]
        pts, labels, cols = [], [], []
        for (v, o), g in d.groupby(["variant", "objective"], sort=True):
            gx, gy = values(g, x), values(g, y)
            ax.scatter(gx, gy, color=color(v, o), s=12, alpha=0.45)
            ax.errorbar(gx.mean(), gy.mean(), xerr=sd(gx) or None, yerr=sd(gy) or None, fmt="o", color=color(v, o),
                        mec="black", ms=8, capsize=3)
            pts.append((gx.mean(), gy.mean()))
            labels.append(_group_label(v, o))
            cols.append(color(v, o))
        front = pareto_front(pts)
        if len(front) > 1:
            ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="0.4", lw=1, ls="--",
                    zorder=0)
        xs, ys = zip(*pts)
        xpad = 0.08 * (max(xs) - min(xs) or max(xs) or 1.0)
        ypad = 0.12 * (max(ys) - min(ys) or 1.0)
        ax.set_xlim(min(xs) - xpad, max(xs) + 4 * xpad)
        ax.set_ylim(min(ys) - ypad, max(ys) + ypad)
        fig.canvas.draw()  # limits final: place the labels beside their points, apart
        to_axes = ax.transAxes.inverted()
        fr = [to_axes.transform(ax.transData.transform(p)) for p in pts]
        height_pt = ax.get_position().height * fig.get_figheight() * 72
        placed = _spread([f[1] for f in fr], 1.15 * 8 / max(height_pt, 1.0))
        for (fx, fy), py, text, c in zip(fr, placed, labels, cols):
            ax.annotate(text, xy=(fx, fy), xycoords="axes fraction", xytext=(fx + 0.03, py), textcoords="axes fraction",
                        fontsize=8, va="center", color="black",
                        arrowprops={"arrowstyle": "-", "color": c, "lw": 0.6} if abs(py - fy) > 0.02 else None)
        ax.set_title(ds, fontsize=10, loc="left")
        ax.set_xlabel(vocabulary.axis(x), fontsize=9)
        ax.set_ylabel("test log p(x)\n[nats per example]", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(_device_label(ctx.df), fontsize=8, y=1.0, va="bottom")
    fig.tight_layout()
    return fig


# -- samples -----------------------------------------------------------------------------------------


@figure("samples.png", "Samples",
        "Samples x ~ p(x | z), z ~ p(z) of each variant / training objective (first seed), as the run logged them "
        "(`samples.png`: the Bernoulli means for binary data; for vector data, samples over the test data in the "
        "first two coordinates). The frame has the variant's colour.")
def samples(ctx: Context):
    import matplotlib.image as mpimg

    images = []
    with tempfile.TemporaryDirectory() as tmp:
        groups = sorted(ctx.df.groupby(KEY, sort=True), key=lambda kg: (setting_order(kg[0][0]), *kg[0][1:]))
        for (v, o, ds), g in groups:
            r = g.sort_values("seed").iloc[0]
            try:
                local = ctx.client.download_artifacts(r["run_id"], "samples.png", tmp)
                images.append((v, o, ds, int(r["seed"]) if pd.notna(r["seed"]) else "?", mpimg.imread(local)))
            except Exception as exc:  # a missing artifact is reported, not fatal
                ctx.notes.append(f"no samples.png artifact in run {r['run_name']} ({type(exc).__name__})")
    if not images:
        ctx.notes.append("no samples.png artifact in any run: samples figure not drawn")
        return None
    cols = min(len(images), 4)
    rows = math.ceil(len(images) / cols)
    color = _colors(ctx.df)
    def title(v, o, ds, seed):
        label = _group_label(v, o)
        label = label.replace(" (", "\n(", 1) if len(label) > 24 else label  # settings on a line of their own
        return f"{label}\nseed {seed}" + (f", {ds}" if multi_ds else "")

    multi_ds = len({i[2] for i in images}) > 1
    lines = max(title(*i[:4]).count("\n") + 1 for i in images)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, (WIDTH / cols + 0.2 * lines + 0.05) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (v, o, ds, seed, img) in zip(axes.flat, images):
        ax.axis("on")
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_edgecolor(color(v, o))
            s.set_linewidth(3)
        ax.set_title(title(v, o, ds, seed), fontsize=9)
    fig.tight_layout()
    return fig


# -- published ------------------------------------------------------------------------------------------


@figure("published.png", "Ours against the paper",
        "For every result the paper reports: the paper's number (open diamond) joined to ours (filled, mean ± sd "
        "over seeds), ours − published at the right, in the metric's units and sign (for a bound or log-likelihood, "
        "positive means ours is higher).", published_only=True)
def published(ctx: Context):
    from bench.plots.published import published_figure

    return published_figure(ctx.pub, ctx.published, ctx.notes)


@figure("tuning.png", "Expected best validation score against the tuning budget",
        "Dodge et al. (2019)'s expected maximum: for each cell, the expected best validation score among n trials "
        "drawn from the trials this search ran (their empirical distribution), with ± one sd as a band, for n from 1 "
        "to the budget. A ranking of estimators that holds at every n does not depend on the budget; curves that "
        "cross say it does. With a pruner two panels: every trial scored at the last epoch all of its cell's trials "
        "reached (the first rung: an equal budget per trial), and the trials that trained to the end (the pruned "
        "ones left out, so this curve describes the trials successive halving let through). Without one, the trials "
        "that trained to the end.")
def tuning_curve(ctx: Context):
    from bench.plots.tuning import completed, pruned, search_spec
    from bench.tuning import expected_max

    trials = ctx.trials
    if trials is None or trials.empty:
        return None
    spec = search_spec(ctx.suite, ctx.tracking_uri)
    metric = spec.metric if spec is not None else "val/elbo"
    m = vocabulary.get(metric)
    higher = m.direction == vocabulary.HIGHER
    budget = trials.groupby("cell").size()
    stages = []  # (title, {cell: curve})
    if spec is not None and spec.pruner != "none":
        first, epochs = _every_trial_scores(ctx, trials[completed(trials) | pruned(trials)], metric)
        curves = {c: expected_max(v, budget[c], higher) for c, v in first.items() if len(v) >= 2}
        if curves:
            at = f"epoch {epochs.pop()}" if len(epochs) == 1 else "the epoch all of its cell's trials reached"
            stages.append((f"every trial, at {at}", curves))
    done = trials[completed(trials)]
    curves = {}
    for cell, t in done.groupby("cell"):
        v = [x for x in values(t, metric) if math.isfinite(x)]
        if len(v) >= 2:
            curves[cell] = expected_max(v, budget[cell], higher)
    if curves:
        stages.append(("the trials trained to the end" if stages else "", curves))
    if not stages:
        ctx.notes.append("the tuning figure needs two or more completed trials in a cell: not drawn")
        return None
    dataset = lambda cell: cell.split("/")[2].split(" ")[0]  # noqa: E731
    datasets = sorted({dataset(c) for _, cs in stages for c in cs})
    cells = sorted({c for _, cs in stages for c in cs})
    fig, axes = plt.subplots(len(stages), len(datasets), figsize=(WIDTH, 3.4 * len(stages)), squeeze=False)
    labels = []
    for row, (stage, curves) in zip(axes, stages):
        for ax, ds in zip(row, datasets):
            items = []
            for cell, curve in sorted(curves.items()):
                if dataset(cell) != ds:
                    continue
                n = np.arange(1, len(curve) + 1)
                mean = np.array([c[0] for c in curve])
                sd = np.array([c[1] for c in curve])
                color = estimator_color(cells.index(cell))
                ax.plot(n, mean, color=color, lw=1.6)
                ax.fill_between(n, mean - sd, mean + sd, color=color, alpha=0.15, lw=0)
                items.append((n[-1], mean[-1], cell.rsplit("/", 1)[0], color))
            ax.set_title(f"{ds}: {stage}" if stage else ds)
            ax.set_xlabel("trials (budget)")
            ax.set_ylabel(f"expected best {m.label} ({m.unit})")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            labels.append((ax, items))
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    for ax, items in labels:
        end_labels(ax, items)
    return fig


def _every_trial_scores(ctx: Context, trials: pd.DataFrame, metric: str) -> tuple[dict[str, list[float]], set[int]]:
    """Per cell, every trial's ``metric`` at the last epoch all of the cell's trials reached (a
    pruned trial's history stops at its rung; a run that served several trials counts for each),
    and the set of those epochs."""
    histories = {rid: {h.step: h.value for h in ctx.client.get_metric_history(rid, metric)}
                 for rid in trials["run_id"].unique()}
    out, epochs = {}, set()
    for cell, t in trials.groupby("cell"):
        steps = [histories[rid] for rid in t["run_id"]]
        if not all(steps):
            continue
        epoch = min(max(h) for h in steps)
        v = [h[epoch] for h in steps if epoch in h and math.isfinite(h[epoch])]
        if v:
            out[cell] = v
            epochs.add(epoch)
    return out, epochs
