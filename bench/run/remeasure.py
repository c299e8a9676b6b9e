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
3. **How.** A job of kind ``"remeasure"`` (``bench.run.job.Job``), so every executor runs it
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
import sys
import time
from pathlib import Path

from bench.errors import BenchError
from bench.run import plan as planning
from bench.run import worker
from bench.run.executors import make_executor, start_fork_server
from bench.run.job import MEASUREMENTS, Job, clear_stop
from bench.run.remeasure_job import already
from bench.store import tracking


def parse_measurements(text: str) -> tuple[str, ...]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in MEASUREMENTS]
    if unknown or not names:
        raise BenchError(f"--measurements: unknown measurement(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(MEASUREMENTS)} (comma-separated)")
    return tuple(m for m in MEASUREMENTS if m in names)


# -- the driver ------------------------------------------------------------------------------------
def find_runs(opts: planning.RemeasureOptions, planned: list[planning.Planned], uri: str, suite: str) -> tuple[list, list]:
    """``(matched, missing)``: each planned run with its latest FINISHED stored run (``p.run_id``),
    and the planned runs the store has no FINISHED run of."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        raise BenchError(f"no experiment {suite!r} in the store {uri}: run the suite first (python -m bench run --suite "
                         f"{opts.suite}), or point --tracking-uri at its store")
    done: dict[str, list] = {}
    for r in tracking.search_all(client, [exp.experiment_id],
                                 tracking.role_filter("child") + " and attributes.status = 'FINISHED'"):
        if tracking.TAG_RUN_KEY in r.data.tags:
            done.setdefault(r.data.tags[tracking.TAG_RUN_KEY], []).append(r)
    matched, missing = [], []
    for p in planned:
        runs = [r for dev in ("cpu", "cuda") for r in done.get(planning.run_key(p.cfg, dev), [])]
        if not runs:
            missing.append(p)
            continue
        latest = max(runs, key=lambda r: r.info.start_time)
        p.run_id = latest.info.run_id
        p.decision = "remeasure"
        matched.append((p, latest))
    return matched, missing


def main(opts: planning.RemeasureOptions) -> int:
    """``python -m bench remeasure``: find the runs, skip those done, execute the rest; the exit code."""
    wanted = parse_measurements(opts.measurements)
    uri = tracking.resolve_tracking_uri(opts.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise BenchError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: run a suite first "
                         "(python -m bench run --suite NAME), or point --tracking-uri at the store")
    if opts.executor == "local" and opts.jobs != "1":
        start_fork_server()
    suite, planned, loaded = planning.plan(opts)
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
    ex = make_executor(opts, ps, lambda run_id, epoch, row: None, suite.plugins)
    try:
        planning.identify(ps)
        worker.preload(loaded)  # the driver's own jobs reuse them
        return _execute(ex, todo, uri, commit, opts, say, suite.plugins)
    finally:
        ex.close()


def _execute(ex, todo, uri: str, commit: str, opts: planning.RemeasureOptions, say, plugins) -> int:
    n, t0 = len(todo), time.perf_counter()
    jobs = []
    for i, (p, left) in enumerate(todo):
        job = Job(uri=uri, run_id=p.run_id, attempt="", run_key=p.key, run_name=p.name,
                         cfg=dataclasses.replace(p.cfg, device=p.device, data_dir=opts.data_dir or ""), threads=p.threads,
                         kind="remeasure", measurements=left, commit=commit, plugins=plugins)
        jobs.append((i, p, job))
    index = {job.run_id: (i, p) for i, p, job in jobs}
    job_of = {job.run_id: job for _, _, job in jobs}
    inflight: set[str] = set()
    failed: list[str] = []
    clear_stop()
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


