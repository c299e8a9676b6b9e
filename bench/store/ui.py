"""The MLflow UI for a vaebench store, served on the loopback interface only.

``python -m bench ui`` calls :func:`serve`: it runs ``mlflow server`` for the store as a child
process in its own process group, waits for ``/health``, prints the URL of every experiment's runs
table and stops the whole group on Ctrl-C or SIGTERM. :func:`start`, :func:`wait_healthy` and
:func:`stop` are the same steps for tests.

Settings (measured on the project's machines: MLflow 3.17.2, 2 cores): ``--workers 1`` and
``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` keep the server at 2 processes (about 400 MiB)
instead of 10-15, and it answers ``/health`` about 4 s after the start. Artifacts: the harness
creates each experiment with its own ``artifact_location`` (``<store dir>/mlartifacts`` for a
sqlite store, ``bench.store.tracking.artifact_root``), which the server reads directly;
``--artifacts-destination`` points at the same directory so an experiment created from the UI
lands there too. The 3.x UI opens an experiment in its GenAI view, with child runs folded under
their parent and no metric column: the URL printed for each experiment (:func:`runs_page_url`)
opens its runs table in the "Model training" view through the shared view the harness stores
with the experiment (``bench.store.tracking.RUNS_VIEW``): the child runs, best ``test/log_px`` first,
with their metrics as columns.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.errors import BenchError

__all__ = ["serve", "start", "wait_healthy", "stop", "server_command", "runs_page_url"]

LOOPBACK = "127.0.0.1"


def runs_page_url(base_url: str, experiment_id: str, view: bool = True) -> str:
    """The runs table of an experiment in the MLflow 3.x UI's "Model training" view (not its
    default GenAI view); ``view``: through the experiment's shared view of its child runs with
    their metrics (``bench.store.tracking.RUNS_VIEW``; only for experiments that have it)."""
    from bench.store.tracking import RUNS_VIEW

    url = f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"{url}&viewStateShareKey={RUNS_VIEW}" if view else url


def _check_loopback(host: str) -> None:
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise BenchError(
            f"refusing to serve the MLflow UI on {host!r}: it has no authentication, so vaebench "
            "binds it to the loopback interface only (use an SSH tunnel to reach it from elsewhere)"
        )


def server_command(tracking_uri: str, host: str = LOOPBACK, port: int = 5000, artifacts: str | None = None) -> list[str]:
    """The ``mlflow server`` command line for ``tracking_uri`` (a sqlite or database URI);
    ``artifacts``: the directory of proxied artifacts (default: beside a sqlite store)."""
    if tracking_uri.startswith(("http://", "https://")):
        raise BenchError(f"{tracking_uri} is already a tracking server: open it in a browser")
    from bench.store.tracking import artifact_root

    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    root = artifacts or artifact_root(tracking_uri)
    if root is not None:
        cmd += ["--serve-artifacts", "--artifacts-destination", root]
    return cmd


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job-runner processes (2 in all, not 10-15)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a local viewer sends nothing out
    return env


def start(tracking_uri: str, port: int, host: str = LOOPBACK, log: Path | None = None,
          artifacts: str | None = None) -> subprocess.Popen:
    """Start ``mlflow server`` for the store; return the process (leader of its own process group).

    Its output goes to ``log`` if given, else to this process's stdout/stderr. The port must be
    free: a port in use is a :class:`BenchError` rather than a server that dies later.
    """
    _check_loopback(host)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            raise BenchError(f"cannot serve on {host}:{port}: {e.strerror}; choose another --port") from None
    out = open(log, "ab") if log is not None else None  # noqa: SIM115 (the child owns it)
    try:
        return subprocess.Popen(server_command(tracking_uri, host, port, artifacts), env=_env(),
                                stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True)  # own group: stop() reaches the workers
    finally:
        if out is not None:
            out.close()


def wait_healthy(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``<url>/health`` until it answers 200; raise if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"mlflow server at {url} not healthy after {timeout:.0f} s")
        time.sleep(0.25)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM the server's process group (server and workers), SIGKILL after ``timeout``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):  # workers of a server that died on its own
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    # the first signal stops the server; later ones (nox sends SIGINT then SIGTERM) must not
    # interrupt that shutdown with a traceback
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop


def serve(tracking_uri: str, host: str = LOOPBACK, port: int = 5000, artifacts: str | None = None,
          banner: str | None = None) -> int:
    """Serve the UI for ``tracking_uri`` until Ctrl-C / SIGTERM; return the exit code.

    0 when stopped by the user; the server's own exit code if it ends by itself. ``banner``
    replaces the first line printed (which names the store: not a database password).
    """
    proc = start(tracking_uri, port, host, artifacts=artifacts)
    # The server runs in its own session, so a terminal's Ctrl-C reaches only this process: both
    # signals are handled here (explicitly, also where SIGINT was inherited as ignored).
    old = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    base = f"http://{host}:{port}"
    try:
        wait_healthy(base, timeout=120, proc=proc)
        print(banner or f"MLflow UI for {tracking_uri} at {base}/", flush=True)
        from mlflow import MlflowClient

        from bench.store.tracking import VIEW_TAG

        for exp in MlflowClient(tracking_uri).search_experiments():
            print(f"  {exp.name}: {runs_page_url(base, exp.experiment_id, VIEW_TAG in exp.tags)}", flush=True)
        print("Ctrl-C stops it.", flush=True)
        return proc.wait()
    except _Stop:
        print("\nstopping the MLflow server", file=sys.stderr, flush=True)
        stop(proc)
        return 0
    except (RuntimeError, TimeoutError) as e:
        stop(proc)
        raise BenchError(str(e)) from None
    finally:
        stop(proc)
        for sig, handler in old.items():
            signal.signal(sig, handler)
