"""Re-measuring stored runs (``python -m bench remeasure``): the final measurements of a suite's
FINISHED runs, recomputed with the current code on the final weights the runs stored, and logged
into the same runs.

1. **Which runs.** The suite is planned as ``bench run`` plans it (``--set`` as there: the same
   overrides name the same runs, e.g. ``--set epochs=12`` for an invocation that had it); each
   planned run's key (``vaebench.run_key``, for either device type) is looked up among the
   experiment's child runs, and the latest FINISHED run of that key is the one re-measured (the
   one the report shows). Planned runs without a FINISHED run in the store are listed and left.
2. **What.** ``--measurements`` (default all): ``grad`` (``grad/*``: the run's objective and
   ``grad_objectives`` x ``grad_ks``), ``gaps`` (``gap/*``), ``log_px`` (``test/log_px``, and
   ``test/exact_log_px`` of the oracle), ``ais`` (``test/log_px_ais``, ``test/bdmc_gap``, where
   the config asks for them), ``active_units`` (``test/active_units``, per layer too). A
   measurement the variant does not make (``bench.config.skipped_measurements``) is skipped as
   ``bench run`` skips it. Timings (``perf/*``) and the ELBO are not re-measured.
3. **How.** A job of kind ``"remeasure"`` (``bench.worker.Job``), so every executor runs it
   (``--jobs N`` local processes, Ray, submitit) exactly as it runs a training job. The worker
   (:func:`execute`) downloads the run's ``config.json`` and ``model.pt`` artifacts, rebuilds the
   model, loads the weights, and before *each* measurement seeds torch with the run's seed: a
   measurement's value does not depend on which others were asked for, and equals a direct call on
   the reloaded model seeded the same way. (The original values were drawn from the generators
   where training left them: a re-measure reproduces their distribution, not their digits.) A
   trainable objective's own parameters (NVIL's baseline, REBAR's temperature, RELAX's control
   variate) are not stored with the final weights: for the run's own ``grad/*`` a fresh one is
   fitted with the model frozen (``grad_fit_steps`` steps, as ``grad_objectives`` are).
4. **Where.** Into the same run, at the step of the final metrics (``epochs``), with a timestamp
   later than every stored value of the metric: MLflow keeps both values in the metric's history,
   and its latest value (what ``bench plots``, ``compare`` and the UI read) is the new one. The
   metrics and the tags ``vaebench.remeasured.commit`` (``git describe --dirty`` of the measuring
   code), ``vaebench.remeasured.measurements`` (those done at that commit, comma-separated) and
   ``vaebench.remeasured.at`` go in one store write. The run's status, lease and ``git_commit``
   (the code that trained it) are left as they are.
5. **Resumable.** A run already re-measured at this commit with the asked measurements is skipped
   (``--fresh`` re-measures it); an interrupted re-measure continues with the runs not yet done.
   A failed re-measure leaves the run as it was (its error is printed; exit code 1).

Exit codes: 0 every run re-measured or already done, 1 some failed, 130 interrupted, 2 a user
mistake (unknown suite, measurement or key; no store, or no FINISHED run of the suite in it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench import runner, tracking
from bench.errors import BenchError

MEASUREMENTS = ("grad", "gaps", "log_px", "ais", "active_units")
TAG_COMMIT = "vaebench.remeasured.commit"  # git describe --dirty of the code that re-measured
TAG_MEASUREMENTS = "vaebench.remeasured.measurements"  # comma-separated, those done at that commit
TAG_AT = "vaebench.remeasured.at"  # when (UTC)
TAG_NOTE = "vaebench.remeasured.note"  # what differs from the original measurement, if anything


@dataclass
class Options(runner.Options):
    """What ``python -m bench remeasure`` was asked: ``bench run``'s flags and ``--measurements``."""

    measurements: str = ",".join(MEASUREMENTS)


def parse_measurements(text: str) -> tuple[str, ...]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in MEASUREMENTS]
    if unknown or not names:
        raise BenchError(f"--measurements: unknown measurement(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(MEASUREMENTS)} (comma-separated)")
    return tuple(m for m in MEASUREMENTS if m in names)


