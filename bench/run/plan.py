"""The plan of an invocation: what ``python -m bench run`` was asked (:class:`Options`), the
suite's runs validated (:func:`plan`), and each run's identity (:func:`run_key`).

1. **Plan** (:func:`plan`): expand the suite's grid with the overrides, validate every run, load
   each dataset and build each model once on real shapes. Everything that can fail on user input
   fails here, exit code 2, before the store is touched. (The executor then places the runs:
   device, threads, how many at once, ``bench.run.executors.make_executor``.)
2. **Identity** (:func:`run_key`): each run's key is a hash of its resolved configuration, the
   child run's tag ``vaebench.run_key``. A FINISHED run of the same key *and the same code* is
   reused, not recomputed, and an interrupted one resumed: the same commit (the ``git_commit``
   tag, ``git describe --dirty``), or a commit whose package code (``bench/`` but its suite files
   and the report's ``bench/plots``, ``variants/``) does not differ from this checkout's
   (``bench.store.tracking.same_code``), so a commit of documentation, tests, results or the
   report does not restart a suite of hours. ``--fresh``
   recomputes everything (earlier runs stay in the store).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from bench.config import PLACEMENT, RunConfig
from bench.errors import BenchError, ConfigError
from bench.run.job import MEASUREMENTS

KEY_VERSION = 1
# The key hashes the RunConfig fields that say what a run computes. Left out: the placement fields
# (``bench.config.PLACEMENT``: threads, device, data_dir), the device entering as its type only
# ("cpu" or "cuda": the same run on cuda:0 or cuda:1 is the same computation); and every field at
# its default value, so that a field added later (with a default that keeps the old behaviour)
# leaves every existing key as it was.
NOT_IN_KEY = PLACEMENT
KEY_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in NOT_IN_KEY)
_DEFAULTS = RunConfig()


def run_key(cfg: RunConfig, device: str) -> str:
    """A deterministic key of a run's resolved configuration: the first 20 hex digits of the
    SHA-256 of ``{"v": KEY_VERSION, "device": "cpu" | "cuda", <field>: <value>, ...}`` as JSON with
    sorted keys and no spaces, over the :data:`KEY_FIELDS` whose value is not the default."""
    doc = {"v": KEY_VERSION, "device": device.split(":")[0]}
    doc |= {f: getattr(cfg, f) for f in KEY_FIELDS if getattr(cfg, f) != getattr(_DEFAULTS, f)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


SLURM = "submitit (Slurm)"  # the flags' group in the help


def _flag(default, help: str, **argparse_options):
    """An options field that is also a command-line flag (``bench.cli`` builds the parser from the
    fields: ``--<name>``, the field's default and type, ``help`` with ``%(default)s``, and
    ``metavar``, ``choices`` or ``group``): each default is declared here, once."""
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass
class Options:
    """What ``python -m bench run`` was asked (the CLI's flags, one per field)."""

    suite: str = _flag("smoke", "suite name (bench/suites/NAME.toml) or path to a TOML file")
    set: list[str] = field(default_factory=list, metadata={"help": "override a run-config key (repeatable)",
                                                           "metavar": "KEY=VALUE"})
    plugin: list[str] = field(default_factory=list, metadata={
        "help": "import a module that registers variants, objectives or datasets (repeatable; bench.plugins)",
        "metavar": "MODULE"})
    tracking_uri: str | None = _flag(None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    data_dir: str | None = _flag(None, "where datasets are read from / downloaded to (default ./data)")
    jobs: str = _flag("1", "runs at once (default %(default)s, in this process); auto: cores // threads on CPU, the visible "
                      "GPUs x --runs-per-gpu on CUDA, as many as the cluster takes with ray/submitit", metavar="N|auto")
    executor: str = _flag("local", "local processes (default), Ray tasks, or Slurm jobs through submitit",
                          choices=("local", "ray", "submitit"))
    ray_address: str | None = _flag(None, "a running Ray cluster (ray://host:10001, or auto); default: a local one")
    runs_per_gpu: int = _flag(1, "runs sharing one GPU (local and ray)", metavar="M")
    fresh: bool = _flag(False, "recompute every run, even those already FINISHED")
    checkpoint_every: float = _flag(0.0, "at most one checkpoint per SECONDS (default %(default)g: after every epoch)",
                                    metavar="SECONDS")
    search_storage: str | None = _flag(None, "where a [search] suite's Optuna studies live (an SQLAlchemy URL; default: "
                                       "beside the MLflow store, see bench.run.search)")
    slurm_partition: str = _flag("", "partition to submit to", group=SLURM)
    slurm_time: int = _flag(60, "time limit per job; a job that reaches it is requeued and resumes (default %(default)s)",
                            metavar="MINUTES", group=SLURM)
    slurm_gpus: int = _flag(0, "GPUs per run (default %(default)s: CPU)", metavar="N", group=SLURM)
    slurm_mem_gb: float = _flag(0.0, "memory per job (default: the partition's)", group=SLURM)
    slurm_folder: str = _flag("submitit", "job scripts and logs (default ./%(default)s)", group=SLURM)


@dataclass
class RemeasureOptions(Options):
    """What ``python -m bench remeasure`` was asked: ``bench run``'s flags and ``--measurements``."""

    fresh: bool = _flag(False, "re-measure every run, even those already re-measured at this commit")
    measurements: str = _flag(",".join(MEASUREMENTS), f"comma-separated, from {', '.join(MEASUREMENTS)} (default: "
                              "all); those a variant does not make are skipped as `run` skips them", metavar="M,M,...")


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
    decision: str = "new"  # new | resume | reuse | watch | paused (checkpointed at or after its stop_after: nothing to do)
    run_id: str | None = None
    start_epoch: int = 0  # a resumed run's last checkpointed epoch
    stop_after: int = 0  # stop (paused, resumable) after this epoch: a search rung (bench.run.search); 0 = the end
    tags: dict[str, str] = field(default_factory=dict)  # the child run's own tags (a search's vaebench.search.*)
    title: str = ""  # the run's name where its configuration's (variant/objective/dataset/seed) is not enough
    outcome: str = "pending"
    final: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def name(self) -> str:
        return self.title or self.cfg.run_name


def plan(opts: Options):
    """The suite and its runs, validated, with the data each needs loaded once (on the CPU: the
    workers load their own copy where they run), keyed as a worker keeps them
    (``bench.run.worker.data_key``: the driver's own runs reuse them, ``worker.preload``)."""
    from bench import config
    from bench.suite import load_suite

    suite = load_suite(opts.suite, config.parse_overrides(opts.set or []), plugins=opts.plugin or [])
    if not suite.runs:
        raise BenchError(f"suite {suite.name!r} has no runs after the overrides")
    loaded: dict = {}
    return suite, plan_runs(suite.runs, opts, loaded), loaded


def plan_runs(runs: list[RunConfig], opts: Options, loaded: dict) -> list[Planned]:
    """``runs`` as planned runs: each one's dataset loaded (once, into ``loaded``) and its model
    built on real shapes, which checks the variant options and the likelihood."""
    from bench import data, train
    from bench.run import worker

    planned = []
    for i, r in enumerate(runs):
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
    return planned


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
