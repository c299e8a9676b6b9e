"""Where the runs of a suite execute, and each run's place there (device, threads, resources).

The driver (``bench.run.runner``) hands each executor jobs (``bench.run.job.Job``: the run id to
log to, the config, the threads) and collects outcomes; every executor runs the same
:func:`execute`, so a run's numbers do not depend on where it ran. :func:`make_executor` builds
the executor ``--executor`` names and places each planned run on it.

=========================  ====================================================================
``--executor local``       ``--jobs 1``: in the driver's own process, one run after the other
                           (as a plain loop: a debugger and tracebacks work as usual).
                           ``--jobs N``: N worker processes (spawned, each its own torch threads),
                           kept for the whole suite; a worker that dies (SIGKILL, segfault, the
                           out-of-memory killer) fails its run and is replaced. On CUDA each worker
                           is pinned to one visible GPU (``CUDA_VISIBLE_DEVICES``), round robin:
                           ``--runs-per-gpu M`` puts M workers on each GPU.
``--executor ray``         each run a Ray task requesting ``threads`` CPUs and ``1/runs-per-gpu``
                           GPUs; ``--ray-address`` joins a running cluster, else a local one is
                           started for the invocation. No retries: a run whose worker dies is
                           FAILED, and the next invocation resumes it from its checkpoint.
``--executor submitit``    each run a Slurm job through submitit (partition, time limit, GPUs per
                           run as options); on preemption or timeout the job is requeued and
                           continues from its checkpoint. Without Slurm, submitit runs the jobs
                           as local processes (its LocalExecutor).
=========================  ====================================================================

Workers never create runs; outcomes the worker could not report (a death) come back with
``marked=False`` and the driver marks the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError, ConfigError
from bench.plugins import NO_PLUGINS, Plugins, ensure, ray_modules
from bench.run import remeasure_job, worker
from bench.run.job import Job, Outcome, request_stop
from bench.run.plan import Options, Planned


def execute(job: Job, progress=None) -> Outcome:
    """Run ``job`` in this process, as every executor does: a training run (``bench.run.worker``)
    or, for a job of kind ``"remeasure"``, a re-measure of a FINISHED run (``bench.run.remeasure_job``)."""
    try:
        ensure(job.plugins)  # before anything resolves a variant, objective or dataset name
    except BenchError as e:
        return Outcome(job.run_id, "FAILED", error=str(e), marked=False)
    if job.kind == "remeasure":
        return remeasure_job.execute(job)
    return worker.execute(job, progress)


def died(exitcode: int | None) -> str:
    """Why a process ended, in words (for the run's ``error`` tag)."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {"SIGKILL": " (killed: kill -9, or the out-of-memory killer)",
                "SIGSEGV": " (segmentation fault)", "SIGBUS": " (bus error)", "SIGABRT": " (aborted)"}
        return f"worker process died of {name}{hint.get(name, '')}"
    return f"worker process exited with code {exitcode} before reporting"


class Inline:
    """``--jobs 1``: runs execute in the driver's process, in submission order."""

    name, capacity, remote = "local", 1, False

    def __init__(self, on_progress) -> None:
        self.on_progress = on_progress
        self.queue: list[Job] = []

    def submit(self, job: Job, cpus: int, gpus: float) -> str | None:
        self.queue.append(job)
        return None

    def wait(self, timeout: float) -> list[Outcome]:
        # a Ctrl-C (the driver's request_stop) ends the run at its next epoch: KILLED, re-raised
        return [execute(self.queue.pop(0), self.on_progress)] if self.queue else []

    def cancel(self, grace: float = 10.0) -> list[str]:
        return []

    def close(self) -> None:
        pass


# -- local worker processes --------------------------------------------------------------------
def _die_with(driver: int) -> None:
    """Linux: the kernel SIGKILLs this process when its parent dies, even by kill -9. The parent
    is the fork server, which exits when the driver does."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    try:
        os.kill(driver, 0)
    except ProcessLookupError:  # the driver died before prctl
        os._exit(1)


def pin_gpu(gpu: str | None) -> None:
    """A worker's GPU: ``CUDA_VISIBLE_DEVICES`` (before CUDA is initialized, lazily, in the process)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _serve(conn, parent: int, gpu: str | None) -> None:
    """A worker process: execute jobs from ``conn`` until None; progress and outcomes back."""
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the driver, which stops us
    signal.signal(signal.SIGTERM, request_stop)  # ... with SIGTERM: the run stops after its epoch, KILLED
    pin_gpu(gpu)
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return

        def progress(run_id: str, epoch: int, row: dict) -> None:
            try:
                conn.send(("progress", run_id, epoch, row))
            except OSError:  # the driver is gone: end here, leaving the run for the next invocation
                os._exit(1)

        try:
            outcome = execute(job, progress)
        except KeyboardInterrupt:
            conn.send(("done", Outcome(job.run_id, "KILLED", error="interrupted")))
            return
        conn.send(("done", outcome))


