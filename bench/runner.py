"""A suite invocation (``python -m bench run``): plan, identity, execution, summary.

1. **Plan** (:func:`plan`): expand the suite's grid with the overrides, validate every run, load
   each dataset and build each model once on real shapes, place the runs on the executor (device,
   threads, how many at once). Everything that can fail on user input fails here, exit code 2,
   before the store is touched.
2. **Identity** (:func:`run_key`): each run's key is a hash of its resolved configuration, the
   child run's tag ``vaebench.run_key``. A FINISHED run of the same key *and the same code*
   (the ``git_commit`` tag, ``git describe --dirty``) is reused, not recomputed; ``--fresh``
   recomputes everything (earlier runs stay in the store).
3. **Claim** (:meth:`Invocation.claim`), for a sqlite store under its lock file: runs whose
   process is gone (a driver or worker killed, a power cut) are marked KILLED with the reason
   (tag ``vaebench.end_reason``); then each key is *reused* (a FINISHED run), *watched* (a live
   run of another invocation: its outcome is awaited), *resumed* (the newest dead attempt, in the
   same MLflow run, from its last checkpoint) or *new*. The driver creates the parent run and
   every child run (status SCHEDULED until a worker starts it), each with a fresh attempt token
   (``vaebench.attempt``): a worker whose token is no longer the run's stops (``bench.worker``).
4. **Execute**: the executor (``bench.executors``) runs the jobs; the driver marks what the
   workers cannot (deaths, cancellations) and shows the progress (``bench.progress``).
5. **Summary**: the parent run records what the invocation covered and how, as the artifact
   ``invocation.json`` (per run key: run id, name, outcome ``reused``/``resumed``/``ran``/
   ``failed``/``killed``/``pending``, the epoch a resumed run continued after) and the tags
   ``vaebench.n_reused``, ``_n_resumed``, ``_n_ran``, ``_n_failed``; the table goes to stderr.

Exit codes: 0 every run finished, 1 some failed, 130 interrupted (Ctrl-C or SIGTERM: running runs
and the parent are marked KILLED, finished runs and every logged epoch stay), 2 a user mistake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field

from bench import tracking, worker
from bench.config import RunConfig
from bench.errors import BenchError, ConfigError
from bench.progress import SuiteProgress
from bench.worker import Job, Outcome

KEY_VERSION = 1
# The key hashes the RunConfig fields that say what a run computes. Left out: threads (CPU threads),
# data_dir (where the files are read from) and device, which enters as its type only ("cpu" or
# "cuda": the same run on cuda:0 or cuda:1 is the same computation); and every field at its
# default value, so that a field added later (with a default that keeps the old behaviour) leaves
# every existing key as it was.
NOT_IN_KEY = ("threads", "data_dir", "device")
KEY_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in NOT_IN_KEY)
_DEFAULTS = RunConfig()
OUTCOMES = ("reused", "resumed", "ran", "failed", "killed", "pending")
LIVE = ("RUNNING", "SCHEDULED")


def run_key(cfg: RunConfig, device: str) -> str:
    """A deterministic key of a run's resolved configuration: the first 20 hex digits of the
    SHA-256 of ``{"v": KEY_VERSION, "device": "cpu" | "cuda", <field>: <value>, ...}`` as JSON with
    sorted keys and no spaces, over the :data:`KEY_FIELDS` whose value is not the default."""
    doc = {"v": KEY_VERSION, "device": device.split(":")[0]}
    doc |= {f: getattr(cfg, f) for f in KEY_FIELDS if getattr(cfg, f) != getattr(_DEFAULTS, f)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


@dataclass
class Options:
    """What ``python -m bench run`` was asked (the CLI's flags)."""

    suite: str = "smoke"
    set: list[str] = field(default_factory=list)
    tracking_uri: str | None = None
    data_dir: str | None = None
    jobs: str = "1"  # N or "auto"
    executor: str = "local"  # local | ray | submitit
    ray_address: str | None = None
    runs_per_gpu: int = 1
    fresh: bool = False
    checkpoint_every: float = 0.0  # seconds; 0 = every epoch
    slurm_partition: str = ""
    slurm_time: int = 60  # minutes per job (submitit requeues a job that runs out of it)
    slurm_gpus: int = 0  # GPUs per run
    slurm_mem_gb: float = 0.0
    slurm_folder: str = "submitit"


@dataclass
class Planned:
    """One run of the suite, from the plan to its outcome."""

    index: int
    cfg: RunConfig
    params: dict[str, str]
    device: str = ""
    threads: int = 0
    cpus: int = 1  # resources a Ray task or a Slurm job asks for
    gpus: float = 0.0
    key: str = ""
    decision: str = "new"  # new | resume | reuse | watch
    run_id: str | None = None
    start_epoch: int = 0  # a resumed run's last checkpointed epoch
    outcome: str = "pending"
    final: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def name(self) -> str:
        return self.cfg.run_name


# -- 1. plan -------------------------------------------------------------------------------------
def plan(opts: Options):
    """The suite and its runs, validated, with the data each needs loaded once (on the CPU: the
    workers load their own copy where they run)."""
    from bench import config, data, train
    from bench.suite import load_suite

    suite = load_suite(opts.suite, config.parse_overrides(opts.set or []))
    if not suite.runs:
        raise BenchError(f"suite {suite.name!r} has no runs after the overrides")
    loaded: dict[tuple, data.Dataset] = {}
    planned = []
    for i, r in enumerate(suite.runs):
        if opts.data_dir:
            r.data_dir = opts.data_dir
        key = (r.dataset, r.binarization, r.data_dir, r.val_size)
        if key not in loaded:
            loaded[key] = data.load(r.dataset, binarization=r.binarization, data_dir=r.data_dir, device="cpu",
                                    n_val=r.val_size or None)
        ds = loaded[key]
        train.build_model(r, ds)  # checks variant options and likelihood on real shapes
        params = r.params() | {"likelihood": ds.likelihood, "train_examples": str(len(ds.train[: r.train_size or None])),
                               "test_examples": str(len(ds.test[: r.test_size or None])), "data_source": ds.source}
        planned.append(Planned(i, r, params))
    return suite, planned, loaded


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def place_local(planned: list[Planned], jobs: int | None, cores: int, n_gpus: int, default_threads: int,
                runs_per_gpu: int = 1) -> int:
    """Devices and threads of the runs on this machine; how many run at once (``jobs``: N, or
    None for auto = cores // threads on CPU, the GPUs x ``runs_per_gpu`` on CUDA). ``threads = 0``
    in a run means: torch's default with one run at a time, cores // jobs with several."""
    for p in planned:
        if p.cfg.device.startswith("cuda") and not n_gpus:
            raise ConfigError(f"device {p.cfg.device!r} requested but CUDA is not available here; use device=auto or cpu")
        p.device = ("cuda" if n_gpus else "cpu") if p.cfg.device == "auto" else p.cfg.device
    on_cuda = any(p.device.startswith("cuda") for p in planned)
    if jobs is None:
        widest = max(p.cfg.threads or cores for p in planned)
        jobs = n_gpus * runs_per_gpu if on_cuda else max(1, cores // widest)
    jobs = max(1, min(jobs, len(planned)))
    for p in planned:
        p.threads = p.cfg.threads or (default_threads if jobs == 1 else max(1, cores // jobs))
    return jobs


def make_executor(opts: Options, planned: list[Planned], on_progress):
    """The executor, and each run's device, threads and resources; the run keys."""
    import torch

    from bench import executors

    if opts.executor not in ("local", "ray", "submitit"):
        raise ConfigError(f"--executor must be local, ray or submitit, got {opts.executor!r}")
    if opts.jobs != "auto" and not (opts.jobs.isdigit() and int(opts.jobs) >= 1):
        raise ConfigError(f"--jobs must be a positive integer or auto, got {opts.jobs!r}")
    if opts.runs_per_gpu < 1:
        raise ConfigError(f"--runs-per-gpu must be >= 1, got {opts.runs_per_gpu}")
    jobs = None if opts.jobs == "auto" else int(opts.jobs)
    cores = _cores()

    if opts.executor == "local":
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        jobs = place_local(planned, jobs, cores, n_gpus, torch.get_num_threads(), opts.runs_per_gpu)
        if jobs == 1:
            ex = executors.Inline(on_progress)
        else:
            # pin workers to GPUs only where the runs ask for "cuda", not for a device of their own
            generic = all(p.device == "cuda" for p in planned)
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = (visible.split(",") if visible else [str(i) for i in range(n_gpus)]) if generic else None
            ex = executors.LocalProcesses(jobs, on_progress, gpus, opts.runs_per_gpu)
    elif opts.executor == "ray":
        ex = executors.RayTasks(opts.ray_address, jobs)
        n_gpus = ex.gpus()
        for p in planned:
            p.device = "cuda" if p.cfg.device == "auto" and n_gpus else ("cpu" if p.cfg.device == "auto" else p.cfg.device)
            p.threads = p.cfg.threads or 1
            p.cpus, p.gpus = p.threads, (1 / opts.runs_per_gpu if p.device.startswith("cuda") else 0.0)
    else:
        ex = executors.SlurmJobs(executors.SlurmOptions(opts.slurm_folder, opts.slurm_partition, opts.slurm_time,
                                                        opts.slurm_gpus, opts.slurm_mem_gb), jobs)
        for p in planned:
            p.device = ("cuda" if opts.slurm_gpus else "cpu") if p.cfg.device == "auto" else p.cfg.device
            p.threads = p.cfg.threads or 1
            p.cpus, p.gpus = p.threads, float(opts.slurm_gpus if p.device.startswith("cuda") else 0)
    for p in planned:
        p.key = run_key(p.cfg, p.device)
        p.params |= {"device": p.device, "threads": str(p.threads)}
    twins = {}
    for p in planned:
        if p.key in twins:
            raise ConfigError(f"{p.name} and {twins[p.key]} are the same configuration (run key {p.key}): "
                              "a suite lists each run once")
        twins[p.key] = p.name
    return ex


# -- 2-5. the invocation ---------------------------------------------------------------------------
def _epoch_of_checkpoint(tags: dict[str, str]) -> int:
    """``checkpoints/epoch-000007.pt`` -> 7; no checkpoint -> 0."""
    name = tags.get("vaebench.checkpoint", "")
    return int(name.rsplit("-", 1)[1].split(".")[0]) if name else 0


class Invocation:
    def __init__(self, opts: Options, suite, planned: list[Planned], executor) -> None:
        import torch

        self.opts, self.suite, self.planned, self.ex = opts, suite, planned, executor
        self.uri = tracking.resolve_tracking_uri(opts.tracking_uri)
        self.commit = tracking.git_commit()
        self.common_tags = {"git_commit": self.commit, "mlflow.source.git.commit": self.commit,
                            "torch_version": torch.__version__}
        self.progress: SuiteProgress | None = None

    # -- claim ---------------------------------------------------------------------------------
    def claim(self) -> None:
        """Sweep dead runs, decide every key, create the parent and the children (see the module
        docstring); under the store's lock, so concurrent invocations decide one after another."""
        from bench.config import resolve_device

        with tracking.store_lock(self.uri):
            t = self.tracker = tracking.Tracker(self.uri, self.suite.name)
            parents = {r.info.run_id: r for r in t.search("parent")}
            children = t.search("child")
            killed = self._sweep(parents, children)

            def status(r) -> str:
                return "KILLED" if r.info.run_id in killed else r.info.status

            mine: dict[str, list] = {}
            for c in children:
                if c.data.tags.get("git_commit") == self.commit and "vaebench.run_key" in c.data.tags:
                    mine.setdefault(c.data.tags["vaebench.run_key"], []).append(c)
            for p in self.planned:
                runs = sorted(mine.get(p.key, []), key=lambda r: r.info.start_time, reverse=True)
                done = [r for r in runs if status(r) == "FINISHED"]
                live = [r for r in runs if status(r) in LIVE]
                if self.opts.fresh or not runs:
                    p.decision = "new"
                elif done:
                    p.decision, p.run_id, p.final = "reuse", done[0].info.run_id, dict(done[0].data.metrics)
                    p.outcome = "reused"
                elif live:
                    p.decision, p.run_id = "watch", live[0].info.run_id
                else:
                    p.decision, p.run_id = "resume", runs[0].info.run_id
                    p.start_epoch = _epoch_of_checkpoint(runs[0].data.tags)
            first = next((p.device for p in self.planned), "cpu")
            device_name = tracking.device_name(resolve_device(first)) if self.ex.name == "local" else f"{self.ex.name} workers"
            self.common_tags["device_name"] = device_name
            self.parent = t.start_parent(
                self.common_tags | {"vaebench.executor": self.ex.name},
                {"suite": self.suite.name, "suite_file": str(self.suite.path), "n_runs": str(len(self.planned)),
                 "overrides": " ".join(self.opts.set or []) or "-", "executor": self.ex.name,
                 "jobs": str(self.ex.capacity or "auto"), "fresh": str(self.opts.fresh)},
            )
            t.log_dict(self.parent, {"suite": self.suite.name, "description": self.suite.description,
                                     "runs": [p.cfg.__dict__ for p in self.planned]}, "suite.json")
            for p in self.planned:
                if p.decision == "new":
                    self._create(p)
                elif p.decision == "resume":
                    self._reopen(p, "resumed by this invocation")
            self._record()

    def _sweep(self, parents: dict, children: list) -> set[str]:
        """Mark KILLED every parent and child of the experiment whose process is gone; their ids."""
        now, killed = time.time(), set()
        for c in children:  # before the parents: a child's liveness may depend on its parent's
            if c.info.status in LIVE and not self._child_alive(c, parents, now):
                self._mark(c.info.run_id, "KILLED", f"its process ({_holder(c.data.tags)}) is gone")
                killed.add(c.info.run_id)
        for r in parents.values():
            if r.info.status in LIVE and not tracking.holder_alive(r.data.tags, now):
                self._mark(r.info.run_id, "KILLED", f"its driver ({_holder(r.data.tags)}) is gone")
                killed.add(r.info.run_id)
        return killed

    @staticmethod
    def _child_alive(c, parents: dict, now: float) -> bool:
        if c.info.status not in LIVE:
            return False
        parent = parents.get(c.data.tags.get("mlflow.parentRunId", ""))
        parent_alive = parent is not None and tracking.holder_alive(parent.data.tags, now)
        if c.info.status == "SCHEDULED":  # queued: held by the driver that created it
            return parent_alive
        if c.data.tags.get("vaebench.executor") in ("local", "ray") and not parent_alive:
            return False  # local workers and Ray tasks die with their driver
        return tracking.holder_alive(c.data.tags, now)

    def _mark(self, run_id: str, status: str, reason: str, error: str | None = None) -> None:
        tags = {"vaebench.end_reason": reason[:5000]}
        if error is not None:
            tags["error"] = error[:5000]
        self.tracker.set_tags(run_id, tags)
        self.tracker.end(run_id, status)

    def _child_tags(self, p: Planned) -> dict[str, str]:
        return {"vaebench.run_key": p.key, "vaebench.attempt": uuid.uuid4().hex, "vaebench.executor": self.ex.name,
                "vaebench.epochs": str(p.cfg.epochs), "mlflow.parentRunId": self.parent, **tracking.lease_tags()}

    def _create(self, p: Planned) -> None:
        import variants
        from bench import config

        t = self.tracker
        skipped = config.skipped_measurements(p.cfg, variants.get(p.cfg.variant))  # the reasons, as tags
        tags = self.common_tags | self._child_tags(p) | {f"vaebench.skipped.{m}": why for m, why in skipped.items()}
        p.run_id = t.start_child(p.name, tags, p.params)
        t.client.update_run(p.run_id, status="SCHEDULED")
        t.log_dict(p.run_id, dataclasses.asdict(p.cfg) | {"device": p.device}, "config.json")

    def _reopen(self, p: Planned, why: str) -> None:
        run = self.tracker.client.get_run(p.run_id)
        history = run.data.tags.get("vaebench.history", "")
        line = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} {run.info.status} after epoch {p.start_epoch} "
                f"({run.data.tags.get('vaebench.end_reason', 'no reason recorded')}); {why} {self.parent}")
        self.tracker.reopen(p.run_id, self._child_tags(p) | {"vaebench.history": (history + "\n" + line).strip()[-4000:]})
        self.tracker.client.update_run(p.run_id, status="SCHEDULED")
        for tag in ("vaebench.end_reason", "error"):  # the last attempt's, kept in the history
            if tag in run.data.tags:
                self.tracker.client.delete_tag(p.run_id, tag)

    def _record(self) -> None:
        """The parent's account of this invocation (rewritten as outcomes arrive)."""
        runs = [{"run_key": p.key, "run_name": p.name, "run_id": p.run_id, "outcome": p.outcome,
                 "resumed_after_epoch": p.start_epoch or None, "error": p.error or None}
                for p in self.planned]
        self.tracker.log_dict(self.parent, {"suite": self.suite.name, "git_commit": self.commit, "executor": self.ex.name,
                                            "fresh": self.opts.fresh, "runs": runs}, "invocation.json")
        counts = {o: sum(p.outcome == o for p in self.planned) for o in OUTCOMES}
        self.tracker.set_tags(self.parent, {f"vaebench.n_{o}": str(n) for o, n in counts.items()})

    # -- execute -------------------------------------------------------------------------------
    def execute(self) -> int:
        self.t0 = time.perf_counter()
        todo = [p for p in self.planned if p.decision in ("new", "resume")]
        self.watch = {p.run_id: p for p in self.planned if p.decision == "watch"}
        reused = [p for p in self.planned if p.decision == "reuse"]
        self.progress = pr = SuiteProgress(self.suite.name, len(self.planned) - len(reused), len(reused))
        for p in todo + list(self.watch.values()):
            pr.plan_epochs(p.cfg.epochs - p.start_epoch)
        pr.print(f"suite {self.suite.name!r}: {len(self.planned)} runs -> {self.uri} (experiment {self.suite.name!r}), "
                 f"{len(reused)} reused, {sum(p.start_epoch > 0 for p in todo)} to resume, "
                 f"{sum(p.start_epoch == 0 for p in todo)} to run, {len(self.watch)} running elsewhere; "
                 f"executor {self.ex.name}, {self.ex.capacity or 'auto'} at once")
        self.inflight: dict[str, Planned] = {}
        heartbeat = tracking.Heartbeat(self.tracker.client, self.parent)
        # Ctrl-C or SIGTERM (a batch system, nox): stop after the epochs in progress, at a point
        # where nothing is half written; a second one stops at once.
        self.stopping = False
        worker.clear_stop()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        polled = 0.0
        try:
            while (todo or self.inflight or self.watch) and not self.stopping:
                while todo and (self.ex.capacity is None or len(self.inflight) < self.ex.capacity):
                    self._submit(todo.pop(0))
                for o in self.ex.wait(0.5):
                    self._handle(o)
                if time.monotonic() - polled > 2.0:
                    polled = time.monotonic()
                    todo += self._poll()
                pr.tick()
            if self.stopping and (todo or self.inflight or self.watch):  # not when all is done anyway
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)  # the clean-up is not interrupted
            return self._interrupted()
        finally:
            heartbeat.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            pr.close()
        return self._finish()

    def _on_signal(self, signum, frame) -> None:
        if self.stopping:
            raise KeyboardInterrupt
        self.stopping = True
        worker.request_stop()  # the run executing in this process, if any (--jobs 1)
        sys.stderr.write("\nstopping after the epochs in progress (again to stop at once)\n")

    def _submit(self, p: Planned) -> None:
        run = self.tracker.client.get_run(p.run_id)
        job = Job(uri=self.uri, run_id=p.run_id, attempt=run.data.tags["vaebench.attempt"], run_key=p.key,
                  run_name=p.name, config=dataclasses.asdict(p.cfg) | {"device": p.device}, threads=p.threads,
                  checkpoint_every=self.opts.checkpoint_every)
        slurm_id = self.ex.submit(job, p.cpus, p.gpus)
        if slurm_id:
            self.tracker.set_tags(p.run_id, {"vaebench.slurm_job": slurm_id})
        self.inflight[p.run_id] = p
        if not self.ex.remote:  # remote runs show up once their worker has started (_poll)
            self._show_start(p)

    def _show_start(self, p: Planned) -> None:
        self.progress.start(p.run_id, f"[{p.index + 1}/{len(self.planned)}] {p.name}", p.cfg.epochs, p.start_epoch)

    def on_progress(self, run_id: str, epoch: int, line: str) -> None:
        if self.progress is not None:
            self.progress.update(run_id, epoch, line)
            self.progress.tick()

    def _handle(self, o: Outcome) -> None:
        p = self.inflight.pop(o.run_id)
        label = f"[{p.index + 1}/{len(self.planned)}] {p.name}"
        if o.status == "SUPERSEDED":  # another invocation took the run over: await its outcome
            self.watch[p.run_id] = p
            self.progress.drop(p.run_id, f"{label} is now run by another invocation")
            return
        if o.status == "FINISHED":
            p.outcome, p.final = ("resumed" if p.start_epoch > 0 else "ran"), o.final
            self.progress.finish(p.run_id, True, f"{label} finished: {_numbers(o.final)}")
        else:
            if not o.marked:
                self._mark(p.run_id, o.status, o.error, error=o.error)
            p.outcome, p.error = ("killed" if o.status == "KILLED" else "failed"), o.error
            self.progress.print(o.traceback.rstrip() if o.traceback else f"error: {o.error}")
            self.progress.finish(p.run_id, False, f"{label} {o.status}: {o.error}")
        self._record()

    def _poll(self) -> list[Planned]:
        """Progress of remote workers (their ``vaebench.epoch`` tag); outcomes of watched runs;
        watched runs whose process died are taken over (returned, to be resumed here)."""
        c = self.tracker.client
        if self.ex.remote and self.inflight:
            mine = {r.info.run_id: r for r in c.search_runs(  # one call for all of this invocation's runs
                [self.tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent}'", max_results=10000)}
            for run_id, p in self.inflight.items():
                run = mine.get(run_id) or c.get_run(run_id)
                tags = run.data.tags
                if run.info.status != "SCHEDULED" and run_id not in self.progress.running:
                    self._show_start(p)
                if tags.get("vaebench.epoch"):
                    e = int(tags["vaebench.epoch"])
                    self.progress.update(run_id, e, f"epoch {e:>3}/{p.cfg.epochs}")
        take = []
        for run_id, p in list(self.watch.items()):
            run = c.get_run(run_id)
            if run.info.status == "FINISHED":
                p.outcome, p.final = "reused", dict(run.data.metrics)
            elif run.info.status == "FAILED":
                p.outcome, p.error = "failed", "FAILED in another invocation"
            else:  # running elsewhere, or stopped there (KILLED): resumed here once it is not alive
                if self._take_over(p):
                    take.append(p)
                    del self.watch[run_id]
                continue
            del self.watch[run_id]
            self.progress.finish(run_id, p.outcome == "reused", f"[{p.index + 1}/{len(self.planned)}] {p.name} "
                                 f"{'finished' if p.outcome == 'reused' else p.error} (in another invocation)")
            self._record()
        return take

    def _alive(self, run) -> bool:
        c = self.tracker.client
        parent_id = run.data.tags.get("mlflow.parentRunId")
        parents = {parent_id: c.get_run(parent_id)} if parent_id else {}
        return self._child_alive(run, parents, time.time())

    def _take_over(self, p: Planned) -> bool:
        """A watched run that was stopped, or whose process has died, is resumed here (decided
        under the store's lock, looking again: another invocation may have taken it first)."""
        if self._alive(self.tracker.client.get_run(p.run_id)):
            return False
        with tracking.store_lock(self.uri):
            run = self.tracker.client.get_run(p.run_id)
            if run.info.status in ("FINISHED", "FAILED") or self._alive(run):
                return False
            if run.info.status in LIVE:
                self._mark(p.run_id, "KILLED", f"its process ({_holder(run.data.tags)}) is gone")
            p.decision, p.start_epoch = "resume", _epoch_of_checkpoint(run.data.tags)
            self._reopen(p, "taken over by")
        self.progress.print(f"[{p.index + 1}/{len(self.planned)}] {p.name}: its process in another invocation is gone, "
                            f"resuming it here after epoch {p.start_epoch}")
        return True

    def _interrupted(self) -> int:
        from mlflow.exceptions import MlflowException

        left = self.ex.cancel()
        try:
            for p in self.planned:
                if p.run_id and (p.run_id in left or p.outcome == "pending") and p.decision != "watch":
                    if self.tracker.client.get_run(p.run_id).info.status in LIVE:
                        started = p.run_id in self.inflight
                        self._mark(p.run_id, "KILLED", "interrupted (Ctrl-C)" if started else "interrupted before it started")
                    p.outcome = "killed" if p.outcome == "pending" else p.outcome
            self._mark(self.parent, "KILLED", "interrupted (Ctrl-C)")
            self._record()
        except MlflowException as e:  # stopped at once inside a store write (a second Ctrl-C)
            print(f"\ncould not mark the interrupted runs ({str(e).splitlines()[0]}): the next invocation will",
                  file=sys.stderr)
        print("\ninterrupted: finished runs and every logged epoch are in the store; the interrupted runs are "
              "marked KILLED, and the same command resumes them", file=sys.stderr)
        return 130

    def _finish(self) -> int:
        t = self.tracker
        seconds = time.perf_counter() - self.t0
        t.log_metrics(self.parent, {"perf/suite_seconds": seconds}, None)
        self._record()
        failed = [p for p in self.planned if p.outcome in ("failed", "killed")]
        t.end(self.parent, "FAILED" if failed else "FINISHED")
        _print_summary(self.planned, seconds)
        if failed:
            print(f"{len(failed)} run(s) failed: {', '.join(p.name for p in failed)} (marked FAILED in the store; "
                  "the same command retries them, from their last checkpoint)", file=sys.stderr)
            return 1
        return 0


def _holder(tags: dict[str, str]) -> str:
    return f"host {tags.get('vaebench.host', '?')}, pid {tags.get('vaebench.pid', '?').split('@')[0]}"


def _numbers(final: dict[str, float]) -> str:
    """``test/elbo -24.03  test/log_px -23.66`` (the summary's bounds; ``skipped`` where absent)."""
    from bench import vocabulary

    return "  ".join(f"{m.name} {m.format(final[m.name])}" if m.name in final else f"{m.name} skipped"
                     for m in vocabulary.summary_metrics() if m.unit == "nats")


def _print_summary(planned: list[Planned], seconds: float) -> None:
    """The table of the invocation on stderr: each run's outcome and the vocabulary's summary
    metrics (``skipped`` for one the run does not measure, ``-`` for a run without final numbers)."""
    from bench import vocabulary

    cols = vocabulary.summary_metrics()
    heads = [m.name for m in cols]
    widths = [max(len(h), 10) for h in heads]
    w = max(len(p.name) for p in planned)
    print(f"\n{'run':<{w}}  {'outcome':<8}  " + "  ".join(f"{h:>{n}}" for h, n in zip(heads, widths)), file=sys.stderr)
    for p in planned:
        m = p.final
        cells = [("-" if not m else m_.format(m[m_.name]) if m_.name in m else "skipped") for m_ in cols]
        print(f"{p.name:<{w}}  {p.outcome:<8}  " + "  ".join(f"{c:>{n}}" for c, n in zip(cells, widths)), file=sys.stderr)
    counts = {o: sum(p.outcome == o for p in planned) for o in OUTCOMES}
    resumed = [f"{p.name} after epoch {p.start_epoch}" for p in planned if p.outcome == "resumed"]
    print(", ".join(f"{n} {o}" for o, n in counts.items() if n) + (f" ({'; '.join(resumed)})" if resumed else ""),
          file=sys.stderr)
    print(f"suite time {seconds:.1f} s", file=sys.stderr)


def main(opts: Options) -> int:
    """``python -m bench run``: plan, claim, execute, summarize; the exit code."""
    if opts.executor == "local" and opts.jobs != "1":
        from bench.executors import start_fork_server

        start_fork_server()
    suite, planned, loaded = plan(opts)
    box: list[Invocation] = []
    ex = make_executor(opts, planned, lambda *a: box[0].on_progress(*a) if box else None)
    try:
        for (name, binarization, data_dir, val_size), ds in loaded.items():  # the driver's own runs reuse them
            worker._DATA.setdefault((name, binarization, data_dir, "cpu", val_size), ds)
        inv = Invocation(opts, suite, planned, ex)
        box.append(inv)
        inv.claim()
        return inv.execute()
    finally:
        ex.close()
