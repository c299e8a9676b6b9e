"""The plan of an invocation: what ``python -m bench run`` was asked (:class:`Options`), the
suite's runs validated (:func:`plan`), and each run's identity (:func:`run_key`).

1. **Plan** (:func:`plan`): expand the suite's grid with the overrides, validate every run, load
   each dataset and build each model once on real shapes. Everything that can fail on user input
   fails here, exit code 2, before the store is touched. (The executor then places the runs:
   device, threads, how many at once, ``bench.run.executors.make_executor``.)
2. **Identity** (:func:`run_key`): each run's key is a hash of its resolved configuration, the
   child run's tag ``vaebench.run_key``. A FINISHED run of the same key *and the same code*
   (the ``git_commit`` tag, ``git describe --dirty``) is reused, not recomputed; ``--fresh``
   recomputes everything (earlier runs stay in the store).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from bench.config import RunConfig
from bench.errors import BenchError, ConfigError

KEY_VERSION = 1
# The key hashes the RunConfig fields that say what a run computes. Left out: threads (CPU threads),
# data_dir (where the files are read from) and device, which enters as its type only ("cpu" or
# "cuda": the same run on cuda:0 or cuda:1 is the same computation); and every field at its
# default value, so that a field added later (with a default that keeps the old behaviour) leaves
# every existing key as it was.
NOT_IN_KEY = ("threads", "data_dir", "device")
KEY_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in NOT_IN_KEY)
_DEFAULTS = RunConfig()


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


def plan(opts: Options):
    """The suite and its runs, validated, with the data each needs loaded once (on the CPU: the
    workers load their own copy where they run), keyed as a worker keeps them
    (``bench.run.worker.data_key``: the driver's own runs reuse them, ``worker.preload``)."""
    from bench import config, data, train
    from bench.run import worker
    from bench.suite import load_suite

    suite = load_suite(opts.suite, config.parse_overrides(opts.set or []))
    if not suite.runs:
        raise BenchError(f"suite {suite.name!r} has no runs after the overrides")
    loaded: dict[tuple, data.Dataset] = {}
    planned = []
    for i, r in enumerate(suite.runs):
        if opts.data_dir:
            r.data_dir = opts.data_dir
        key = worker.data_key(r, "cpu")
        if key not in loaded:
            loaded[key] = data.load(r.dataset, binarization=r.binarization, data_dir=r.data_dir, device="cpu",
                                    n_val=r.val_size or None)
        ds = loaded[key]
        train.build_model(r, ds)  # checks variant options and likelihood on real shapes
        params = r.params() | {"likelihood": ds.likelihood, "train_examples": str(len(ds.train[: r.train_size or None])),
                               "test_examples": str(len(ds.test[: r.test_size or None])), "data_source": ds.source}
        planned.append(Planned(i, r, params))
    return suite, planned, loaded


def identify(planned: list[Planned]) -> None:
    """Each placed run's key (:func:`run_key`, on its device); two runs of one key are an error."""
    for p in planned:
        p.key = run_key(p.cfg, p.device)
        p.params |= {"device": p.device, "threads": str(p.threads)}
    twins = {}
    for p in planned:
        if p.key in twins:
            raise ConfigError(f"{p.name} and {twins[p.key]} are the same configuration (run key {p.key}): "
                              "a suite lists each run once")
        twins[p.key] = p.name
