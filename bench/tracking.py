"""MLflow tracking: where the store is, and how a suite invocation is laid out in it.

Layout (the plots, the UI and external checks read these names):

* one experiment per suite, named as the suite (``smoke``), created by the driver before any run,
  with its artifacts in ``<store dir>/mlartifacts``;
* one parent run per invocation, named ``"<suite> <YYYY-mm-dd HH:MM:SS>"``, tags
  ``vaebench.role=parent``, ``vaebench.suite``;
* one nested child run per (variant, objective, dataset, seed), named
  ``"<variant>/<objective>/<dataset>/seed<seed>"``, tags ``mlflow.parentRunId``,
  ``vaebench.role=child``, ``git_commit``, ``torch_version``, ``device_name``; params = the resolved
  config; artifacts ``config.json``, ``samples.png``, ``reconstructions.png``, ``model.pt``,
  ``figures/curves.png``.

Metrics are sent with one ``log_batch`` call per epoch (a single sqlite call costs milliseconds).
The default store is explicit: ``sqlite:///<cwd>/mlflow.db``, overridden by ``--tracking-uri`` or
``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parent.parent


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a local sqlite store (``<dir>/mlartifacts``); the server's default otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


class Tracker:
    """One suite invocation: the experiment, the parent run and its children."""

    def __init__(self, uri: str, suite: str) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(suite)
        if exp is None:
            self.experiment_id = self.client.create_experiment(suite, artifact_location=artifact_root(uri))
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
        self.suite = suite
        self.parent_id: str | None = None

    def start_parent(self, tags: dict[str, str], params: dict[str, str]) -> str:
        name = f"{self.suite} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={"vaebench.role": "parent", "vaebench.suite": self.suite, **tags},
        )
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param(k, v) for k, v in params.items()])
        return self.parent_id

    def start_child(self, run_name: str, tags: dict[str, str], params: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={"mlflow.parentRunId": self.parent_id, "vaebench.role": "child", "vaebench.suite": self.suite, **tags},
        )
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def log_metrics(self, run_id: str, values: dict[str, float], step: int | None) -> None:
        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step or 0) for k, v in values.items()]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(run_id, metrics=ms[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, run_id: str, obj: dict, name: str) -> None:
        self.client.log_dict(run_id, obj, name)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)
