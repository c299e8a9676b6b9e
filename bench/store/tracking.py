"""MLflow tracking: where the store is, and how a suite invocation is laid out in it.

Layout (the plots, the UI and external checks read these names):

* one experiment per suite, named as the suite (``smoke``), created by the driver before any run,
  with its artifacts in ``<store dir>/mlartifacts``; its description (the tag ``mlflow.note.content``)
  is the suite file's ``description``, and its tag ``mlflow.experimentKind`` is
  :data:`EXPERIMENT_KIND` (``custom_model_development``, "Machine learning" in the UI's kind selector),
  and it holds a shared runs view, :data:`RUNS_VIEW` (below), all set on every invocation;
* one parent run per invocation, named ``"<suite> <YYYY-mm-dd HH:MM:SS>"``, tags
  ``vaebench.role=parent``, ``vaebench.suite``, and a note (``mlflow.note.content``, the run's
  description in the UI) naming the suite, its file and the invocation's overrides;
* one nested child run per (variant, objective, dataset, seed), named
  ``"<variant>/<objective>/<dataset>/seed<seed>"``, tags ``mlflow.parentRunId``,
  ``vaebench.role=child``, ``git_commit``, ``torch_version``, ``device_name``; params = the resolved
  config; artifacts ``config.json``, ``samples.png``, ``reconstructions.png``, ``model.pt``,
  ``figures/curves.png``.

Suite runs (``bench.run.runner``) add: on every child the tag ``vaebench.run_key`` (its identity) and
``vaebench.attempt`` (the token of the attempt allowed to write to it); on parents and children the
lease of the process executing them, ``vaebench.host``, ``vaebench.pid`` (``pid@start-time``) and
``vaebench.heartbeat`` (unix seconds, refreshed every :data:`HEARTBEAT_S`): a run is alive while
that process is (same host) or its heartbeat is fresh (another host), see :func:`holder_alive`.

The MLflow 3.17 UI opens an experiment in its GenAI view unless the URL says
``workflowType=machine_learning`` or the browser last chose "Model training" (its own setting,
stored in the browser: the experiment kind tag does not decide it in 3.17.2's build), and its runs
table starts with no metric column and child runs folded under their parent. What it does take
from the store is a *shared view*: the experiment tag ``mlflow.sharedViewState.<key>`` holding a
view's state as JSON, opened by the URL parameter ``viewStateShareKey=<key>``. The experiment's
:data:`RUNS_VIEW` view shows the child runs (``tags.vaebench.role = 'child'``), best
``test/log_px`` first, with the run summary's metrics and the variant, objective, dataset and
seed as columns; ``bench.store.ui.runs_page_url`` is its address.

Metrics are sent with one ``log_batch`` call per epoch (a single sqlite call costs milliseconds).
The default store is explicit: ``sqlite:///<cwd>/mlflow.db``, overridden by ``--tracking-uri`` or
``MLFLOW_TRACKING_URI``. A sqlite store is created, and its experiments, under a lock file beside
it (``mlflow.db.lock``): several processes creating one store at once otherwise collide in
MLflow's schema migration.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[2]  # the checkout: bench/store/tracking.py -> ..
HOST = socket.gethostname()
HEARTBEAT_S = 30.0  # how often a live driver or worker refreshes vaebench.heartbeat
# The experiment tag the MLflow 3.17 UI reads to choose an experiment's view: "custom_model_development"
# ("Machine learning" in its kind selector) opens the runs table; "genai_development" the traces.
EXPERIMENT_KIND = "custom_model_development"
NOTE = "mlflow.note.content"  # the description of an experiment or run, shown (as Markdown) in the UI
RUNS_VIEW = "vaebench"  # the experiment's shared view of its child runs (the tag mlflow.sharedViewState.vaebench)
VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW}"


def runs_view_state() -> dict:
    """The shared view's state as the MLflow 3.17 UI reads it (its search facets and the
    ``selectedColumns`` of its runs table, column keys ``<type>.`<name>```)."""
    from bench import vocabulary

    cols = [f"params.`{p}`" for p in ("variant", "objective", "dataset", "seed")]
    cols += [f"metrics.`{m.name}`" for m in vocabulary.summary_metrics()]
    return {"searchFilter": role_filter("child"), "orderByKey": "metrics.`test/log_px`",
            "orderByAsc": False, "selectedColumns": cols}
STALE_S = 180.0  # a heartbeat older than this, from another host, is a dead process

# -- the store's schema: every vaebench.* tag, the outcomes an invocation records, what is live ----
TAG_ROLE = "vaebench.role"  # parent | child
TAG_SUITE = "vaebench.suite"  # the suite (the experiment's name)
TAG_EXECUTOR = "vaebench.executor"  # local | ray | submitit
TAG_RUN_KEY = "vaebench.run_key"  # a child's identity (bench.run.plan.run_key)
TAG_ATTEMPT = "vaebench.attempt"  # the fencing token of the attempt allowed to write to the run
TAG_EPOCHS = "vaebench.epochs"  # the epochs the run is to train
TAG_EPOCH = "vaebench.epoch"  # the last epoch the worker stored (the driver's progress for remote workers)
TAG_CHECKPOINT = "vaebench.checkpoint"  # the run's newest complete checkpoint (bench.store.checkpoints)
TAG_END_REASON = "vaebench.end_reason"  # why a run ended other than FINISHED
TAG_HISTORY = "vaebench.history"  # a resumed run's earlier attempts, one line each
TAG_SLURM_JOB = "vaebench.slurm_job"  # the Slurm job id of a submitit run
TAG_HOST = "vaebench.host"  # the lease: the host, pid@start-time and heartbeat of the holder
TAG_PID = "vaebench.pid"
TAG_HEARTBEAT = "vaebench.heartbeat"
TAG_SKIPPED = "vaebench.skipped."  # + measurement: why the run does not make it (bench.config.skipped_measurements)
TAG_SOURCE = "vaebench.source."  # + variant | objective | dataset, on a child: where a non-built-in name comes from
TAG_PLUGINS = "vaebench.plugins"  # on the parent: the plugin modules imported (--plugin, a suite's plugins)
TAG_COUNT = "vaebench.n_"  # + outcome, on the parent: how many runs had it
TAG_REMEASURED_COMMIT = "vaebench.remeasured.commit"  # git describe --dirty of the code that re-measured
TAG_REMEASURED_MEASUREMENTS = "vaebench.remeasured.measurements"  # comma-separated, those done at that commit
TAG_REMEASURED_AT = "vaebench.remeasured.at"  # when (UTC)
TAG_REMEASURED_NOTE = "vaebench.remeasured.note"  # what differs from the original measurement, if anything
TAG_SEARCH_CELL = "vaebench.search.cell"  # a search's cell (variant/objective/dataset[ key=value]): trials and final runs
TAG_SEARCH_TRIAL = "vaebench.search.trial"  # the trial's number in its cell's study (final runs: the selected trial's)
TAG_SEARCH_TRIALS = "vaebench.search.trials"  # on a trial's run: every trial it serves (space-separated numbers; bench.run.search)
TAG_SEARCH_STUDY = "vaebench.search.study"  # the Optuna study of the cell (bench.run.search)
TAG_SEARCH_PRUNED = "vaebench.search.pruned"  # the epoch after which successive halving stopped the trial
TAG_SEARCH_SELECTED = "vaebench.search.selected"  # "true" on the final runs of the selected setting
TAG_SEARCH_STAGE = "vaebench.search.stage"  # on a search invocation's parent runs: "trials" or "final"
OUTCOMES = ("reused", "resumed", "ran", "paused", "failed", "killed", "pending")  # a run's outcome in invocation.json
LIVE = ("RUNNING", "SCHEDULED")  # run statuses of a run that a process holds (or should)


def role_filter(role: str) -> str:
    """The ``search_runs`` filter of the runs with ``vaebench.role = role``."""
    return f"tags.`{TAG_ROLE}` = '{role}'"


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every run of the experiments that matches ``filter_string``, all pages."""
    out, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out



