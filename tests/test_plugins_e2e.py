"""The example plugin package (``examples/vaebench-example``) installed in an environment of its
own and run end to end, as a researcher with an outside package runs it:

* a throwaway virtual environment (``uv venv``, or ``python -m venv`` and pip where uv is missing)
  that sees this interpreter's site-packages through a ``.pth`` file (torch, MLflow, Ray and
  vaebench itself, nothing reinstalled), with the example installed in it (editable, no deps):
  its names reach vaebench only through the distribution's entry points, no ``--plugin`` flag;
* ``bench list`` there shows the example's variant, objective and dataset with their source;
* a suite of the example's names (``shared-sigma`` trained by ``vr-half`` on ``bars``, two seeds)
  with ``--jobs 2`` and with ``--executor ray`` (a local cluster): every run FINISHED, the plugin's
  names in the runs' params and source tags, the final metrics finite, and the two executors'
  numbers equal bit for bit (timings aside), as for the built-in variants (``test_executors``);
* the power check: the same suite with this interpreter, where the example is not installed,
  exits 2 with one line naming the unknown variant.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, run_cli
from tests.runs import assert_same_numbers, children, histories, parents

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "vaebench-example"
DIST = "vaebench-example"
NAMES = {"variant": ("shared-sigma", "vaebench_example.variant"),
         "objective": ("vr-half", "vaebench_example.objective"),
         "dataset": ("bars", "vaebench_example.dataset")}
SUITE_NAME = "example"
# the tiny suite's sizes (tests/suites/tiny.toml) on the example's 8x8 bars: 2 runs, a few seconds each
SUITE = """\
description = "The example plugin package's variant, objective and dataset, by their entry-point names."

[defaults]
epochs = 2
batch_size = 50
lr = 3e-3
latent_dim = 4
hidden = [32]
train_size = 300
test_size = 60
val_k = 2
eval_k = 64
gap_size = 20
gap_steps = 20
gap_k = 64
grad_draws = 5
grad_batch = 16
threads = 1

