"""Tuning on equal terms (a suite's ``[search]`` table): per cell, a budget of trials selected on
validation, then the selected setting retrained with the final seeds.

A *cell* is one run of the suite's grid without its seed: variant x objective x dataset x the
grid's settings. Every cell gets the same budget, ``trials`` settings of ``[search.space]``,
proposed by an Optuna study per cell (ask-and-tell from this driver: the workers never see the
study). Each trial is a child run like any other, with its run key, checkpoints, ``--jobs``, Ray,
Slurm and resume: the cell's configuration with the trial's setting, ``seed = [search] seed`` and
``evaluate = "validation"`` (it trains and logs ``train/*`` and ``val/*``, and never reads the
test split). Its score is the selecting metric at its last epoch. The selected setting (the best
completed trial; ties to the earlier) is trained again with each of ``final_seeds`` and evaluated
on the test split: those runs (tag ``vaebench.search.selected = "true"``) are the cell's result.

With a pruner, epochs are the resource (``bench.tuning``): the trials of a bracket train to a
rung, stop there with a checkpoint (the run is KILLED with the end reason "paused after epoch
r"), the best go on from that checkpoint to the next rung, the others are pruned (tag
``vaebench.search.pruned`` = the rung's epoch). The rungs are synchronous, so a decision depends on
the scores alone. ``trial_epochs`` (default: the suite's ``epochs``) trains the trials shorter
than the final runs: a setting chosen "in the first few iterations" (Kingma & Welling 2014 chose
Adagrad's step size so). Trials are asked in rounds: without a pruner, ``tpe`` asks ``--jobs`` trials a
round (it learns from the earlier rounds), ``grid`` and ``random`` the whole budget at once; with
``successive-halving`` the whole budget is one bracket, with ``hyperband`` each bracket a round.

Tags: ``vaebench.search.cell`` (the cell, on trials and final runs), ``vaebench.search.trial``
(the trial's number; on final runs the selected trial's), ``vaebench.search.study``,
``vaebench.search.pruned``, ``vaebench.search.selected``; each round's parent run has
``vaebench.search.stage`` = ``trials`` or ``final``.

**The studies' storage**: beside the MLflow store. A PostgreSQL store holds them in the same
database, in the schema ``optuna`` (Optuna's tables would otherwise share MLflow's
``alembic_version``); a sqlite store ``DIR/NAME.db`` in ``DIR/NAME-optuna.db``; an MLflow server
(``http://...``) in ``./optuna.db`` of the driver's working directory. ``--search-storage URL``
names another. A study's name is ``<suite>/<cell>/<hash>``, the hash over the cell's
configuration and every ``[search]`` setting but ``trials`` and ``final_seeds``: a larger budget
continues the study, a changed space starts a new one.

**Resume**: the study is the record of the trials. After a kill (``kill -9`` included) the same
command re-runs the trials the study holds as RUNNING, with their settings (the runner resumes
their runs from their checkpoints, or reuses them), replays the rungs from the recorded scores, and
asks only what the budget still lacks; a finished, pruned or failed trial is not run again. The
samplers are seeded per trial (``[search] seed``, the cell, the trial's number), so a resumed
search asks what an uninterrupted one would have asked.

**Trials that compute the same thing are one run.** A setting the run does not read
(``bench.config.unread_options``: the temperature schedule of a discrete variant trained with the
score function, whose samples are exact) is put back to the cell's value before the trial's run is
keyed, so trials that differ only there share one run (tag ``vaebench.search.trials``: every trial
it serves) and its scores, bit for bit what running each would give. They share its fate: a run
goes on to the next rung if any of its trials is promoted. The study still holds every trial, so the
budget and the samplers are those of the suite file; the report counts the runs beside the trials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

import variants
from bench.config import RunConfig, coerce, unread_options, validate
from bench.errors import BenchError, ConfigError
from bench.run import plan as planning
from bench.run.executors import make_executor
from bench.run.plan import Options, Planned
from bench.store import tracking
from bench.suite import SearchSpec, Suite
from bench.tuning import hyperband_brackets, promoted, rungs


@dataclass
class Cell:
    """One cell of a searched suite: its configuration, placement and study."""

    label: str  # the vaebench.search.cell tag
    base: RunConfig  # seed = [search] seed, evaluate = "validation"
    planned: Planned  # its placement on the executor (device, threads, resources)
    study: object = None  # optuna.Study
    values: dict[int, dict[int, float]] = field(default_factory=dict)  # trial number -> {epoch: score}


def study_storage(uri: str, explicit: str | None):
    """Where the studies live (see the module docstring): an Optuna storage URL or object."""
    if explicit:
        return explicit
    if uri.startswith("sqlite:///"):
        from pathlib import Path

        db = Path(uri.removeprefix("sqlite:///"))
        return f"sqlite:///{db.with_name(db.stem + '-optuna' + (db.suffix or '.db'))}"
    if uri.startswith(("postgresql", "postgres")):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE SCHEMA IF NOT EXISTS optuna"))
        engine.dispose()
        sep = "&" if "?" in uri else "?"
        return f"{uri}{sep}options=-csearch_path%3Doptuna"
    if uri.startswith(("http://", "https://")):
        from pathlib import Path

        return f"sqlite:///{Path.cwd() / 'optuna.db'}"
    raise ConfigError(f"no default place for the search's studies beside the store {uri!r}: pass --search-storage URL")


def cell_labels(cfgs: list[RunConfig]) -> list[str]:
    """``variant/objective/dataset``, plus ``key=value`` for each setting that tells cells of those
    names apart (a grid's ``set``, an override)."""
    base = [f"{c.variant}/{c.objective}/{c.dataset}" for c in cfgs]
    skip = {"variant", "objective", "dataset", "seed"}
    keys = [f.name for f in dataclasses.fields(RunConfig) if f.name not in skip]
    labels = []
    for i, c in enumerate(cfgs):
        twins = [d for j, d in enumerate(cfgs) if base[j] == base[i] and j != i]
        extra = [f"{k}={_show(getattr(c, k))}" for k in keys if any(getattr(d, k) != getattr(c, k) for d in twins)]
        labels.append(" ".join([base[i], *extra]))
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    return labels


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)


