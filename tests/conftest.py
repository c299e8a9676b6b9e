"""Shared fixtures: a fresh MLflow sqlite store per test, and the CLI as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "suites" / "tiny.toml"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors: on 2 shared cores threading only adds overhead and contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its schema, made once: creating one runs ~70 alembic
    migrations (about 10 s here), which each test would otherwise repeat."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, _empty_store) -> str:
    """A tracking URI for a fresh, empty sqlite store of this test's own."""
    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def new_store(tmp_path) -> str:
    """A tracking URI for an sqlite store that does not exist yet (nothing may create it)."""
    return f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` in a subprocess, as a user types it."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


TINY_EPOCHS = "epochs=12"  # long enough to interrupt a run between its checkpoints


@pytest.fixture(scope="session")
def tiny_ref(tmp_path_factory, _empty_store) -> tuple[str, dict]:
    """The tiny suite at 12 epochs, uninterrupted, with ``--jobs 1`` (in this process): the
    reference every executor and every resumed suite must reproduce. (tracking URI, histories)."""
    from bench import cli
    from tests.runs import histories

    root = tmp_path_factory.mktemp("tiny_ref")
    shutil.copy(_empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert cli.main(["run", "--suite", str(TINY), "--tracking-uri", uri, "--set", TINY_EPOCHS]) == 0
    return uri, histories(uri)