[[grid]]
variants = ["shared-sigma"]
objectives = ["vr-half"]
datasets = ["bars"]
seeds = [0, 1]
[grid.set]
k = 2
"""
FINAL = ("test/elbo", "test/log_px", "test/recon", "test/kl")


def _env() -> dict[str, str]:
    """The environment ``run_cli`` gives ``python -m bench``: this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _sh(*cmd, timeout: int = 300) -> str:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def example_python(tmp_path_factory) -> Path:
    """The interpreter of a new virtual environment with the example installed: its
    site-packages holds the example's dist-info (the entry points) and a ``.pth`` file that adds
    this interpreter's site-packages (``site.addsitedir``, so that their own ``.pth`` files, the
    editable install of vaebench among them, are processed too)."""
    env = tmp_path_factory.mktemp("example-env") / "venv"
    start = time.monotonic()
    uv = shutil.which("uv")
    if uv:
        _sh(uv, "venv", "-q", "--python", sys.executable, env)
    else:  # CI installs nox[uv], so uv is there; a bare machine has the standard library's venv and pip
        _sh(sys.executable, "-m", "venv", env)
    python = env / "bin" / "python"
    site_packages = Path(_sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    ours = sysconfig.get_paths()["purelib"]
    (site_packages / "_vaebench_parent.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    # the build backend (setuptools) from this environment when it has one: no index needed
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    if uv:
        _sh(uv, "pip", "install", "-q", "--python", python, "--no-deps", *isolation, "-e", EXAMPLE)
    else:
        _sh(python, "-m", "pip", "install", "-q", "--no-deps", *isolation, "-e", EXAMPLE)
    print(f"\nthe example's environment ({'uv' if uv else 'venv + pip'}): {time.monotonic() - start:.1f} s")
    return python


def bench(python: Path, *args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` with ``python``; the limit guards against a hang, not a speed (the
    suite takes seconds on a quiet machine, and over ten minutes was measured on a starved one)."""
    return subprocess.run([str(python), "-m", "bench", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / f"{SUITE_NAME}.toml"
    path.write_text(SUITE)
    return path


def _fresh_store(root: Path, template: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, root / "mlflow.db")
    return f"sqlite:///{root / 'mlflow.db'}"


def _run_suite(python: Path, suite: Path, root: Path, template: Path, *executor: str) -> str:
    uri = _fresh_store(root, template)
    run = bench(python, "run", "--suite", str(suite), "--tracking-uri", uri, *executor, cwd=root)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    return uri


@pytest.fixture(scope="module")
def jobs2_store(example_python, suite_file, tmp_path_factory, _empty_store) -> str:
    """The example suite with ``--jobs 2`` (two local worker processes)."""
    return _run_suite(example_python, suite_file, tmp_path_factory.mktemp("jobs2"), _empty_store, "--jobs", "2")


def test_bench_list_in_the_example_environment_shows_its_names_from_their_entry_points(example_python, tmp_path):
    out = bench(example_python, "list", cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {ln.split()[0]: ln for ln in out.stdout.splitlines() if ln.startswith("  ") and ln.split()}
    for name, module in NAMES.values():
        assert lines[name].rstrip().endswith(f"[entry point {DIST}:{module}]"), lines[name]
    assert "[" not in lines["vanilla"] and lines["digits"].strip() == "digits"  # built-ins: no source shown


def _check_store(uri: str) -> None:
    """Two FINISHED child runs (seeds 0 and 1) of the example's names, their sources tagged, the
    final metrics finite; the parent run FINISHED."""
    runs = children(uri, SUITE_NAME)
    assert sorted(int(r.data.params["seed"]) for r in runs) == [0, 1]
    assert [p.info.status for p in parents(uri, SUITE_NAME)] == ["FINISHED"]
    for r in runs:
        assert r.info.status == "FINISHED", r.data.tags
        for kind, (name, module) in NAMES.items():
            assert r.data.params[kind] == name
            assert r.data.tags[f"vaebench.source.{kind}"] == f"entry point {DIST}:{module}"
        assert r.data.params["k"] == "2"
        for metric in FINAL:
            assert math.isfinite(r.data.metrics[metric]), (metric, r.data.metrics.get(metric))
        # the bounds in their order: the ELBO below the IWAE estimate of log p(x) (k = 64, same model)
        assert r.data.metrics["test/elbo"] <= r.data.metrics["test/log_px"] < 0
        assert {"model.pt", "config.json"} <= {a.path for a in MlflowClient(uri).list_artifacts(r.info.run_id)}


def test_example_suite_with_two_local_workers(jobs2_store):
    _check_store(jobs2_store)
    # the two seeds are two different runs, not one logged twice
    a, b = (h["test/elbo"] for h in histories(jobs2_store, SUITE_NAME).values())
    assert a != b


def test_example_suite_on_a_local_ray_cluster_matches_the_local_workers(example_python, suite_file, jobs2_store,
                                                                        tmp_path, _empty_store):
    """Ray's workers run the example environment's interpreter (the driver's), so they find the
    entry points as the driver does; the numbers are the local workers' bit for bit."""
    pytest.importorskip("ray")
    uri = _run_suite(example_python, suite_file, tmp_path, _empty_store, "--executor", "ray", "--jobs", "2")
    _check_store(uri)
    assert_same_numbers(histories(uri, SUITE_NAME), histories(jobs2_store, SUITE_NAME))


def test_without_the_example_installed_its_variant_is_an_unknown_name(suite_file, tmp_path, _empty_store):
    """The power check: this interpreter has no example installed; the same suite is refused
    before anything is logged, in one line naming the unknown variant."""
    try:
        importlib.metadata.distribution(DIST)
        pytest.skip(f"{DIST} is installed in this interpreter's environment: the power check needs it absent")
    except importlib.metadata.PackageNotFoundError:
        pass
    uri = _fresh_store(tmp_path, _empty_store)
    run = run_cli("run", "--suite", str(suite_file), "--tracking-uri", uri, "--jobs", "2", cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert "unknown variant 'shared-sigma'; valid variants: " in run.stderr
    assert children(uri, SUITE_NAME) == [] and parents(uri, SUITE_NAME) == []