def _encode(v):
    """A value as an Optuna categorical choice (None, bool, int, float, str; a list as JSON)."""
    return v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v)


def distributions(spec: SearchSpec) -> dict:
    import optuna.distributions as d

    out = {}
    for name, v in spec.space.items():
        if isinstance(v, list):
            out[name] = d.CategoricalDistribution([_encode(x) for x in v])
        elif all(isinstance(x, int) for x in v[:2]):
            out[name] = d.IntDistribution(v[0], v[1], log=v[2])
        else:
            out[name] = d.FloatDistribution(float(v[0]), float(v[1]), log=v[2])
    return out


def apply(cfg: RunConfig, params: dict, spec: SearchSpec, where: str) -> RunConfig:
    """The cell's configuration with a trial's setting (``params`` as Optuna holds them)."""
    cfg = dataclasses.replace(cfg, variant_options=dict(cfg.variant_options),
                              objective_options={k: dict(v) for k, v in cfg.objective_options.items()})
    for name, value in sorted(params.items()):
        values = spec.space[name]
        if isinstance(values, list):  # back from the encoded choice
            value = next(v for v in values if _encode(v) == value)
        if name.startswith("option."):
            cfg.variant_options[name.removeprefix("option.")] = value
        elif name.startswith("objective_option."):
            cfg.objective_options.setdefault(cfg.objective, {})[name.removeprefix("objective_option.")] = value
        else:
            setattr(cfg, name, coerce(name, value, source=where))
    validate(cfg, where)
    return cfg


def read_only(cfg: RunConfig, base: RunConfig) -> RunConfig:
    """``cfg`` with the variant options its run does not read (``bench.config.unread_options``)
    put back to the cell's (``base``'s) values, or to the variant's defaults where the cell sets
    none: the configuration keyed, logged and run."""
    unread = unread_options(cfg, variants.get(cfg.variant))
    if not unread & set(cfg.variant_options):
        return cfg
    opts = {k: v for k, v in cfg.variant_options.items() if k not in unread}
    opts |= {k: v for k, v in base.variant_options.items() if k in unread}
    return dataclasses.replace(cfg, variant_options=opts)


def _sampler(spec: SearchSpec, label: str, number: int):
    """The sampler that asks trial ``number`` of the cell, seeded by (seed, cell, number)."""
    import optuna

    seed = (spec.seed * 1_000_003 + int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)) % 2**31
    if spec.sampler == "grid":  # its order of the grid is a shuffle by its seed: one seed for every trial
        return optuna.samplers.GridSampler({k: [_encode(x) for x in v] for k, v in spec.space.items()}, seed=seed)
    seed = (seed + number) % 2**31
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _tell(cell: Cell, n: int, value: float | None = None, state=None) -> None:
    """``study.tell`` from the driver. The sampler that asked is not the one told: a grid
    sampler's ``after_trial`` stops the study when its grid is spent, which only an objective
    function may do."""
    import optuna

    cell.study.sampler = optuna.samplers.RandomSampler()
    cell.study.tell(n, value, state=state)


