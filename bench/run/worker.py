"""One run, executed where an executor put it: the driver's own process (``--jobs 1``), a local
worker process, a Ray task or a Slurm job. The driver has already created the MLflow run; the
worker only logs to it (nested runs cannot be created from Ray workers, and one place creating
them keeps an invocation's layout in one piece).

:func:`execute` takes a :class:`Job` (picklable: it travels to Ray and submitit) and returns an
:class:`Outcome`. In order:

1. the fence: the run's tag ``vaebench.attempt`` must still be the job's token (a newer attempt
   may have taken the run over, e.g. after the driver that queued this Slurm job died);
   re-checked at every heartbeat, and the job stops at its next epoch if it moved;
2. the lease: the run's ``vaebench.host``/``vaebench.pid`` become this process's, refreshed by a
   heartbeat thread (``bench.store.tracking``), so a later invocation can tell a live run from a dead one;
3. the data, loaded here by name (workers may be on other nodes);
4. the newest checkpoint of the run, if any (``bench.checkpoint``), and every (metric, step) the
   run already holds after it: a kill between logging an epoch and checkpointing it makes the
   resumed run compute that epoch again, and its logger drops what the store already has, so
   each step is in the store exactly once;
5. ``bench.train.run`` with a per-epoch checkpoint hook, the artifacts (sample and
   reconstruction grids, curves, final weights), the checkpoints deleted, the run FINISHED.

A run whose bound turns non-finite, or that raises, is FAILED with the error as the tag ``error``
(and the traceback in the outcome, for the driver to print). A stop (:func:`request_stop`: the
driver's Ctrl-C, or its SIGTERM to a worker process) is taken at the next epoch boundary, after
that epoch's checkpoint, never in the middle of a write to the store; a KeyboardInterrupt (a Ray
cancel) is taken where it lands. Either marks the run KILLED and is re-raised. Deaths (SIGKILL, a
segfault, the out-of-memory killer) are seen, and marked, by the executor's driver side.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.errors import BenchError
from bench.run.job import STOP, Job, Outcome, Paused
from bench.store import tracking
from bench.store.tracking import TAG_EPOCH

ProgressFn = Callable[[str, int, dict], None]  # (run_id, epoch, row): bench.train.run's on_epoch, with the run

class Superseded(Exception):
    """Another attempt holds the run now: stop without touching it."""


class RunLogger:
    """``log(metrics, step)`` for one run, buffered until :meth:`flush`: each (metric, step) at
    most once in the store. A flush is one store write: the metrics since the last one, the tag
    ``vaebench.epoch`` (the driver's progress for remote workers) and the caller's tags (the
    epoch's checkpoint), so a sqlite store sees one transaction per epoch."""

    def __init__(self, client, run_id: str, after: int, check: Callable[[], None] = lambda: None) -> None:
        self.client, self.run_id, self.check = client, run_id, check
        self.pending: list = []
        self.step = 0
        run = client.get_run(run_id)
        stored = {key: client.get_metric_history(run_id, key) for key in run.data.metrics}
        self.have = {(key, m.step) for key, ms in stored.items() for m in ms if m.step > after}
        # what a resumed run logged before its checkpoint: the part of its history this process
        # does not compute again (the run's figure joins it to the result's history)
        self.before = {key: sorted((m.step, m.value) for m in ms if m.step <= after) for key, ms in stored.items()}

    def __call__(self, values: dict[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        self.check()
        self.step = step or 0
        ts = int(time.time() * 1000)
        new = [(k, v) for k, v in values.items() if (k, self.step) not in self.have]
        self.have.update((k, self.step) for k, _ in new)
        self.pending += [Metric(k, float(v), ts, self.step) for k, v in new]

    def flush(self, tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import RunTag

        self.check()
        ms, self.pending = self.pending, []
        tag_list = [RunTag(k, v) for k, v in ({TAG_EPOCH: str(self.step)} | (tags or {})).items()]
        for i in range(0, max(len(ms), 1), 1000):
            self.client.log_batch(self.run_id, metrics=ms[i : i + 1000], tags=tag_list if i == 0 else [])


_DATA: dict[tuple, object] = {}  # datasets kept by a long-lived worker process between its runs


def data_key(cfg, device: str) -> tuple:
    """The key of the dataset a run of ``cfg`` reads on ``device`` (a device name)."""
    return (cfg.dataset, cfg.binarization, cfg.data_dir, device, cfg.val_size)


def preload(loaded: dict[tuple, object]) -> None:
    """Datasets the driver has loaded (``bench.run.plan.plan``, keyed by :func:`data_key`), for the
    runs it executes in its own process (``--jobs 1``)."""
    for key, ds in loaded.items():
        _DATA.setdefault(key, ds)


def dataset(cfg):
    """The dataset of ``cfg`` on its device, loaded once per worker process."""
    from bench import config, data

    key = data_key(cfg, cfg.device)
    if key not in _DATA:
        _DATA.clear()  # one at a time: a worker moving to another dataset frees the last
        _DATA[key] = data.load(cfg.dataset, binarization=cfg.binarization, data_dir=cfg.data_dir,
                               device=config.resolve_device(cfg.device), n_val=cfg.val_size or None)
    return _DATA[key]


def execute(job: Job, progress: ProgressFn | None = None) -> Outcome:
    """Run the training ``job`` to its end in this process (see the module docstring)."""
    import torch
    from mlflow.tracking import MlflowClient

    from bench import config, passes, train
    from bench.store.checkpoints import ArtifactCheckpoints

    client = MlflowClient(job.uri)
    if client.get_run(job.run_id).data.tags.get(tracking.TAG_ATTEMPT) != job.attempt:
        return Outcome(job.run_id, "SUPERSEDED", marked=False)
    client.update_run(job.run_id, status="RUNNING")
    if job.threads:
        torch.set_num_threads(job.threads)
    cfg = job.cfg
    passes.set_gpu_share(job.gpu_share)
    device = config.resolve_device(cfg.device)
    client.log_batch(job.run_id, tags=_tags(tracking.lease_tags() | {"device_name": tracking.device_name(device)}))

    checkpoints = ArtifactCheckpoints(client, job.run_id)
    superseded = [False]

    def fence(run) -> None:  # from the heartbeat thread; the loop stops at its next log or checkpoint
        if run.data.tags.get(tracking.TAG_ATTEMPT) != job.attempt:
            superseded[0] = True

    def check() -> None:
        if superseded[0]:
            raise Superseded(f"run {job.run_id} was taken over by a newer attempt")

    last = [0.0]

    def save(epoch: int, capture) -> None:  # after every epoch's log: its metrics and checkpoint, one write
        check()
        now = time.monotonic()
        pause = epoch == job.stop_after and epoch < cfg.epochs
        if epoch == cfg.epochs or now - last[0] >= job.checkpoint_every or STOP.is_set() or pause:
            checkpoints.save(capture(), write_tags=log.flush)
            last[0] = now
        else:
            log.flush()
        if STOP.is_set() and epoch < cfg.epochs:  # the epoch is stored: a safe place to stop
            raise KeyboardInterrupt
        if pause:
            raise Paused(epoch)

    on_epoch = (lambda epoch, row: progress(job.run_id, epoch, row)) if progress else None
    heartbeat = tracking.Heartbeat(client, job.run_id, check=fence)
    # Argument validation of torch.distributions costs time on every call of the hot path, and a
    # diverging run must reach the loop's finiteness check (NonFiniteLoss) rather than die inside
    # a constructor: off while the run executes.
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    resumed = log = None
    try:
        state = checkpoints.latest()
        resumed = state["epoch"] if state is not None else None
        log = RunLogger(client, job.run_id, after=resumed or 0, check=check)
        ds = dataset(cfg)
        try:
            result = train.run(cfg, ds, log, on_epoch, checkpoint_fn=save, resume=state)
        except Exception:
            log.flush()  # what was logged before the error (non-finite final metrics, say)
            raise
        # Not on a BaseException: an interrupt or submitit's requeue (SystemExit, raised by its
        # preemption signal handler) may land inside a store write, whose transaction is left
        # open until this process exits and rolls it back; the resumed run recomputes the epoch.
        log.flush()  # the final metrics
        history = {k: log.before.get(k, []) + v for k, v in result.history.items()}
        log_artifacts(client, job.run_id, result.model, ds, history, split="val" if cfg.evaluate == "validation" else "test")
        checkpoints.clear()
    except Superseded:
        return Outcome(job.run_id, "SUPERSEDED", resumed_from=resumed, marked=False)
    except Paused as e:  # its epochs and checkpoint are stored; the next job with a later stop resumes it
        reason = f"paused after epoch {e.args[0]} (a search rung)"
        client.log_batch(job.run_id, tags=_tags({tracking.TAG_END_REASON: reason}))
        client.set_terminated(job.run_id, "KILLED")
        return Outcome(job.run_id, "PAUSED", error=reason, resumed_from=resumed)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        # a user-facing error (NaN loss, a config the variant rejects at run time) is its message;
        # a bug or an exhausted device: the traceback is what helps
        tb = "" if isinstance(e, BenchError) else traceback.format_exc()
        if torch.cuda.is_initialized():  # after an out-of-memory error, the next run gets the memory back
            torch.cuda.empty_cache()
        client.log_batch(job.run_id, tags=_tags({"error": error[:5000], tracking.TAG_END_REASON: error[:5000]}))
        client.set_terminated(job.run_id, "FAILED")
        return Outcome(job.run_id, "FAILED", error=str(e) if isinstance(e, BenchError) else error,
                       traceback=tb, resumed_from=resumed)
    except KeyboardInterrupt:
        try:
            if log is not None:
                log.flush()  # what was logged before the interrupt is kept
            client.log_batch(job.run_id, tags=_tags({tracking.TAG_END_REASON: "interrupted (Ctrl-C or the driver's stop)"}))
            client.set_terminated(job.run_id, "KILLED")
        except Exception:
            pass
        raise
    finally:
        heartbeat.stop()
        torch.distributions.Distribution.set_default_validate_args(validate)
    client.set_terminated(job.run_id, "FINISHED")
    return Outcome(job.run_id, "FINISHED", final=result.final, resumed_from=resumed)


def _tags(tags: dict[str, str]):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]


def log_artifacts(client, run_id: str, model, ds, history: dict[str, list[tuple[int, float]]],
                  split: str = "test") -> None:
    """The run's own figures (samples, reconstructions, the curves drawn from the run's
    ``history``: ``bench.plots.curves``) and its final weights, uploaded to the run."""
    import torch

    from bench.plots.curves import run_figure, run_images

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        tmp = Path(tmp)
        for name in run_images(model, ds, tmp, split=split):
            client.log_artifact(run_id, str(tmp / name))
        run_figure(history, tmp / "curves.png")
        client.log_artifact(run_id, str(tmp / "curves.png"), "figures")
        torch.save(model.state_dict(), tmp / "model.pt")
        client.log_artifact(run_id, str(tmp / "model.pt"))
