"""Helpers of the suite-runner tests: a store's child runs by run key, and exact comparison."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, TINY, TINY_EPOCHS

TIMINGS = ("perf/", "train/examples_per_s")  # wall-clock and memory figures: counted, not compared


def all_runs(uri: str, suite: str = "tiny") -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(suite)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def children(uri: str, suite: str = "tiny") -> list:
    return [r for r in all_runs(uri, suite) if r.data.tags.get("vaebench.role") == "child"]


def parents(uri: str, suite: str = "tiny") -> list:
    return sorted((r for r in all_runs(uri, suite) if r.data.tags.get("vaebench.role") == "parent"),
                  key=lambda r: r.info.start_time)


def histories(uri: str, suite: str = "tiny") -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{run key: {metric: [(step, value), ...] in step order}}`` of the FINISHED child run of
    every key; asserts there is exactly one per key."""
    client = MlflowClient(uri)
    out: dict[str, dict] = {}
    for r in children(uri, suite):
        if r.info.status != "FINISHED":
            continue
        key = r.data.tags["vaebench.run_key"]
        assert key not in out, f"two FINISHED runs of key {key}"
        out[key] = {m: sorted((h.step, h.value) for h in client.get_metric_history(r.info.run_id, m))
                    for m in r.data.metrics}
    return out


def assert_same_numbers(got: dict, want: dict, keys: int | None = None) -> None:
    """Same run keys (``keys`` of them, when only part of the reference suite ran), same metrics,
    every metric at the same steps (none missing, none twice), and the same values bit for bit
    except the timings (whose counts must still match)."""
    want = {k: v for k, v in want.items() if keys is None or k in got}
    assert sorted(got) == sorted(want) and len(got) == (keys or len(want))
    for key, metrics in want.items():
        assert sorted(got[key]) == sorted(metrics), key
        for metric, series in metrics.items():
            steps = [s for s, _ in got[key][metric]]
            assert steps == [s for s, _ in series], (key, metric, steps)
            if not metric.startswith(TIMINGS):
                assert got[key][metric] == series, (key, metric)


def wait_for(predicate, what: str, timeout: float = 180.0, proc=None):
    """Poll ``predicate()`` until it returns something truthy; fail after ``timeout`` seconds or
    when ``proc`` (with ``poll()``, ``returncode`` and its ``stderr`` text) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}: {proc.stderr[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Cli:
    """``python -m bench run`` on the tiny suite at TINY_EPOCHS, in its own process group (as a
    terminal's job), stderr into a file. Every checkpoint save pauses ``pause`` seconds
    (``tests/hooks/sitecustomize.py``), so a test that interrupts a run between checkpoints has
    that window whatever the machine's speed."""

    def __init__(self, tmp_path: Path, uri: str, *extra: str, pause: float = 0.3) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "hooks"), str(ROOT)]),
            "VAEBENCH_TEST_CHECKPOINT_PAUSE_S": str(pause)}
        self.log = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--suite", str(TINY), "--tracking-uri",
                                          uri, "--set", TINY_EPOCHS, *extra], cwd=tmp_path, env=env,
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self.pid = self.proc.pid

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout)

    def poll(self):
        return self.proc.poll()

    @property
    def returncode(self):
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return self.log.read_text()


def checkpointed(uri: str, exclude=(), min_epoch: int = 2):
    """A child run RUNNING with a checkpoint of at least ``min_epoch`` (and epochs still to go)."""
    epochs = int(TINY_EPOCHS.split("=")[1])
    for r in children(uri):
        name = r.data.tags.get("vaebench.checkpoint", "")
        epoch = int(name.rsplit("-", 1)[1].split(".")[0]) if name else 0
        if r.info.status == "RUNNING" and min_epoch <= epoch < epochs and r.info.run_id not in exclude:
            return r
    return None


def holder_pid(run) -> int:
    return int(run.data.tags["vaebench.pid"].split("@")[0])


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()
