"""A suite invocation (``python -m bench run``): plan, claim, execute, summarize.

1. **Plan** (``bench.run.plan``): the suite's runs validated and their data loaded; the executor
   places them (``bench.run.executors.make_executor``); each run's key (``plan.identify``).
2. **Claim** (``bench.run.ledger``): dead runs swept, each key reused, watched, resumed or new;
   the parent run and the children created.
3. **Execute** (:meth:`Invocation.execute`): the executor (``bench.run.executors``) runs the jobs;
   the driver marks what the workers cannot (deaths, cancellations) and shows the progress
   (``bench.run.progress``).
4. **Summary**: the parent run's ``invocation.json`` and counts (``bench.run.ledger``); the table
   goes to stderr.

Exit codes: 0 every run finished, 1 some failed, 130 interrupted (Ctrl-C or SIGTERM: running runs
and the parent are marked KILLED, finished runs and every logged epoch stay), 2 a user mistake.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time

from bench.errors import BenchError
from bench.run import plan as planning
from bench.run import worker
from bench.run.executors import make_executor, start_fork_server
from bench.run.job import Job, Outcome, clear_stop, request_stop
from bench.run.ledger import Ledger
from bench.run.plan import Options, Planned
from bench.run.progress import SuiteProgress
from bench.store import tracking


class Invocation:
    """One ``python -m bench run``: its runs claimed in the store (:class:`~bench.run.ledger.Ledger`),
    executed, shown and summarized."""

    def __init__(self, opts: Options, suite, planned: list[Planned], executor, parent_tags: dict | None = None) -> None:
        self.opts, self.suite, self.planned, self.ex = opts, suite, planned, executor
        self.ledger = Ledger(opts, suite, planned, executor, parent_tags)
        self.progress: SuiteProgress | None = None

    def claim(self) -> None:
        self.ledger.claim()

    def execute(self) -> int:
        self.t0 = time.perf_counter()
        todo = [p for p in self.planned if p.decision in ("new", "resume")]
        self.watch = {p.run_id: p for p in self.planned if p.decision == "watch"}
        reused = [p for p in self.planned if p.decision in ("reuse", "paused")]
        self.progress = pr = SuiteProgress(self.suite.name, len(self.planned) - len(reused), len(reused))
        for p in todo + list(self.watch.values()):
            pr.plan_epochs((p.stop_after or p.cfg.epochs) - p.start_epoch)
        pr.print(f"suite {self.suite.name!r}: {len(self.planned)} runs -> {self.ledger.uri} (experiment {self.suite.name!r}), "
                 f"{len(reused)} reused, {sum(p.start_epoch > 0 for p in todo)} to resume, "
                 f"{sum(p.start_epoch == 0 for p in todo)} to run, {len(self.watch)} running elsewhere; "
                 f"executor {self.ex.name}, {self.ex.capacity or 'auto'} at once")
        self.inflight: dict[str, Planned] = {}
        heartbeat = tracking.Heartbeat(self.ledger.tracker.client, self.ledger.parent)
        # Ctrl-C or SIGTERM (a batch system, nox): stop after the epochs in progress, at a point
        # where nothing is half written; a second one stops at once.
        self.stopping = False
        clear_stop()
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
        request_stop()  # the run executing in this process, if any (--jobs 1)
        sys.stderr.write("\nstopping after the epochs in progress (again to stop at once)\n")

    def _submit(self, p: Planned) -> None:
        run = self.ledger.tracker.client.get_run(p.run_id)
        job = Job(uri=self.ledger.uri, run_id=p.run_id, attempt=run.data.tags[tracking.TAG_ATTEMPT], run_key=p.key,
                  run_name=p.name, cfg=dataclasses.replace(p.cfg, device=p.device), threads=p.threads,
                  checkpoint_every=self.opts.checkpoint_every, stop_after=p.stop_after,
                  plugins=self.suite.plugins)
        slurm_id = self.ex.submit(job, p.cpus, p.gpus)
        if slurm_id:
            self.ledger.tracker.set_tags(p.run_id, {tracking.TAG_SLURM_JOB: slurm_id})
        self.inflight[p.run_id] = p
        if not self.ex.remote:  # remote runs show up once their worker has started (_poll)
            self._show_start(p)

    def _show_start(self, p: Planned) -> None:
        self.progress.start(p.run_id, f"[{p.index + 1}/{len(self.planned)}] {p.name}", p.stop_after or p.cfg.epochs,
                            p.start_epoch)

    def on_progress(self, run_id: str, epoch: int, row: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(run_id, epoch, row)
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
        elif o.status == "PAUSED":  # a search rung's stop: not a failure
            p.outcome = "paused"
            self.progress.finish(p.run_id, True, f"{label} {o.error}")
        else:
            if not o.marked:
                self.ledger.mark(p.run_id, o.status, o.error, error=o.error)
            p.outcome, p.error = ("killed" if o.status == "KILLED" else "failed"), o.error
            self.progress.print(o.traceback.rstrip() if o.traceback else f"error: {o.error}")
            self.progress.finish(p.run_id, False, f"{label} {o.status}: {o.error}")
        self.ledger.record()

    def _poll(self) -> list[Planned]:
        """Progress of remote workers (their ``vaebench.epoch`` tag); outcomes of watched runs;
        watched runs whose process died are taken over (returned, to be resumed here)."""
        c = self.ledger.tracker.client
        if self.ex.remote and self.inflight:
            mine = {r.info.run_id: r for r in c.search_runs(  # one call for all of this invocation's runs
                [self.ledger.tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{self.ledger.parent}'", max_results=10000)}
            for run_id, p in self.inflight.items():
                run = mine.get(run_id) or c.get_run(run_id)
                tags = run.data.tags
                if run.info.status != "SCHEDULED" and run_id not in self.progress.running:
                    self._show_start(p)
                if tags.get(tracking.TAG_EPOCH):
                    e = int(tags[tracking.TAG_EPOCH])
                    self.progress.update(run_id, e)
        take = []
        for run_id, p in list(self.watch.items()):
            run = c.get_run(run_id)
            if run.info.status == "FINISHED":
                p.outcome, p.final = "reused", dict(run.data.metrics)
            elif run.info.status == "FAILED":
                p.outcome, p.error = "failed", "FAILED in another invocation"
            else:  # running elsewhere, or stopped there (KILLED): resumed here once it is not alive
                if self.ledger.take_over(p):
                    self.progress.print(f"[{p.index + 1}/{len(self.planned)}] {p.name}: its process in another invocation "
                                        f"is gone, resuming it here after epoch {p.start_epoch}")
                    take.append(p)
                    del self.watch[run_id]
                continue
            del self.watch[run_id]
            self.progress.finish(run_id, p.outcome == "reused", f"[{p.index + 1}/{len(self.planned)}] {p.name} "
                                 f"{'finished' if p.outcome == 'reused' else p.error} (in another invocation)")
            self.ledger.record()
        return take

    def _interrupted(self) -> int:
        from mlflow.exceptions import MlflowException

        left = self.ex.cancel()
        try:
            for p in self.planned:
                if p.run_id and (p.run_id in left or p.outcome == "pending") and p.decision != "watch":
                    if self.ledger.tracker.client.get_run(p.run_id).info.status in tracking.LIVE:
                        started = p.run_id in self.inflight
                        self.ledger.mark(p.run_id, "KILLED", "interrupted (Ctrl-C)" if started else "interrupted before it started")
                    p.outcome = "killed" if p.outcome == "pending" else p.outcome
            self.ledger.mark(self.ledger.parent, "KILLED", "interrupted (Ctrl-C)")
            self.ledger.record()
        except MlflowException as e:  # stopped at once inside a store write (a second Ctrl-C)
            print(f"\ncould not mark the interrupted runs ({str(e).splitlines()[0]}): the next invocation will",
                  file=sys.stderr)
        print("\ninterrupted: finished runs and every logged epoch are in the store; the interrupted runs are "
              "marked KILLED, and the same command resumes them", file=sys.stderr)
        return 130

    def _finish(self) -> int:
        t = self.ledger.tracker
        seconds = time.perf_counter() - self.t0
        t.log_metrics(self.ledger.parent, {"perf/suite_seconds": seconds}, None)
        self.ledger.record()
        failed = [p for p in self.planned if p.outcome in ("failed", "killed")]
        t.end(self.ledger.parent, "FAILED" if failed else "FINISHED")
        _print_summary(self.planned, seconds)
        if failed:
            print(f"{len(failed)} run(s) failed: {', '.join(p.name for p in failed)} (marked FAILED in the store; "
                  "the same command retries them, from their last checkpoint)", file=sys.stderr)
            return 1
        return 0


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
    counts = {o: sum(p.outcome == o for p in planned) for o in tracking.OUTCOMES}
    resumed = [f"{p.name} after epoch {p.start_epoch}" for p in planned if p.outcome == "resumed"]
    print(", ".join(f"{n} {o}" for o, n in counts.items() if n) + (f" ({'; '.join(resumed)})" if resumed else ""),
          file=sys.stderr)
    print(f"suite time {seconds:.1f} s", file=sys.stderr)


def main(opts: Options, planned_suite: tuple | None = None) -> int:
    """``python -m bench run`` of a suite without a ``[search]`` table (``bench.cli`` sends a
    searched one to ``bench.run.search``): plan (unless ``planned_suite``, ``plan.plan``'s result,
    is given), claim, execute, summarize; the exit code."""
    if planned_suite is None and opts.executor == "local" and opts.jobs != "1":
        start_fork_server()
    suite, planned, loaded = planned_suite or planning.plan(opts)
    if suite.search is not None:
        raise BenchError(f"suite {suite.name!r} has a [search] table: run it with python -m bench run (bench.run.search)")
    box: list[Invocation] = []
    ex = make_executor(opts, planned, lambda *a: box[0].on_progress(*a) if box else None, suite.plugins)
    try:
        planning.identify(planned)
        worker.preload(loaded)  # the driver's own runs reuse them
        inv = Invocation(opts, suite, planned, ex)
        box.append(inv)
        inv.claim()
        return inv.execute()
    finally:
        ex.close()