def already(tags: dict[str, str], commit: str) -> set[str]:
    """The measurements a run's tags say were re-measured at ``commit``."""
    if tags.get(TAG_COMMIT) != commit:
        return set()
    return {m for m in tags.get(TAG_MEASUREMENTS, "").split(",") if m}


# -- the driver ------------------------------------------------------------------------------------
def find_runs(opts: Options, planned: list[runner.Planned], uri: str, suite: str) -> tuple[list, list]:
    """``(matched, missing)``: each planned run with its latest FINISHED stored run (``p.run_id``),
    and the planned runs the store has no FINISHED run of."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        raise BenchError(f"no experiment {suite!r} in the store {uri}: run the suite first (python -m bench run --suite "
                         f"{opts.suite}), or point --tracking-uri at its store")
    done: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.`vaebench.role` = 'child' and attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        for r in page:
            if "vaebench.run_key" in r.data.tags:
                done.setdefault(r.data.tags["vaebench.run_key"], []).append(r)
        token = page.token
        if not token:
            break
    matched, missing = [], []
    for p in planned:
        runs = [r for dev in ("cpu", "cuda") for r in done.get(runner.run_key(p.cfg, dev), [])]
        if not runs:
            missing.append(p)
            continue
        latest = max(runs, key=lambda r: r.info.start_time)
        p.run_id = latest.info.run_id
        p.decision = "remeasure"
        matched.append((p, latest))
    return matched, missing


def main(opts: Options) -> int:
    """``python -m bench remeasure``: find the runs, skip those done, execute the rest; the exit code."""
    from bench import worker

    wanted = parse_measurements(opts.measurements)
    uri = tracking.resolve_tracking_uri(opts.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise BenchError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: run a suite first "
                         "(python -m bench run --suite NAME), or point --tracking-uri at the store")
    if opts.executor == "local" and opts.jobs != "1":
        from bench.executors import start_fork_server

        start_fork_server()
    suite, planned, loaded = runner.plan(opts)
    matched, missing = find_runs(opts, planned, uri, suite.name)
    if not matched:
        raise BenchError(f"suite {suite.name!r}: none of its {len(planned)} run(s) has a FINISHED run in {uri} "
                         "(the same --set as the run's invocation names the same runs)")
    commit = tracking.git_commit()
    todo, skipped = [], []
    for p, run in matched:
        have = set() if opts.fresh else already(run.data.tags, commit)
        left = tuple(m for m in wanted if m not in have)
        (todo if left else skipped).append((p, left))
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    say(f"suite {suite.name!r}: {len(matched)} FINISHED run(s) in {uri}; measurements {', '.join(wanted)} at {commit}: "
        f"{len(todo)} to re-measure, {len(skipped)} already re-measured at this commit"
        + (f"; {len(missing)} planned run(s) with no FINISHED run, left: {', '.join(p.name for p in missing)}"
           if missing else ""))
    if not todo:
        return 0

    ps = [p for p, _ in todo]
    ex = runner.make_executor(opts, ps, lambda run_id, epoch, line: None)
    try:
        for (name, binarization, data_dir, val_size), ds in loaded.items():  # the driver's own jobs reuse them
            worker._DATA.setdefault((name, binarization, data_dir, "cpu", val_size), ds)
        return _execute(ex, todo, uri, commit, opts, say)
    finally:
        ex.close()


def _execute(ex, todo, uri: str, commit: str, opts: Options, say) -> int:
    from bench import worker

    n, t0 = len(todo), time.perf_counter()
    jobs = []
    for i, (p, left) in enumerate(todo):
        job = worker.Job(uri=uri, run_id=p.run_id, attempt="", run_key=p.key, run_name=p.name,
                         config={"device": p.device, "data_dir": opts.data_dir or ""}, threads=p.threads,
                         kind="remeasure", measurements=left, commit=commit)
        jobs.append((i, p, job))
    index = {job.run_id: (i, p) for i, p, job in jobs}
    job_of = {job.run_id: job for _, _, job in jobs}
    inflight: set[str] = set()
    failed: list[str] = []
    worker.clear_stop()
    try:
        while jobs or inflight:
            while jobs and (ex.capacity is None or len(inflight) < ex.capacity):
                i, p, job = jobs.pop(0)
                ex.submit(job, p.cpus, p.gpus)
                inflight.add(job.run_id)
            for o in ex.wait(0.5):
                inflight.discard(o.run_id)
                i, p = index[o.run_id]
                if o.status == "FINISHED":
                    say(f"[{i + 1}/{n}] {p.name}: {_done_line(p, job_of[o.run_id].measurements, o.final)}")
                else:
                    failed.append(p.name)
                    if o.traceback:
                        say(o.traceback.rstrip())
                    say(f"[{i + 1}/{n}] {p.name} {o.status}: {o.error} (the run is left as it was)")
    except KeyboardInterrupt:
        ex.cancel()
        say("\ninterrupted: the runs re-measured so far are in the store; the same command continues with the others")
        return 130
    say(f"{n - len(failed)} run(s) re-measured, {len(failed)} failed; {time.perf_counter() - t0:.1f} s")
    if failed:
        say(f"failed: {', '.join(failed)} (the same command retries them)")
        return 1
    return 0


def _done_line(p, measured: tuple[str, ...], final: dict[str, float]) -> str:
    import variants
    from bench import config

    skip = config.skipped_measurements(p.cfg, variants.get(p.cfg.variant))
    seconds = final.get("remeasure_seconds", float("nan"))
    made = [m for m in measured if m not in skip]
    return (f"re-measured {', '.join(made) or 'nothing'}"
            + (f" (not applicable: {', '.join(m for m in measured if m in skip)})" if len(made) < len(measured) else "")
            + f", {len(final) - 1} metric(s) in {seconds:.1f} s")


# -- the worker ------------------------------------------------------------------------------------
def load_run(client, run_id: str, device: str, threads: int = 0, data_dir: str | None = None):
    """``(cfg, dataset, model)`` of a stored run: its ``config.json`` on ``device``, its dataset,
    its model rebuilt and loaded with the ``model.pt`` weights, in eval mode."""
    import torch

    from bench import config, train, worker
    from bench.config import RunConfig

    with tempfile.TemporaryDirectory() as tmp:
        stored = json.loads(Path(client.download_artifacts(run_id, "config.json", tmp)).read_text())
        known = {f.name for f in dataclasses.fields(RunConfig)}
        cfg = RunConfig(**{k: v for k, v in stored.items() if k in known})
        cfg = dataclasses.replace(cfg, device=device, threads=threads or cfg.threads,
                                  data_dir=data_dir if data_dir else cfg.data_dir)
        ds = worker._dataset(cfg)
        dev = config.resolve_device(cfg.device)
        model = train.build_model(cfg, ds).to(dev)
        state = torch.load(client.download_artifacts(run_id, "model.pt", tmp), map_location=dev, weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return cfg, ds, model


def compute(model, cfg, ds, wanted: tuple[str, ...]) -> tuple[dict[str, float], list[str]]:
    """The final values of the ``wanted`` measurements on ``model`` (see the module docstring):
    ``(metrics, notes)``. Torch is seeded with ``cfg.seed`` before each measurement."""
    import torch
    from torch import nn

    from bench import config, metrics, objectives, train

    device = config.resolve_device(cfg.device)
    skip = config.skipped_measurements(cfg, type(model))
    test = ds.test[: cfg.test_size] if cfg.test_size else ds.test
    out: dict[str, float] = {}
    notes: list[str] = []

    def seeded():
        torch.manual_seed(cfg.seed)

    gap_px = None
    if "log_px" in wanted and "log_px" not in skip:
        seeded()
        out["test/log_px"] = metrics.log_likelihood(model, test, k=cfg.eval_k, chunk=cfg.eval_chunk).mean().item()
        if hasattr(model, "exact_log_marginal"):
            with torch.no_grad():
                out["test/exact_log_px"] = model.exact_log_marginal(test).mean().item()
    if "active_units" in wanted and "active_units" not in skip:
        seeded()
        if metrics.layers_unsupported(model) is None:
            per_layer = metrics.active_units(model, test, per_layer=True)
            out.update({f"test/active_units_l{i}": float(c) for i, c in enumerate(per_layer, 1)})
            out["test/active_units"] = float(sum(per_layer))
        else:
            out["test/active_units"] = float(metrics.active_units(model, test))
    if "ais" in wanted:
        seeded()
        ais, gap_px = train.evaluate_ais(model, cfg, ds, test, skip)
        out.update(ais)
    if "gaps" in wanted:
        seeded()
        only_gaps = dataclasses.replace(cfg, gap_epochs=[cfg.epochs], grad_epochs=[])
        out.update(train.measure(model, only_gaps, ds, None, cfg.epochs, final=False, ais_px=gap_px))
    if "grad" in wanted and "grad" not in skip:
        seeded()
        grad_x = ds.train_epoch(torch.Generator(device=device).manual_seed(0))[: cfg.grad_batch]
        objective = objectives.build(cfg.objective, **cfg.objective_options.get(cfg.objective, {}))
        if isinstance(objective, nn.Module):  # its trained parameters are not stored: fitted afresh
            objective.to(device)
            objectives.fit(objective, model, train._fit_batches(ds, cfg, device), cfg.k, cfg.grad_fit_steps)
            notes.append(f"grad/*: objective {cfg.objective!r} trains parameters of its own, which the run does not "
                         f"store: a fresh one fitted {cfg.grad_fit_steps} steps on the final model")
        only_grad = dataclasses.replace(cfg, gap_epochs=[], grad_epochs=[cfg.epochs])
        out.update(train.measure(model, only_grad, ds, grad_x, cfg.epochs, final=False, objective=objective))
    return out, notes


def execute(job, progress=None):
    """Re-measure one stored run (a ``bench.worker.Job`` of kind ``"remeasure"``); an
    ``Outcome``: FINISHED with the logged metrics, or FAILED with the error (the run untouched)."""
    import torch
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    from bench import config
    from bench.worker import Outcome

    client = MlflowClient(job.uri)
    run = client.get_run(job.run_id)
    if run.info.status != "FINISHED":
        return Outcome(job.run_id, "FAILED", error=f"the run is {run.info.status}, not FINISHED")
    if job.threads:
        torch.set_num_threads(job.threads)
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    t0 = time.perf_counter()
    try:
        device = job.config.get("device", "cpu")
        if config.resolve_device(device).type == "cpu":
            torch.set_flush_denormal(True)  # as the training loop (bench.train.run)
        cfg, ds, model = load_run(client, job.run_id, device, job.threads, job.config.get("data_dir") or None)
        values, notes = compute(model, cfg, ds, tuple(job.measurements))
        bad = sorted(k for k, v in values.items() if not math.isfinite(v) and not k.startswith("grad/"))
        if bad:
            raise BenchError(f"non-finite value(s) of {', '.join(bad)}: nothing logged")
        step = cfg.epochs
        now = int(time.time() * 1000)
        for key in values:  # later than every stored value at the step: the new one is the latest
            stored = [m.timestamp for m in client.get_metric_history(job.run_id, key) if m.step == step]
            now = max([now] + [s + 1 for s in stored])
        done = already(run.data.tags, job.commit) | set(job.measurements)
        tags = {TAG_COMMIT: job.commit, TAG_MEASUREMENTS: ",".join(m for m in MEASUREMENTS if m in done),
                TAG_AT: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        if notes:
            tags[TAG_NOTE] = "; ".join(notes)[:5000]
        ms = [Metric(k, float(v), now, step) for k, v in values.items()]
        batches = [ms[i : i + 1000] for i in range(0, len(ms), 1000)] or [[]]
        for i, batch in enumerate(batches):  # the tags with the last batch: they say it is all in
            last = i == len(batches) - 1
            client.log_batch(job.run_id, metrics=batch, tags=[RunTag(k, v) for k, v in tags.items()] if last else [])
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        tb = "" if isinstance(e, BenchError) else traceback.format_exc()
        return Outcome(job.run_id, "FAILED", error=str(e) if isinstance(e, BenchError) else error, traceback=tb)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    return Outcome(job.run_id, "FINISHED", final=values | {"remeasure_seconds": time.perf_counter() - t0})


