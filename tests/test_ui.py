"""The MLflow UI end to end: a store filled by ``python -m bench run`` with the tiny suite, served
by ``bench.store.ui`` on a free loopback port, checked through the REST API and in a real headless
browser (Debian's chromium driven by Playwright for Python; no browser download).

Without chromium or Playwright the browser test is skipped with the reason, except under
``CI=true`` where it fails: CI installs both (``apt-get install chromium``, ``pip install playwright``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench.errors import BenchError
from bench.store import ui
from tests.conftest import ROOT, TINY, run_cli

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_NAME = re.compile(r"^[\w.+-]+/[\w.+-]+/[\w.+-]+/seed\d+$")  # variant/objective/dataset/seedN
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A store holding one invocation of the tiny suite, written by the CLI as a user runs it,
    and ``bench.store.ui.start`` serving it on a free loopback port; the server is stopped by its
    process id (its process group). The store is created first (two processes creating one
    store race in the schema migration), then the server starts while the suite runs."""
    root = tmp_path_factory.mktemp("ui_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the store's schema
    port = _free_port()
    proc = ui.start(uri, port, log=root / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        run = run_cli("run", "--suite", str(TINY), "--tracking-uri", uri, cwd=root)
        assert run.returncode == 0, run.stderr[-3000:]
        ui.wait_healthy(base, timeout=90, proc=proc)
        yield uri, root, base
    finally:
        assert ui.stop(proc) is not None
        assert not _group_alive(proc.pid), "server workers left behind"


@pytest.fixture(scope="module")
def filled(served) -> tuple[str, Path]:
    return served[0], served[1]


@pytest.fixture(scope="module")
def server(served) -> str:
    return served[2]


@pytest.fixture(scope="module")
def suite_runs(filled):
    """(experiment id, parent run, child runs) of the tiny suite, read from the store directly."""
    uri, _ = filled
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(TINY.stem)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("vaebench.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("vaebench.role") == "child"]
    assert len(parents) == 1 and len(children) >= 2
    return exp.experiment_id, parents[0], children


def _get(base: str, endpoint: str, **query) -> dict:
    with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.load(r)


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


@pytest.mark.slow
def test_rest_api_serves_runs_and_artifacts(server, suite_runs):
    exp_id, parent, children = suite_runs
    runs = _post(server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert parent.info.run_name in by_name and parent.info.run_name.startswith(f"{TINY.stem} ")
    for child in children:
        served = by_name[child.info.run_name]
        assert RUN_NAME.match(child.info.run_name)
        tags = {t["key"]: t["value"] for t in served["data"]["tags"]}
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        metrics = {m["key"]: m["value"] for m in served["data"]["metrics"]}
        assert metrics["test/log_px"] == pytest.approx(child.data.metrics["test/log_px"])
        params = {p["key"]: p["value"] for p in served["data"]["params"]}
        assert child.info.run_name == f"{params['variant']}/{params['objective']}/{params['dataset']}/seed{params['seed']}"

    # artifacts through the server: the run's own file:// artifact location is served
    child = next(c for c in children if c.data.params["dataset"] == "digits")
    files = {f["path"] for f in _get(server, "/api/2.0/mlflow/artifacts/list", run_id=child.info.run_id)["files"]}
    assert {"samples.png", "reconstructions.png", "config.json", "model.pt", "figures"} <= files
    figs = _get(server, "/api/2.0/mlflow/artifacts/list", run_id=child.info.run_id, path="figures")["files"]
    assert "figures/curves.png" in {f["path"] for f in figs}
    with urllib.request.urlopen(f"{server}/get-artifact?path=samples.png&run_uuid={child.info.run_id}") as r:
        assert r.read()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def chromium():
    """(chromium executable, sync_playwright); skip without them, fail under CI=true."""
    exe = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [what for what, ok in (("chromium (apt-get install chromium)", exe),
                                     ("playwright (pip install playwright)", sync_playwright)) if not ok]
    if missing:
        msg = f"browser test needs {' and '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg}; CI must install them")
        pytest.skip(msg)
    return exe, sync_playwright


@pytest.mark.slow
def test_the_experiment_describes_the_suite_and_holds_the_runs_view(suite_runs, filled):
    """The experiment's description is the suite file's, its kind "Machine learning", its shared
    runs view the harness's; the parent run's note names the suite, its file and its overrides."""
    from bench.store import tracking

    uri, _ = filled
    exp_id, parent, _ = suite_runs
    tags = MlflowClient(uri).get_experiment(exp_id).tags
    description = tracking.suite_description(str(TINY))
    assert description.startswith("Test suite") and tags["mlflow.note.content"] == description
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert json.loads(tags[tracking.VIEW_TAG]) == tracking.runs_view_state()
    note = parent.data.tags["mlflow.note.content"]
    assert "Suite **tiny** (`tests/suites/tiny.toml`)" in note and description in note
    assert "Overrides: none." in note and "python -m bench compare --suite tests/suites/tiny.toml" in note


def test_an_older_experiment_gets_the_kind_and_the_view(store):
    from bench.store import tracking

    client = MlflowClient(store)
    exp_id = client.create_experiment("old")
    tracking.Tracker(store, "old")
    tags = client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == tracking.EXPERIMENT_KIND and tracking.VIEW_TAG in tags


@pytest.mark.slow
def test_browser_shows_child_runs_with_metric_columns_and_artifacts(chromium, server, suite_runs, tmp_path):
    """The URL ``bench ui`` prints opens the runs table of the child runs with their metrics as
    columns, nothing clicked (the harness's shared view); then one run's artifacts, reached as a
    user does."""
    exe, sync_playwright = chromium
    exp_id, parent, children = suite_runs
    child = next(c for c in children if c.data.params["dataset"] == "digits")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 800})
            page.set_default_timeout(30_000)
            page.goto(ui.runs_page_url(server, exp_id))
            for c in children:
                page.get_by_text(c.info.run_name, exact=True).wait_for()
            assert page.get_by_text(parent.info.run_name).count() == 0  # the children alone, not folded
            page.get_by_text(tracking_description(), exact=True).first.wait_for()  # the suite's description
            for metric in ("test/log_px", "test/elbo"):
                column = page.locator(f'[role="gridcell"][col-id*="{metric}"]')
                for c in children:  # the UI prints the float in full (JS and Python agree on it)
                    column.filter(has_text=repr(c.data.metrics[metric])).first.wait_for()
            page.screenshot(path=tmp_path / "runs.png")

            page.get_by_role("link", name=child.info.run_name, exact=True).click()
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("reconstructions.png", exact=True).first.wait_for()
            page.get_by_text("samples.png", exact=True).first.click()
            page.wait_for_timeout(1500)
            page.screenshot(path=tmp_path / "artifacts.png")
        finally:
            browser.close()
    print(f"screenshots in {tmp_path}")


def tracking_description() -> str:
    from bench.store import tracking

    return tracking.suite_description(str(TINY))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_prints_runs_url_and_stops_on_signal(filled, suite_runs, sig):
    """``python -m bench ui``: prints the runs-page URL; Ctrl-C (SIGINT) or SIGTERM stops the
    server and its workers, exit code 0."""
    uri, root = filled
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "bench", "ui", "--tracking-uri", uri, "--port", str(port)]
    with open(root / "serve.log", "w") as log, subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=log, text=True) as proc:
        try:
            want = ui.runs_page_url(f"http://127.0.0.1:{port}", suite_runs[0])
            deadline = time.monotonic() + 90
            lines = []
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
                if want in line:
                    break
            assert any(want in line for line in lines), "".join(lines) + (root / "serve.log").read_text()
            server_pids = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True).stdout.split()
            assert server_pids, "no mlflow server process found"
            proc.send_signal(sig)
            assert proc.wait(timeout=30) == 0
            time.sleep(0.5)
            for pid in server_pids:
                assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
def test_refuses_non_loopback_host_and_busy_port(filled):
    uri, _ = filled
    with pytest.raises(BenchError, match="loopback"):
        ui.start(uri, _free_port(), host="0.0.0.0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(BenchError, match="choose another --port"):
            ui.start(uri, s.getsockname()[1])