def gpu_of_slot(i: int, gpus: list[str] | None, runs_per_gpu: int) -> str | None:
    """The GPU of worker slot ``i``: the first ``runs_per_gpu`` slots share the first GPU, the
    next ones the second, and so on round the visible GPUs; None without GPUs to pin to."""
    return gpus[i // runs_per_gpu % len(gpus)] if gpus else None


PRELOAD = ["bench.run.executors", "torch", "torch._dynamo", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store", "alembic",
           "bench.train", "bench.checkpoint", "bench.store.checkpoints", "bench.plots"]


def start_fork_server():
    """Local workers are forked from a fork server: a clean process (no CUDA context, no store
    connection, no thread pool of the driver) that imports the heavy modules (``PRELOAD``, a few
    seconds of CPU) once for all workers. The driver starts it first thing, so that those imports
    overlap its own planning."""
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()
    return ctx


@dataclass
class _Slot:
    gpu: str | None
    proc: mp.Process | None = None
    conn: mp.connection.Connection | None = None
    job: Job | None = None


class LocalProcesses:
    """``--jobs N``: N spawned worker processes (see the module docstring)."""

    name, remote = "local", False

    def __init__(self, jobs: int, on_progress, gpus: list[str] | None = None, runs_per_gpu: int = 1) -> None:
        self.capacity = jobs
        self.on_progress = on_progress
        self.runs_per_gpu = runs_per_gpu
        self.slots = [_Slot(gpu_of_slot(i, gpus, runs_per_gpu)) for i in range(jobs)]
        self.ctx = start_fork_server()

    def _start(self, slot: _Slot) -> None:
        mine, theirs = self.ctx.Pipe()
        slot.proc = self.ctx.Process(target=_serve, args=(theirs, os.getpid(), slot.gpu), daemon=True)
        slot.proc.start()
        theirs.close()
        slot.conn = mine

    def submit(self, job: Job, cpus: int, gpus: float) -> str | None:
        slot = next(s for s in self.slots if s.job is None)
        if slot.proc is None or not slot.proc.is_alive():
            self._start(slot)
        if slot.gpu is not None:  # pinned: the runs on its GPU share its memory
            job = dataclasses.replace(job, gpu_share=self.runs_per_gpu)
        slot.job = job
        slot.conn.send(job)
        return None

    def _busy(self) -> list[_Slot]:
        return [s for s in self.slots if s.job is not None]

    def wait(self, timeout: float) -> list[Outcome]:
        busy = self._busy()
        if not busy:
            time.sleep(min(timeout, 0.05))
            return []
        ready = mp.connection.wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout)
        out: list[Outcome] = []
        for slot in busy:
            if slot.conn in ready or slot.proc.sentinel in ready:
                out += self._drain(slot)
        return out

    def _drain(self, slot: _Slot) -> list[Outcome]:
        """Read what the slot's worker sent; if it has died, its run's outcome is the death."""
        out = []
        try:
            while slot.job is not None and slot.conn.poll():
                msg = slot.conn.recv()
                if msg[0] == "progress":
                    self.on_progress(*msg[1:])
                else:
                    out.append(msg[1])
                    slot.job = None
        except (EOFError, ConnectionError):
            pass
        if slot.job is not None and not slot.proc.is_alive():
            slot.proc.join()
            out.append(Outcome(slot.job.run_id, "FAILED", error=died(slot.proc.exitcode), marked=False))
            slot.job = None
            slot.proc = slot.conn = None
        return out

    def cancel(self, grace: float = 10.0) -> list[str]:
        """SIGTERM every busy worker (it stops its run after the epoch in progress and marks it
        KILLED); SIGKILL after ``grace`` seconds. Returns the run ids whose workers did not report."""
        busy = self._busy()
        for s in busy:
            with contextlib.suppress(ProcessLookupError):
                os.kill(s.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        left = []
        while self._busy() and time.monotonic() < deadline:
            for s in self._busy():
                left += [o.run_id for o in self._drain(s) if not o.marked]
            time.sleep(0.05)
        for s in self._busy():
            s.proc.kill()
            left.append(s.job.run_id)
            s.job = None
        return left

    def close(self) -> None:
        for s in self.slots:
            if s.proc is not None and s.proc.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    s.conn.send(None)
        for s in self.slots:
            if s.proc is not None:
                s.proc.join(5)
                if s.proc.is_alive():
                    s.proc.kill()
                    s.proc.join()


# -- Ray ---------------------------------------------------------------------------------------
def _ray_execute(job: Job) -> Outcome:
    return execute(job)


def _ray_auth_hint() -> str:
    """Ray 2.60's ``ray start`` turns token authentication on when ``~/.ray/auth_token`` exists,
    while a driver given an address uses the token only under ``RAY_AUTH_MODE=token``: the
    connection then fails with ``InvalidAuthToken`` lines in Ray's log and a bare error here."""
    if (Path.home() / ".ray" / "auth_token").is_file() and os.environ.get("RAY_AUTH_MODE") != "token":
        return ("\n(~/.ray/auth_token exists: a cluster started here with 'ray start' may require token "
                "authentication; try RAY_AUTH_MODE=token in the environment of 'bench run')")
    return ""


class RayTasks:
    """``--executor ray``: one Ray task per run (see the module docstring)."""

    name, remote = "ray", True

    def __init__(self, address: str | None, jobs: int | None, plugins: Plugins = NO_PLUGINS) -> None:
        try:
            import ray
        except ImportError:
            raise BenchError("--executor ray needs Ray: pip install 'vaebench[ray]'") from None
        self.ray = ray
        self.capacity = jobs
        self._own = not ray.is_initialized()
        if self._own:
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if address:  # a cluster elsewhere: ship this checkout's code and the plugin modules that are not installed
                import bench
                import variants

                kwargs["runtime_env"] = {"py_modules": [os.path.dirname(bench.__file__), os.path.dirname(variants.__file__),
                                                        *ray_modules(plugins)]}
            try:
                # no address: a new local cluster ("local"), never one a 'ray start' left on this
                # machine (ray.init() would join it through /tmp/ray/ray_current_cluster, or wait on it)
                ray.init(address=address or "local", **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise BenchError(f"cannot connect to the Ray cluster at {address}: {e}{_ray_auth_hint()}") from None
        self.remote_fn = ray.remote(max_retries=0)(_ray_execute)
        self.refs: dict = {}

    def gpus(self) -> int:
        return int(self.ray.cluster_resources().get("GPU", 0))

    def submit(self, job: Job, cpus: int, gpus: float) -> str | None:
        if 0 < gpus < 1:  # a fractional GPU (--runs-per-gpu): the runs sharing it, for the evaluations' memory
            job = dataclasses.replace(job, gpu_share=round(1 / gpus))
        ref = self.remote_fn.options(num_cpus=cpus, num_gpus=gpus, name=job.run_name).remote(job)
        self.refs[ref] = job
        return None

    def wait(self, timeout: float) -> list[Outcome]:
        if not self.refs:
            time.sleep(min(timeout, 0.05))
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        return [self._outcome(ref) for ref in ready]

    def _outcome(self, ref) -> Outcome:
        job = self.refs.pop(ref)
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.TaskCancelledError:
            return Outcome(job.run_id, "KILLED", error="cancelled", marked=False)
        except self.ray.exceptions.RayError as e:  # a dead worker or node, an unpicklable result
            first = str(e).strip().splitlines()
            return Outcome(job.run_id, "FAILED", error=f"Ray task failed: {type(e).__name__}: {first[0] if first else ''}"[:2000],
                           marked=False)

    def cancel(self, grace: float = 10.0) -> list[str]:
        for ref in self.refs:
            self.ray.cancel(ref)
        deadline = time.monotonic() + grace
        left = []
        while self.refs and time.monotonic() < deadline:
            for o in self.wait(0.5):
                if not o.marked:
                    left.append(o.run_id)
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)
            left.append(self.refs.pop(ref).run_id)
        return left

    def close(self) -> None:
        if self._own and self.ray.is_initialized():
            self.ray.shutdown()


# -- Slurm through submitit --------------------------------------------------------------------
class SubmititTask:
    """The callable of every Slurm job. submitit calls ``checkpoint`` on preemption or timeout and
    requeues what it returns: the same job, which continues from the run's checkpoint."""

    def __call__(self, job: Job) -> Outcome:
        return execute(job)

    def checkpoint(self, job: Job):
        import submitit

        return submitit.helpers.DelayedSubmission(self, job)


@dataclass
class SlurmOptions:
    """The Slurm flags of ``bench.run.plan.Options`` (their defaults are declared there)."""

    folder: str  # job scripts and logs
    partition: str
    time_min: int
    gpus_per_run: int
    mem_gb: float
    max_requeues: int = 3


class SlurmJobs:
    """``--executor submitit``: one Slurm job per run (see the module docstring)."""

    name, remote = "submitit", True

    def __init__(self, options: SlurmOptions, jobs: int | None) -> None:
        try:
            import submitit
        except ImportError:
            raise BenchError("--executor submitit needs submitit: pip install 'vaebench[slurm]'") from None
        self.submitit = submitit
        self.capacity = jobs
        self.options = options
        self.executor = submitit.AutoExecutor(folder=options.folder, slurm_max_num_timeout=options.max_requeues)
        self.cluster = self.executor.cluster  # "slurm", or "local" where there is no Slurm
        self.task = SubmititTask()
        self.jobs: dict = {}

    def submit(self, job: Job, cpus: int, gpus: float) -> str | None:
        o = self.options
        params = {"name": job.run_name, "timeout_min": o.time_min, "cpus_per_task": cpus, "tasks_per_node": 1,
                  "nodes": 1, "gpus_per_node": int(gpus > 0) * max(1, o.gpus_per_run)}
        if o.mem_gb:
            params["mem_gb"] = o.mem_gb
        if o.partition and self.cluster == "slurm":
            params["slurm_partition"] = o.partition
        self.executor.update_parameters(**params)
        j = self.executor.submit(self.task, job)
        self.jobs[j] = job
        return str(j.job_id)

    def wait(self, timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        while True:
            out = [self._outcome(j) for j in list(self.jobs) if j.done()]
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.25, timeout))

    def _outcome(self, j) -> Outcome:
        job = self.jobs.pop(j)
        try:
            return j.result()
        except Exception as e:
            first = str(e).strip().splitlines()
            return Outcome(job.run_id, "FAILED", error=f"job {j.job_id} ({j.state}): {first[0] if first else type(e).__name__}"[:2000],
                           marked=False)

    def cancel(self, grace: float = 10.0) -> list[str]:
        for j in self.jobs:
            j.cancel(check=False)
        deadline = time.monotonic() + grace
        left = []
        while self.jobs and time.monotonic() < deadline:
            left += [o.run_id for o in self.wait(0.5) if not o.marked]
        left += [job.run_id for job in self.jobs.values()]
        self.jobs.clear()
        return left

    def close(self) -> None:
        pass