class Search:
    """One ``python -m bench run`` of a suite with a ``[search]`` table (the module docstring)."""

    def __init__(self, opts: Options, suite: Suite, planned: list[Planned], loaded: dict) -> None:
        self.opts, self.suite, self.spec, self.loaded = opts, suite, suite.search, loaded
        self.uri = tracking.resolve_tracking_uri(opts.tracking_uri)
        from bench import vocabulary

        self.higher = vocabulary.get(self.spec.metric).direction == vocabulary.HIGHER
        where = f"{suite.path} [search]"
        labels = cell_labels([p.cfg for p in planned])
        self.cells = []
        for label, p in zip(labels, planned):
            p.cfg = dataclasses.replace(p.cfg, evaluate="validation")
            self.cells.append(Cell(label, p.cfg, p))
        self.check_space(where)
        self.trial_epochs = self.spec.trial_epochs or self.cells[0].base.epochs  # the trials' training length
        self.box: list = []

    def check_space(self, where: str) -> None:
        """Every value of the space (each end of a range) on every cell, one parameter at a time:
        a value a cell rejects is an error now, before any trial runs."""
        for cell in self.cells:
            for name, values in self.spec.space.items():
                for v in values if isinstance(values, list) else values[:2]:
                    cfg = apply(cell.base, {name: _encode(v)}, self.spec, f"{where} space.{name} = {v!r}")
                    try:
                        planning.plan_runs([cfg], self.opts, self.loaded)
                    except ConfigError as e:
                        raise ConfigError(f"{where} space.{name} = {v!r} on cell {cell.label}: {e}") from None

    # -- the studies ------------------------------------------------------------------------------
    def open_studies(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = study_storage(self.uri, self.opts.search_storage)
        for cell in self.cells:
            ident = {"cell": planning.run_key(cell.base, cell.planned.device or "cpu"), "search": self.spec.identity()}
            digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]
            cell.study = optuna.create_study(storage=storage, study_name=f"{self.suite.name}/{cell.label}/{digest}",
                                             direction="maximize" if self.higher else "minimize", load_if_exists=True)
            for t in cell.study.get_trials(deepcopy=False):
                cell.values[t.number] = dict(t.intermediate_values)

    def brackets(self) -> list[tuple[int, int]]:
        """The budget's brackets: ``[(n_trials, first_rung)]`` (one, at ``epochs``, without a pruner)."""
        s, epochs = self.spec, self.trial_epochs
        if s.pruner == "hyperband":
            return hyperband_brackets(s.trials, epochs, s.min_epochs, s.reduction_factor)
        if s.pruner == "successive-halving":
            return [(s.trials, rungs(epochs, s.min_epochs, s.reduction_factor)[0])]
        per_round = s.trials if s.sampler != "tpe" else max(1, self.capacity)
        return [(min(per_round, s.trials - i), epochs) for i in range(0, s.trials, per_round)]

    def next_round(self, cell: Cell) -> tuple[int, list[int]] | None:
        """The cell's bracket to run now and its trials (numbers): a bracket with trials still
        RUNNING (an interrupted invocation's), else a new one asked from the study; None when the
        budget is spent."""
        import optuna

        trials = cell.study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        if running:
            b = running[0].user_attrs["bracket"]
            return b, [t.number for t in trials if t.user_attrs.get("bracket") == b]
        plan = self.brackets()
        b = len({t.user_attrs.get("bracket") for t in trials})
        if len(trials) >= self.spec.trials or b >= len(plan):
            return None
        n = min(plan[b][0], self.spec.trials - len(trials))
        first = plan[b][1]
        numbers = []
        dists = distributions(self.spec)
        for _ in range(n):
            cell.study.sampler = _sampler(self.spec, cell.label, len(cell.study.get_trials(deepcopy=False)))
            t = cell.study.ask(dists)
            t.set_user_attr("bracket", b)
            t.set_user_attr("first_rung", first)
            numbers.append(t.number)
            cell.values[t.number] = {}
        return b, numbers

    # -- running -----------------------------------------------------------------------------------
    def run(self) -> int:
        """The search, then the final runs; the exit code (0, 1 some trial or final run failed in a
        way other than diverging, 130 interrupted, 2 no completed trial in some cell)."""
        placement = [dataclasses.replace(c.planned) for c in self.cells for _ in range(self.spec.trials)]
        ex = make_executor(self.opts, placement, lambda *a: self.box[0].on_progress(*a) if self.box else None)
        self.capacity = ex.capacity or len(placement)
        for i, cell in enumerate(self.cells):
            src = placement[i * self.spec.trials]
            for f in ("device", "threads", "cpus", "gpus"):
                setattr(cell.planned, f, getattr(src, f))
        try:
            self.open_studies()
            while True:
                rounds = {}
                for cell in self.cells:
                    r = self.next_round(cell)
                    if r is not None:
                        first = cell.study.trials[r[1][0]].user_attrs["first_rung"]
                        rounds.setdefault(first, []).append((cell, r[1]))
                if not rounds:
                    break
                for first, members in sorted(rounds.items()):
                    rc = self.run_bracket(ex, first, members)
                    if rc == 130:
                        return rc
            return self.final(ex)
        finally:
            ex.close()

    def run_bracket(self, ex, first: int, members: list[tuple[Cell, list[int]]]) -> int:
        """One bracket per cell, rung by rung (the module docstring); the rounds' exit code."""
        import optuna

        S = optuna.trial.TrialState
        epochs = self.trial_epochs
        ladder = rungs(epochs, first, self.spec.reduction_factor)
        alive = {c.label: [n for n in numbers if c.study.trials[n].state != S.FAIL] for c, numbers in members}
        cells = {c.label: c for c, _ in members}
        for r in ladder:
            need = [(cells[lab], n) for lab, ns in alive.items() for n in ns
                    if cells[lab].study.trials[n].state == S.RUNNING and r not in cells[lab].values[n]]
            if need:
                rc = self.run_trials(ex, need, 0 if r == epochs else r)
                if rc == 130:
                    return rc
            for lab, ns in list(alive.items()):
                cell = cells[lab]
                failed = [n for n in ns if r not in cell.values[n]]
                for n in failed:
                    if cell.study.trials[n].state == S.RUNNING:
                        _tell(cell, n, state=S.FAIL)
                ns = [n for n in ns if n not in failed]
                if r == epochs:
                    for n in ns:
                        if cell.study.trials[n].state == S.RUNNING:
                            _tell(cell, n, cell.values[n][r])
                    alive[lab] = ns
                    continue
                keep = promoted({n: cell.values[n][r] for n in ns}, self.spec.reduction_factor, self.higher) if ns else []
                kept_runs = {self.trial_key(cell, n) for n in keep}
                keep = [n for n in ns if self.trial_key(cell, n) in kept_runs]  # one run, one fate
                for n in ns:
                    if n not in keep and cell.study.trials[n].state == S.RUNNING:
                        self.prune(cell, n, r)
                alive[lab] = keep
        return 0

    def trial_config(self, cell: Cell, n: int) -> RunConfig:
        """Trial ``n``'s configuration as it runs (:func:`read_only`)."""
        cfg = apply(cell.base, cell.study.trials[n].params, self.spec, f"{self.suite.path} [search] trial {n}")
        return read_only(dataclasses.replace(cfg, epochs=self.trial_epochs), cell.base)

    def trial_key(self, cell: Cell, n: int) -> str:
        """The run key of trial ``n`` (as :meth:`run_trials` keys it): trials of one key share one run."""
        return planning.run_key(self.trial_config(cell, n), cell.planned.device)

    def trial_run(self, cell: Cell, n: int, stop_after: int) -> Planned:
        cfg = self.trial_config(cell, n)
        (p,) = planning.plan_runs([cfg], self.opts, self.loaded)
        for f in ("device", "threads", "cpus", "gpus"):
            setattr(p, f, getattr(cell.planned, f))
        p.stop_after = stop_after
        unread = {f"option.{o}" for o in unread_options(cfg, variants.get(cfg.variant))}
        shown = ", ".join(f"{k}={_show(v)}" for k, v in sorted(cell.study.trials[n].params.items()) if k not in unread)
        p.title = f"{cell.label} trial {n} ({shown})"
        p.tags = {tracking.TAG_SEARCH_CELL: cell.label, tracking.TAG_SEARCH_TRIAL: str(n),
                  tracking.TAG_SEARCH_STUDY: cell.study.study_name}
        return p

    def run_trials(self, ex, need: list[tuple[Cell, int]], stop_after: int) -> int:
        """Train the trials ``need`` to ``stop_after`` (0: to the end) as one invocation, then
        record each one's score at that epoch in its study (``trial.report``). Trials of one
        configuration (a sampler may propose a setting twice, or settings may differ only where
        the run does not read them: :func:`read_only`) share one run."""
        import optuna
        from mlflow.tracking import MlflowClient

        by_key: dict[str, Planned] = {}
        members: dict[str, list[tuple[Cell, int]]] = {}
        for cell, n in need:
            p = self.trial_run(cell, n, stop_after)
            p.key = planning.run_key(p.cfg, p.device)
            p.params |= {"device": p.device, "threads": str(p.threads)}
            by_key.setdefault(p.key, p)
            members.setdefault(p.key, []).append((cell, n))
        planned = list(by_key.values())
        for i, p in enumerate(planned):
            p.index = i
            p.tags[tracking.TAG_SEARCH_TRIALS] = " ".join(str(n) for _, n in members[p.key])
        rc = self.invoke(ex, planned, "trials")
        if rc == 130:
            return rc
        client = MlflowClient(self.uri)
        epoch = stop_after or self.trial_epochs
        for key, p in by_key.items():
            history = {m.step: m.value for m in client.get_metric_history(p.run_id, self.spec.metric)} if p.run_id else {}
            value = history.get(epoch)
            for cell, n in members[key]:
                if value is not None and math.isfinite(value):
                    cell.values[n][epoch] = value
                    optuna.trial.Trial(cell.study, cell.study.trials[n]._trial_id).report(value, epoch)
        return rc

    def prune(self, cell: Cell, n: int, epoch: int) -> None:
        import optuna
        from mlflow.tracking import MlflowClient

        _tell(cell, n, state=optuna.trial.TrialState.PRUNED)
        p = self.trial_run(cell, n, 0)
        key = planning.run_key(p.cfg, p.device)
        client = MlflowClient(self.uri)
        runs = client.search_runs([client.get_experiment_by_name(self.suite.name).experiment_id],
                                  f"tags.`{tracking.TAG_RUN_KEY}` = '{key}'", max_results=100)
        for run in runs:
            if run.info.status != "FINISHED":
                client.set_tag(run.info.run_id, tracking.TAG_SEARCH_PRUNED, str(epoch))
                client.set_tag(run.info.run_id, tracking.TAG_END_REASON,
                               f"pruned after epoch {epoch} (successive halving, reduction factor "
                               f"{self.spec.reduction_factor})")

    def invoke(self, ex, planned: list[Planned], stage: str) -> int:
        from bench.run.runner import Invocation

        planning.identify(planned)
        inv = Invocation(self.opts, self.suite, planned, ex, parent_tags={tracking.TAG_SEARCH_STAGE: stage})
        self.box[:] = [inv]
        inv.claim()
        return inv.execute()

    # -- selection and the final runs ---------------------------------------------------------------
    def selected(self, cell: Cell):
        """The cell's best completed trial (ties to the earlier), or None."""
        import optuna

        done = [t for t in cell.study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            return None
        return min(done, key=lambda t: (-t.value if self.higher else t.value, t.number))

    def final(self, ex) -> int:
        planned, empty = [], []
        for cell in self.cells:
            best = self.selected(cell)
            if best is None:
                empty.append(cell.label)
                continue
            cell.study.set_user_attr("selected_trial", best.number)
            for seed in self.spec.final_seeds:
                cfg = apply(dataclasses.replace(cell.base, seed=seed, evaluate="test"), best.params, self.spec,
                            f"{self.suite.path} [search] selected trial {best.number}")
                cfg = read_only(cfg, cell.base)
                (p,) = planning.plan_runs([cfg], self.opts, self.loaded)
                for f in ("device", "threads", "cpus", "gpus"):
                    setattr(p, f, getattr(cell.planned, f))
                p.index = len(planned)
                p.tags = {tracking.TAG_SEARCH_CELL: cell.label, tracking.TAG_SEARCH_TRIAL: str(best.number),
                          tracking.TAG_SEARCH_STUDY: cell.study.study_name, tracking.TAG_SEARCH_SELECTED: "true"}
                planned.append(p)
        rc = self.invoke(ex, planned, "final") if planned else 0
        if empty:
            import sys

            print(f"no trial completed in cell(s) {', '.join(empty)} (every trial failed: diverged or crashed; see the "
                  "trials' runs): no setting to select, no final runs", file=sys.stderr)
            return rc or 2
        return rc


def main(opts: Options, suite: Suite, planned: list[Planned], loaded: dict) -> int:
    """``python -m bench run`` on a suite with a ``[search]`` table (planned by ``plan.plan``)."""
    from bench.run import worker

    if suite.search is None:
        raise BenchError(f"suite {suite.name!r} has no [search] table")
    worker.preload(loaded)  # the driver's own runs reuse them
    return Search(opts, suite, planned, loaded).run()
