"""The report of a suite: :func:`draw` writes every registered figure, the tables and ``README.md``
into ``out/<suite>/``.

Files: the figures of ``bench.plots.figures.FIGURES`` (those that can be drawn), ``summary.csv``
(mean, sd and count over seeds of every table metric per variant / objective / dataset, plus the
published columns where the suite has them), ``runs.csv`` (one row per run: every metric and
param) and ``README.md``: where the numbers come from, what is missing, the tables (each with a
line on how to read it), the published numbers, the figures with their registered captions and
the protocol. A half-finished store (failed or running runs, missing metrics, no runs at all) is
reported in the README and on stderr, and whatever exists is drawn.
"""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

import pandas as pd

from bench.plots import store
from bench.plots import tuning as tuning_report
from bench.plots.figures import FIGURES, Context
from bench.plots.store import KEY
from bench.plots.style import save
from bench.plots.tables import markdown_tables, summary_table, validation_section

PROTOCOL_PARAMS = [
    "dataset", "binarization", "eval_k", "epochs", "batch_size", "lr", "latent_dim", "k",
    "device", "threads",
]
PROTOCOL_TAGS = ["device_name", "torch_version", "git_commit"]


def _protocol(df: pd.DataFrame) -> list[str]:
    import mlflow

    lines = ["| setting | value(s) over the runs (distinct values separated by ;) |", "|---|---|"]

    def row(name: str, col: str) -> None:
        vals = sorted({str(v) for v in df[col].dropna()}) if col in df else []
        text = "; ".join(v if v else "(empty)" for v in vals) if vals else "not recorded"
        lines.append(f"| {name} | {text.replace('|', '/')} |")

    others = sorted(c.removeprefix("params.") for c in df.columns if c.startswith("params."))
    shown = {"variant", "objective", "seed"}  # in the results tables
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


def _description(suite: str) -> str:
    from bench.suite import suite_path

    path = suite_path(suite)
    if not path.is_file():
        return ""
    import tomllib

    try:
        return str(tomllib.loads(path.read_text()).get("description", ""))
    except (OSError, tomllib.TOMLDecodeError):
        return ""


def _figures_section(figures) -> list[str]:
    """Each drawn figure's title, caption and image (Markdown lines)."""
    out = []
    for f in figures:
        spec = FIGURES[f.name]
        out += [f"### {spec.title}", "", spec.caption, "", f"![{spec.title}]({f.name})", ""]
    return out


def _report(suite, df, summary, figures, notes, tracking_uri, published_md=(), tuning_md=(), validation_md=()) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# vaebench results: suite `{suite}`", ""]
    desc = _description(suite)
    if desc:
        out += [desc, ""]
    out += [f"Drawn by `python -m bench plots` on {now} from the MLflow store `{store.store_name(tracking_uri)}` "
            "(the store is the record; this directory is generated, never hand-edited). "
            "`python -m bench compare` puts two invocations of the suite side by side.", ""]
    if notes:
        out += ["## What is missing", ""] + [f"- {n}" for n in notes] + [""]
    if df.empty:
        if tuning_md:  # a search under way
            return "\n".join(out + list(tuning_md) + _figures_section(figures))
        out += ["No runs to report: run the suite first "
                f"(`python -m bench run --suite {suite}`).", ""]
        return "\n".join(out)
    out += ["## Results", "",
            "One row per variant / training objective / dataset; mean ± sd over seeds (sample sd; a single "
            "seed shows its value alone), `seeds` the runs behind it. ↑ higher is better, ↓ lower is better. "
            "`—`: not in the store; `n/a`: not applicable to the variant (reason under the table). The same "
            "numbers are in `summary.csv` (means, sds and counts) and every run in `runs.csv`.", "",
            *markdown_tables(df, summary), *validation_md, *published_md, *tuning_md]
    out += ["## Figures", "", *_figures_section(figures)]
    out += ["## Protocol", "", *_protocol(df), "",
            f"{len(df)} run(s); statuses: "
            + ", ".join(f"{s} {n}" for s, n in df["status"].value_counts().sort_index().items()), ""]
    return "\n".join(out)


def draw(suite: str, out: Path, tracking_uri: str, published=None) -> list[Path]:
    """Draw the figures, tables and report of ``suite`` into ``out/<suite>/``; return the paths.

    Reads the suite's child runs from the store at ``tracking_uri``. Whatever is missing (no
    experiment, no runs, failed runs, metrics or artifacts missing in some runs) is written to
    the report's "What is missing" section and to stderr; the figures that can be drawn are.
    ``published`` (a :class:`bench.suite.Published`; default: the ``[published]`` table of the
    suite file ``bench/suites/<suite>.toml``, if any) puts the paper's numbers beside ours.
    Returns the files written (PNGs in registry order, CSVs, README.md last).
    """
    import seaborn as sns

    from bench.plots import published as pubs
    from bench.suite import load_published

    dest = Path(out) / suite
    dest.mkdir(parents=True, exist_ok=True)
    if published is None:
        published = load_published(suite)
    df, notes = store.load_runs(suite, tracking_uri)
    written: list[Path] = []
    summary = pd.DataFrame()
    published_md: list[str] = []
    tuning_md: list[str] = []
    validation_md: list[str] = []
    trials = store.load_trials(suite, tracking_uri)
    if not df.empty:
        notes += store.missing_notes(df, store.expected_metrics())
        summary = summary_table(df)
        ctx = Context(suite, df, tracking_uri, notes, published, trials=trials)
        val_runs = df[store.validation_only(df)]
        if not val_runs.empty:
            validation_md = validation_section(val_runs, store.history(ctx.client, val_runs, "val/elbo"))
        tuning_md = tuning_report.tuning_section(df, trials, tuning_report.search_spec(suite, tracking_uri))
        if published is not None:
            ctx.pub = pubs.published_frame(df, published, notes)
            summary = pubs.with_published_columns(summary, ctx.pub)
            published_md = pubs.published_section(published, ctx.pub)
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            for spec in FIGURES.values():
                if spec.published_only and published is None:
                    continue
                fig = spec.draw(ctx)
                if fig is not None:
                    written.append(save(fig, dest / spec.file))
        summary.to_csv(dest / "summary.csv", index=False)
        keep = ["run_name", "run_id", "status", *KEY, "seed"] + sorted(
            c for c in df.columns if c.startswith(("metrics.", "params.")))
        df[keep].to_csv(dest / "runs.csv", index=False)
        written += [dest / "summary.csv", dest / "runs.csv"]
    elif not trials.empty:  # a search with no final runs yet: its progress, and its figure
        ctx = Context(suite, df, tracking_uri, notes, published, trials=trials)
        tuning_md = tuning_report.tuning_section(df, trials, tuning_report.search_spec(suite, tracking_uri))
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            fig = FIGURES["tuning.png"].draw(ctx)
            if fig is not None:
                written.append(save(fig, dest / "tuning.png"))
    figures = [p for p in written if p.suffix == ".png"]
    for n in notes:
        print(f"vaebench plots [{suite}]: {n}", file=sys.stderr)
    readme = dest / "README.md"
    readme.write_text(_report(suite, df, summary, figures, notes, tracking_uri, published_md, tuning_md, validation_md),
                      encoding="utf-8")
    written.append(readme)
    return written