def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a local sqlite store (``<dir>/mlartifacts``); the server's default otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


@contextlib.contextmanager
def store_lock(uri: str):
    """Exclusive across processes for a sqlite store (a lock file beside it, its directory made
    if needed); nothing for a server or database URI (they serialize their own writes)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db.with_name(db.name + ".lock"))):
        yield


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' elsewhere: with the pid it
    names one process, not a later one that reuses the number. A zombie counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, starttime 22
    return "" if fields[0] in ("Z", "X") else fields[19]


def lease_tags() -> dict[str, str]:
    """The tags that name this process as the holder of a run."""
    return {TAG_HOST: HOST, TAG_PID: f"{os.getpid()}@{_start_time(os.getpid())}",
            TAG_HEARTBEAT: str(int(time.time()))}


def holder_alive(tags: dict[str, str], now: float | None = None) -> bool:
    """Whether the process named by a run's lease tags still runs: on this host, by its pid and
    start time; on another host (or where start times are unknown), by a heartbeat fresher than
    :data:`STALE_S`."""
    pid, _, start = tags.get(TAG_PID, "").partition("@")
    if tags.get(TAG_HOST) == HOST and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists; its start time says whose
            pass
        now_start = _start_time(int(pid))
        if start or now_start:
            return now_start == start
    beat = tags.get(TAG_HEARTBEAT, "")
    return bool(beat) and (now or time.time()) - float(beat) < STALE_S


class Heartbeat:
    """A daemon thread that refreshes ``vaebench.heartbeat`` on ``run_id`` every ``every`` seconds
    and calls ``check(run)`` with the run read back (the worker's fence); stop() ends it."""

    def __init__(self, client: MlflowClient, run_id: str, every: float = HEARTBEAT_S, check=None) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(client, run_id, every, check),
                                        name=f"heartbeat {run_id}", daemon=True)
        self._thread.start()

    def _beat(self, client, run_id, every, check) -> None:
        while not self._stop.wait(every):
            try:
                client.set_tag(run_id, TAG_HEARTBEAT, str(int(time.time())))
                if check is not None:
                    check(client.get_run(run_id))
            except Exception:
                pass

    def stop(self) -> None:
        self._stop.set()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# What a run's numbers are computed with: the package code. Not the suite files (a changed setting