# -- placement: each run's device, threads and resources on the executor ----------------------------
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


def make_executor(opts: Options, planned: list[Planned], on_progress, plugins: Plugins = NO_PLUGINS):
    """The executor ``opts`` names, and each run's device, threads and resources on it (``plugins``:
    the plugin modules a Ray cluster elsewhere is sent, ``bench.plugins.ray_modules``)."""
    import torch

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
            ex = Inline(on_progress)
        else:
            # pin workers to GPUs only where the runs ask for "cuda", not for a device of their own
            generic = all(p.device == "cuda" for p in planned)
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = (visible.split(",") if visible else [str(i) for i in range(n_gpus)]) if generic else None
            ex = LocalProcesses(jobs, on_progress, gpus, opts.runs_per_gpu)
    elif opts.executor == "ray":
        ex = RayTasks(opts.ray_address, jobs, plugins)
        n_gpus = ex.gpus()
        for p in planned:
            p.device = "cuda" if p.cfg.device == "auto" and n_gpus else ("cpu" if p.cfg.device == "auto" else p.cfg.device)
            p.threads = p.cfg.threads or 1
            p.cpus, p.gpus = p.threads, (1 / opts.runs_per_gpu if p.device.startswith("cuda") else 0.0)
    else:
        ex = SlurmJobs(SlurmOptions(opts.slurm_folder, opts.slurm_partition, opts.slurm_time,
                                                        opts.slurm_gpus, opts.slurm_mem_gb), jobs)
        for p in planned:
            p.device = ("cuda" if opts.slurm_gpus else "cpu") if p.cfg.device == "auto" else p.cfg.device
            p.threads = p.cfg.threads or 1
            p.cpus, p.gpus = p.threads, float(opts.slurm_gpus if p.device.startswith("cuda") else 0)
    return ex
