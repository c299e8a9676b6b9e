"""The invocation's bookkeeping in the store: claim each planned run, sweep the dead, mark, record.

**Claim** (:meth:`Ledger.claim`), for a sqlite store under its lock file: runs whose process is
gone (a driver or worker killed, a power cut) are marked KILLED with the reason (tag
``vaebench.end_reason``); then each key is *reused* (a FINISHED run), *watched* (a live run of
another invocation: its outcome is awaited), *resumed* (the newest dead attempt, in the same
MLflow run, from its last checkpoint) or *new*. The driver creates the parent run and every child
run (status SCHEDULED until a worker starts it), each with a fresh attempt token
(``vaebench.attempt``): a worker whose token is no longer the run's stops (``bench.run.worker``).

**Record** (:meth:`Ledger.record`): the parent run records what the invocation covered and how,
as the artifact ``invocation.json`` (per run key: run id, name, outcome ``reused``/``resumed``/
``ran``/``failed``/``killed``/``pending``, the epoch a resumed run continued after) and the tags
``vaebench.n_reused``, ``_n_resumed``, ``_n_ran``, ``_n_failed``; rewritten as outcomes arrive.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

from bench.run.plan import Options, Planned
from bench.store import tracking
from bench.store.checkpoints import epoch_of_checkpoint


class Ledger:
    """One invocation's records in the store (see the module docstring): the parent run, each
    planned run's child run, and the account of their outcomes."""

    def __init__(self, opts: Options, suite, planned: list[Planned], executor, parent_tags: dict | None = None) -> None:
        import torch

        self.opts, self.suite, self.planned, self.ex = opts, suite, planned, executor
        self.parent_tags = dict(parent_tags or {})
        self.uri = tracking.resolve_tracking_uri(opts.tracking_uri)
        self.commit = tracking.git_commit()
        self.common_tags = {"git_commit": self.commit, "mlflow.source.git.commit": self.commit,
                            "torch_version": torch.__version__}

    def claim(self) -> None:
        """Sweep dead runs, decide every key, create the parent and the children (see the module
        docstring); under the store's lock, so concurrent invocations decide one after another."""
        from bench.config import resolve_device

        with tracking.store_lock(self.uri):
            t = self.tracker = tracking.Tracker(self.uri, self.suite.name)
            parents = {r.info.run_id: r for r in t.search("parent")}
            children = t.search("child")
            killed = self.sweep(parents, children)

            def status(r) -> str:
                return "KILLED" if r.info.run_id in killed else r.info.status

            mine: dict[str, list] = {}
            for c in children:
                if tracking.TAG_RUN_KEY in c.data.tags and tracking.same_code(c.data.tags.get("git_commit", ""), self.commit):
                    mine.setdefault(c.data.tags[tracking.TAG_RUN_KEY], []).append(c)
            for p in self.planned:
                runs = sorted(mine.get(p.key, []), key=lambda r: r.info.start_time, reverse=True)
                done = [r for r in runs if status(r) == "FINISHED"]
                live = [r for r in runs if status(r) in tracking.LIVE]
                if self.opts.fresh or not runs:
                    p.decision = "new"
                elif done:
                    p.decision, p.run_id, p.final = "reuse", done[0].info.run_id, dict(done[0].data.metrics)
                    p.outcome = "reused"
                elif live:
                    p.decision, p.run_id = "watch", live[0].info.run_id
                elif p.stop_after and epoch_of_checkpoint(runs[0].data.tags) >= p.stop_after:
                    p.decision, p.run_id, p.outcome = "paused", runs[0].info.run_id, "paused"  # already there
                else:
                    p.decision, p.run_id = "resume", runs[0].info.run_id
                    p.start_epoch = epoch_of_checkpoint(runs[0].data.tags)
            first = next((p.device for p in self.planned), "cpu")
            device_name = tracking.device_name(resolve_device(first)) if self.ex.name == "local" else f"{self.ex.name} workers"
            self.common_tags["device_name"] = device_name
            modules = self.suite.plugins.modules
            self.parent = t.start_parent(
                self.common_tags | {tracking.TAG_EXECUTOR: self.ex.name} | self.parent_tags
                | ({tracking.TAG_PLUGINS: ",".join(modules)} if modules else {}),
                {"suite": self.suite.name, "suite_file": str(self.suite.path), "n_runs": str(len(self.planned)),
                 "overrides": " ".join(self.opts.set or []) or "-", "executor": self.ex.name,
                 "jobs": str(self.ex.capacity or "auto"), "fresh": str(self.opts.fresh)},
            )
            t.log_dict(self.parent, {"suite": self.suite.name, "description": self.suite.description,
                                     "runs": [p.cfg.__dict__ for p in self.planned]}, "suite.json")
            for p in self.planned:
                if p.decision == "new":
                    self.create(p)
                elif p.decision == "resume":
                    self.reopen(p, "resumed by this invocation")
            self.record()

    def sweep(self, parents: dict, children: list) -> set[str]:
        """Mark KILLED every parent and child of the experiment whose process is gone; their ids."""
        now, killed = time.time(), set()
        for c in children:  # before the parents: a child's liveness may depend on its parent's
            if c.info.status in tracking.LIVE and not self.child_alive(c, parents, now):
                self.mark(c.info.run_id, "KILLED", f"its process ({_holder(c.data.tags)}) is gone")
                killed.add(c.info.run_id)
        for r in parents.values():
            if r.info.status in tracking.LIVE and not tracking.holder_alive(r.data.tags, now):
                self.mark(r.info.run_id, "KILLED", f"its driver ({_holder(r.data.tags)}) is gone")
                killed.add(r.info.run_id)
        return killed

    @staticmethod
    def child_alive(c, parents: dict, now: float) -> bool:
        if c.info.status not in tracking.LIVE:
            return False
        parent = parents.get(c.data.tags.get("mlflow.parentRunId", ""))
        parent_alive = parent is not None and tracking.holder_alive(parent.data.tags, now)
        if c.info.status == "SCHEDULED":  # queued: held by the driver that created it
            return parent_alive
        if c.data.tags.get(tracking.TAG_EXECUTOR) in ("local", "ray") and not parent_alive:
            return False  # local workers and Ray tasks die with their driver
        return tracking.holder_alive(c.data.tags, now)

    def mark(self, run_id: str, status: str, reason: str, error: str | None = None) -> None:
        tags = {tracking.TAG_END_REASON: reason[:5000]}
        if error is not None:
            tags["error"] = error[:5000]
        self.tracker.set_tags(run_id, tags)
        self.tracker.end(run_id, status)

    def child_tags(self, p: Planned) -> dict[str, str]:
        return {tracking.TAG_RUN_KEY: p.key, tracking.TAG_ATTEMPT: uuid.uuid4().hex, tracking.TAG_EXECUTOR: self.ex.name,
                tracking.TAG_EPOCHS: str(p.cfg.epochs), "mlflow.parentRunId": self.parent, **tracking.lease_tags(), **p.tags}

    def create(self, p: Planned) -> None:
        import variants
        from bench import config

        t = self.tracker
        skipped = config.skipped_measurements(p.cfg, variants.get(p.cfg.variant))  # the reasons, as tags
        tags = self.common_tags | self.child_tags(p) | {tracking.TAG_SKIPPED + m: why for m, why in skipped.items()}
        tags |= {tracking.TAG_SOURCE + kind: src for kind, src in sources(p.cfg).items() if src != "built-in"}
        p.run_id = t.start_child(p.name, tags, p.params)
        t.client.update_run(p.run_id, status="SCHEDULED")
        t.log_dict(p.run_id, dataclasses.asdict(p.cfg) | {"device": p.device}, "config.json")

    def reopen(self, p: Planned, why: str) -> None:
        run = self.tracker.client.get_run(p.run_id)
        history = run.data.tags.get(tracking.TAG_HISTORY, "")
        line = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} {run.info.status} after epoch {p.start_epoch} "
                f"({run.data.tags.get(tracking.TAG_END_REASON, 'no reason recorded')}); {why} {self.parent}")
        self.tracker.reopen(p.run_id, self.child_tags(p) | {tracking.TAG_HISTORY: (history + "\n" + line).strip()[-4000:]})
        self.tracker.client.update_run(p.run_id, status="SCHEDULED")
        for tag in (tracking.TAG_END_REASON, "error"):  # the last attempt's, kept in the history
            if tag in run.data.tags:
                self.tracker.client.delete_tag(p.run_id, tag)

    def record(self) -> None:
        """The parent's account of this invocation (rewritten as outcomes arrive)."""
        runs = [{"run_key": p.key, "run_name": p.name, "run_id": p.run_id, "outcome": p.outcome,
                 "resumed_after_epoch": p.start_epoch or None, "error": p.error or None}
                for p in self.planned]
        self.tracker.log_dict(self.parent, {"suite": self.suite.name, "git_commit": self.commit, "executor": self.ex.name,
                                            "fresh": self.opts.fresh, "runs": runs}, "invocation.json")
        counts = {o: sum(p.outcome == o for p in self.planned) for o in tracking.OUTCOMES}
        self.tracker.set_tags(self.parent, {tracking.TAG_COUNT + o: str(n) for o, n in counts.items()})

    def alive(self, run) -> bool:
        """Whether the process holding ``run`` (a child) is alive."""
        c = self.tracker.client
        parent_id = run.data.tags.get("mlflow.parentRunId")
        parents = {parent_id: c.get_run(parent_id)} if parent_id else {}
        return self.child_alive(run, parents, time.time())

    def take_over(self, p: Planned) -> bool:
        """A watched run that was stopped, or whose process has died, is resumed here (decided
        under the store's lock, looking again: another invocation may have taken it first)."""
        if self.alive(self.tracker.client.get_run(p.run_id)):
            return False
        with tracking.store_lock(self.uri):
            run = self.tracker.client.get_run(p.run_id)
            if run.info.status in ("FINISHED", "FAILED") or self.alive(run):
                return False
            if run.info.status in tracking.LIVE:
                self.mark(p.run_id, "KILLED", f"its process ({_holder(run.data.tags)}) is gone")
            p.decision, p.start_epoch = "resume", epoch_of_checkpoint(run.data.tags)
            self.reopen(p, "taken over by")
        return True


def _holder(tags: dict[str, str]) -> str:
    return f"host {tags.get(tracking.TAG_HOST, '?')}, pid {tags.get(tracking.TAG_PID, '?').split('@')[0]}"


def sources(cfg) -> dict[str, str]:
    """Where the run's variant, objective and dataset come from (``built-in``, ``entry point
    DIST:MODULE``, ``plugin module MODULE`` or ``file``): the child's ``vaebench.source.*`` tags."""
    import variants
    from bench import data, objectives

    return {"variant": variants.source(cfg.variant), "objective": objectives.source(cfg.objective),
            "dataset": data.source(cfg.dataset)}
