"""What travels between the driver and a worker: the :class:`Job` handed out, the :class:`Outcome`
returned, and the driver's request to stop (taken by the worker at its next epoch boundary)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from bench.config import RunConfig
from bench.plugins import Plugins

MEASUREMENTS = ("grad", "gaps", "log_px", "ais", "active_units")  # what a remeasure job can recompute


@dataclass
class Job:
    """What a worker needs to execute one planned run (plain data: it is pickled to workers)."""

    uri: str
    run_id: str
    attempt: str  # the fencing token: the run's vaebench.attempt tag when the job was handed out
    run_key: str
    run_name: str
    cfg: RunConfig  # the run's configuration, its device resolved by the driver (remeasure: device and data_dir)
    threads: int
    checkpoint_every: float = 0.0  # seconds between checkpoints; 0 = every epoch
    gpu_share: int = 1  # runs sharing this run's GPU (--runs-per-gpu): its evaluations' share of the memory
    kind: str = "train"  # train | remeasure (bench.run.remeasure: final measurements of a FINISHED run)
    measurements: tuple[str, ...] = ()  # remeasure: which (bench.run.remeasure_job.MEASUREMENTS)
    commit: str = ""  # remeasure: the driver's git describe, the run's vaebench.remeasured.commit
    stop_after: int = 0  # train: stop after this epoch with a checkpoint (a search rung; 0 = train to the end)
    plugins: Plugins = Plugins()  # the plugin modules the worker imports first (bench.plugins.ensure)


@dataclass
class Outcome:
    run_id: str
    status: str  # FINISHED | PAUSED (at the job's stop_after) | FAILED | KILLED | SUPERSEDED
    final: dict[str, float] = field(default_factory=dict)
    error: str = ""  # one line, also the run's "error" tag
    traceback: str = ""  # for crashes (bugs, exhausted devices): what helps
    resumed_from: int | None = None  # the checkpoint's epoch, when the run continued one
    marked: bool = True  # the run's status is already set (False: the driver must set it)


class Paused(Exception):
    """Raised by the worker's checkpoint hook after the checkpoint of the job's ``stop_after``
    epoch: the run stops there, resumable (a successive-halving rung, ``bench.run.search``)."""


STOP = threading.Event()


def request_stop(*_) -> None:
    """Stop the run in progress at its next epoch boundary (usable as a signal handler)."""
    STOP.set()


def clear_stop() -> None:
    """A new invocation in this process starts without the last one's stop request."""
    STOP.clear()