# changes the run keys; a changed description changes nothing), not the report (bench/plots draws it
# and the figures a run uploads beside its metrics), not the README, the tests or results/.
CODE_PATHS = ("bench", "variants", ":(exclude)bench/suites", ":(exclude)bench/plots")
_SAME_CODE: dict[tuple[str, str], bool] = {}


def same_code(then: str, now: str) -> bool:
    """Whether a run made at commit ``then`` (its ``git_commit`` tag, ``git describe --dirty``)
    computed with the code this checkout has at ``now``: the same commit, or commits whose
    :data:`CODE_PATHS` do not differ (``git diff``; a ``-dirty`` checkout is compared as its working
    tree is). A run from a dirty tree, or from a commit this repository does not have, matches only
    its own exact description."""
    if then == now:
        return True
    if not then or then.endswith("-dirty") or then == "unknown" or now == "unknown":
        return False
    if (then, now) not in _SAME_CODE:
        target = [] if now.endswith("-dirty") else [now]  # the working tree, or the commit
        try:
            out = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", then, *target, "--", *CODE_PATHS],
                                 capture_output=True, timeout=30)
            _SAME_CODE[(then, now)] = out.returncode == 0
        except (OSError, subprocess.SubprocessError):
            _SAME_CODE[(then, now)] = False
    return _SAME_CODE[(then, now)]


def _shown_path(path: str) -> str:
    """A suite file as the UI shows it: relative to the repository or the working directory
    where it lies below one, else its name (never a machine's absolute path)."""
    p = Path(path).resolve()
    for base in (REPO, Path.cwd().resolve()):
        if p.is_relative_to(base):
            return str(p.relative_to(base))
    return p.name


def suite_description(suite_file: str) -> str:
    """The ``description`` of a suite file ('' if it has none or cannot be read)."""
    import tomllib

    try:
        return str(tomllib.loads(Path(suite_file).read_text()).get("description", "")).strip() if suite_file else ""
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""


def parent_note(suite: str, params: dict[str, str]) -> str:
    """The parent run's note (Markdown): the suite, its file and description, the overrides, and
    where the rest is."""
    overrides = params.get("overrides", "-")
    sets = " ".join(f"--set {o}" for o in overrides.split()) if overrides not in ("", "-") else ""
    shown = _shown_path(params.get("suite_file", suite))
    name = suite if shown == f"bench/suites/{suite}.toml" else shown  # what --suite takes
    lines = [f"Suite **{suite}** (`{shown}`): "
             f"{suite_description(params.get('suite_file', '')) or 'no description'}", "",
             f"Overrides: {f'`{overrides}`' if sets else 'none'}.",
             f"Command: `python -m bench run --suite {name}{' ' + sets if sets else ''}"
             f"{' --fresh' if params.get('fresh') == 'True' else ''}`.", "",
             f"{params.get('n_runs', '?')} runs, nested below; the artifact `invocation.json` lists each run key's run "
             f"and outcome. `python -m bench compare --suite {name}` puts this invocation beside the previous one."]
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    """The device as the tag ``device_name`` names it: the GPU's model, or the CPU and its cores."""
    import torch

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
            try:
                self.experiment_id = self.client.create_experiment(
                    suite, artifact_location=artifact_root(uri), tags={"mlflow.experimentKind": EXPERIMENT_KIND})
            except MlflowException:  # created by another invocation in between (a server store)
                exp = self.client.get_experiment_by_name(suite)
                if exp is None:
                    raise
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
            if exp.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND:  # an experiment of an older version
                self.client.set_experiment_tag(self.experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND)
        view = json.dumps(runs_view_state(), sort_keys=True)
        if exp is None or exp.tags.get(VIEW_TAG) != view:
            self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, view)
        self.suite = suite
        self.parent_id: str | None = None

    def start_parent(self, tags: dict[str, str], params: dict[str, str]) -> str:
        """The invocation's parent run. ``params`` (``suite``, ``suite_file``, ``overrides``, ...)
        also give the experiment's description (the suite file's) and the run's note."""
        name = f"{self.suite} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        description = suite_description(params.get("suite_file", ""))
        if description:
            self.client.set_experiment_tag(self.experiment_id, NOTE, description)
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={TAG_ROLE: "parent", TAG_SUITE: self.suite, NOTE: parent_note(self.suite, params),
                  **lease_tags(), **tags},
        )
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param(k, v) for k, v in params.items()])
        return self.parent_id

    def start_child(self, run_name: str, tags: dict[str, str], params: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={"mlflow.parentRunId": self.parent_id, TAG_ROLE: "child", TAG_SUITE: self.suite, **tags},
        )
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def search(self, role: str) -> list:
        """Every run of the experiment with ``vaebench.role = role`` (all pages)."""
        return search_all(self.client, [self.experiment_id], role_filter(role))

    def reopen(self, run_id: str, tags: dict[str, str]) -> None:
        """An existing run continues (resumed): RUNNING again, with ``tags``."""
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, tags)

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
