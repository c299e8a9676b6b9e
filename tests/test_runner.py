"""The suite runner: run identity, bit-for-bit resume from checkpoints, each metric step logged
once, liveness of runs, placement of runs on cores and GPUs, progress, reuse and --fresh, and end
to end in subprocesses: kill -9 of the driver, kill -9 of a worker, Ctrl-C, then the same command
again; four invocations at once into a new sqlite store."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bench import cli, data, train
from bench.config import RunConfig
from bench.errors import ConfigError
from bench.run import executors, plan
from bench.run.progress import SuiteProgress, run_line
from bench.run.worker import RunLogger
from bench.store import checkpoints, tracking
from bench.suite import available_suites, load_suite
from tests.conftest import ROOT, TINY
from tests.runs import (
    TIMINGS,
    Cli,
    alive,
    assert_same_numbers,
    checkpointed,
    children,
    histories,
    holder_pid,
    parents,
    wait_for,
)


# -- identity --------------------------------------------------------------------------------------
def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + [7]
    return {"an_option": 1}


def test_run_key_known_answer_and_what_enters_it():
    base = RunConfig()
    # the default config hashes only the format version and the device type
    assert plan.run_key(base, "cpu") == hashlib.sha256(b'{"device":"cpu","v":1}').hexdigest()[:20]
    assert plan.run_key(base, "cuda:1") == plan.run_key(base, "cuda") != plan.run_key(base, "cpu")
    for name in plan.KEY_FIELDS:  # every field that says what is computed changes the key
        changed = dataclasses.replace(base, **{name: _other(getattr(base, name))})
        assert plan.run_key(changed, "cpu") != plan.run_key(base, "cpu"), name
    for name in ("threads", "data_dir"):  # how and where a run executes does not
        changed = dataclasses.replace(base, **{name: _other(getattr(base, name))})
        assert plan.run_key(changed, "cpu") == plan.run_key(base, "cpu"), name
    assert set(plan.KEY_FIELDS) | set(plan.NOT_IN_KEY) == {f.name for f in dataclasses.fields(RunConfig)}


def test_every_shipped_suite_has_one_run_per_key():
    for name in available_suites():
        keys = [plan.run_key(r, "cpu") for r in load_suite(name).runs]
        assert len(set(keys)) == len(keys), name


# -- checkpoints -----------------------------------------------------------------------------------
def _small(case: str) -> RunConfig:
    variant, _, optimizer = case.partition("+")
    cfg = RunConfig(variant=variant, epochs=4, train_size=200, test_size=40, hidden=[16], latent_dim=4,
                    batch_size=50, val_k=2, eval_k=16, gap_epochs=[2], gap_size=10, gap_steps=5, gap_k=16,
                    grad_epochs=[3], grad_draws=3, grad_batch=8, threads=1)
    import variants

    cls = variants.get(variant)
    cfg.objective, cfg.k = cls.default_objective, cls.default_k
    if variant == "gumbel-softmax":  # a temperature that anneals within these 16 steps: the step counter matters
        cfg.variant_options = {"anneal_rate": 0.1, "anneal_every": 2}
    if variant == "bernoulli" and not optimizer:  # a trainable estimator (its own network and optimizer) under a KL warm-up
        cfg.objective, cfg.kl_warmup_epochs = "nvil", 3
    if optimizer == "sgd":  # momentum buffers in the optimizer's state; a rate that decays mid-epoch (4 steps an epoch)
        cfg.optimizer, cfg.momentum, cfg.lr = "sgd", 0.9, 1e-2
        cfg.lr_schedule, cfg.lr_decay, cfg.lr_decay_every = "exponential", 0.5, 3
    if optimizer == "prior-sgd":  # DisARM's setting: the prior's logits on their own SGD, the rest on Adam
        cfg.prior_optimizer, cfg.prior_lr = "sgd", 1e-2
    return cfg


def _numbers(logged: dict) -> dict:
    return {s: {k: v for k, v in m.items() if not k.startswith(TIMINGS)} for s, m in logged.items()}


@pytest.mark.parametrize("variant", ["vanilla", "gumbel-softmax", "bernoulli", "vanilla+sgd", "bernoulli+prior-sgd"])
def test_a_run_resumed_from_its_checkpoint_is_bit_for_bit_the_uninterrupted_run(variant):
    """Train 4 epochs, checkpointing each; resume from epoch 2's checkpoint (serialized, loaded
    weights-only) in a process state scrambled by another seed: epochs 3, 4 and the final
    metrics are identical. Without the global generator's or the training generator's state
    (the power check) they are not; nor, for a trainable estimator (NVIL on ``bernoulli``),
    without its own state and optimizer's. The same with SGD + momentum under the exponential
    schedule (without the momentum buffers, or at step 0 of the schedule, not), and with the
    Bernoulli prior's logits on an SGD of their own (``prior_optimizer``)."""
    cfg, ds = _small(variant), data.load("digits")
    full, saved = {}, {}

    def keep(epoch, state):
        buf = io.BytesIO()
        torch.save(state(), buf)
        saved[epoch] = buf.getvalue()

    train.run(cfg, ds, lambda m, s: full.setdefault(s, {}).update(m), checkpoint_fn=keep)
    assert sorted(saved) == [1, 2, 3, 4]

    def resume(**broken):
        state = torch.load(io.BytesIO(saved[2]), weights_only=True) | broken
        torch.manual_seed(12345)
        logged = {}
        train.run(cfg, ds, lambda m, s: logged.setdefault(s, {}).update(m), resume=state)
        return logged

    again = resume()
    assert sorted(again) == [3, 4]  # nothing before the checkpoint is recomputed
    assert _numbers(again) == {s: _numbers(full)[s] for s in (3, 4)}
    other = torch.Generator().manual_seed(1)
    assert _numbers(resume(torch_rng=other.get_state()))[4] != _numbers(full)[4]
    assert _numbers(resume(generator=other.get_state()))[4] != _numbers(full)[4]
    if variant in ("gumbel-softmax", "bernoulli", "vanilla+sgd"):  # the temperature / the KL warm-up / the lr follow the step
        assert _numbers(resume(step=0))[4] != _numbers(full)[4]
    if variant == "bernoulli":
        assert _numbers(resume(objective={}, objective_optimizer={}))[4] != _numbers(full)[4]
    if variant == "vanilla+sgd":
        opt = torch.load(io.BytesIO(saved[2]), weights_only=True)["optimizer"]
        assert _numbers(resume(optimizer=opt | {"state": {}}))[4] != _numbers(full)[4]
    if variant == "bernoulli+prior-sgd":
        assert set(torch.load(io.BytesIO(saved[2]), weights_only=True)["optimizer"]) == {"model", "prior"}


def test_logger_keeps_each_step_once(store):
    """Killed after logging epoch 2 but before checkpointing it, the resumed run (from epoch 1)
    computes epoch 2 again: its logger drops what the run already has. A logger that ignored the
    run's history would log step 2 twice (the power check). Nothing is written before a flush,
    which writes the metrics and the tags together."""
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    first = RunLogger(client, run_id, after=0)
    first({"a": 1.0}, 1)
    first.flush()
    first({"a": 2.0, "b": 5.0}, 2)
    assert [m.step for m in client.get_metric_history(run_id, "a")] == [1]
    first.flush({"vaebench.checkpoint": "checkpoints/epoch-000002.pt"})
    resumed = RunLogger(client, run_id, after=1)
    resumed({"a": 2.0, "b": 5.0}, 2)
    resumed({"a": 3.0}, 3)
    resumed.flush()
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "a")) == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "b")] == [(2, 5.0)]
    tags = client.get_run(run_id).data.tags
    assert tags["vaebench.epoch"] == "3" and tags["vaebench.checkpoint"] == "checkpoints/epoch-000002.pt"
    blind = RunLogger(client, run_id, after=10**9)
    blind({"a": 3.0}, 3)
    blind.flush()
    assert [m.step for m in client.get_metric_history(run_id, "a")].count(3) == 2


def test_sample_grids_layout(tmp_path):
    """Three 2x2 images of values 0, 1/4 and 1 in rows of 2, padding 1 of 0.5: known pixels."""
    from PIL import Image

    from bench.plots.curves import save_grid

    images = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 0.25, 1.0)])
    save_grid(images, tmp_path / "g.png", nrow=2, padding=1, pad_value=0.5)
    import numpy as np

    with Image.open(tmp_path / "g.png") as im:
        px = torch.from_numpy(np.asarray(im).astype(np.int64))
    assert px.shape == (7, 7)
    pad, a, b, c = 128, 0, 64, 255  # round(255 * v)
    assert px[0].tolist() == [pad] * 7 and px[:, 0].tolist() == [pad] * 7
    assert px[1].tolist() == [pad, a, a, pad, b, b, pad]
    assert px[4].tolist() == [pad, c, c, pad, pad, pad, pad]  # the third image starts the second row


def test_artifact_checkpoints_commit_by_tag(store):
    """The tag names the newest complete checkpoint; the previous file is deleted; clear() leaves
    neither files nor tag."""
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    store_ = checkpoints.ArtifactCheckpoints(client, run_id)
    assert store_.latest() is None
    for epoch in (1, 2):
        store_.save({"format": 1, "epoch": epoch, "x": torch.arange(3) * epoch})
    again = checkpoints.ArtifactCheckpoints(client, run_id)  # a new process reads it back
    assert again.latest()["epoch"] == 2 and again.latest()["x"].tolist() == [0, 2, 4]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/epoch-000002.pt"]
    again.clear()
    assert client.list_artifacts(run_id, "checkpoints") == []
    assert tracking.TAG_CHECKPOINT not in client.get_run(run_id).data.tags



def test_a_run_whose_checkpoint_is_missing_starts_over_and_ends_as_the_uninterrupted_run(store, capsys):
    """A store carried to another machine without its artifacts: a run paused after epoch 1 (a
    search rung) whose checkpoint file is gone starts over from epoch 0, says so, and finishes with
    the uninterrupted run's metrics, each step once and bit for bit. Before this fallback the run
    failed on the missing file."""
    import shutil
    from urllib.parse import urlparse

    from bench.run.job import Job
    from bench.run.worker import execute

    cfg = _small("vanilla")
    client = MlflowClient(store)
    exp = client.create_experiment("t")

    def job(run_id: str, stop_after: int = 0) -> Job:
        return Job(uri=store, run_id=run_id, attempt="1", run_key="k", run_name="r", cfg=cfg,
                             threads=1, stop_after=stop_after)

    def history(run_id: str) -> dict:
        return {m: [(h.step, h.value) for h in sorted(client.get_metric_history(run_id, m), key=lambda h: h.step)]
                for m in client.get_run(run_id).data.metrics}

    whole = client.create_run(exp, tags={tracking.TAG_ATTEMPT: "1"}).info.run_id
    assert execute(job(whole)).status == "FINISHED"
    carried = client.create_run(exp, tags={tracking.TAG_ATTEMPT: "1"}).info.run_id
    assert execute(job(carried, stop_after=1)).status == "PAUSED"
    tags = client.get_run(carried).data.tags
    assert tags[tracking.TAG_CHECKPOINT] == "checkpoints/epoch-000001.pt"
    shutil.rmtree(Path(urlparse(client.get_run(carried).info.artifact_uri).path) / "checkpoints")
    capsys.readouterr()
    out = execute(job(carried))
    assert out.status == "FINISHED" and out.resumed_from is None, out.error
    assert "checkpoints/epoch-000001.pt is not in the artifact store; the run starts over from epoch 0" in capsys.readouterr().err
    got, want = history(carried), history(whole)
    assert sorted(got) == sorted(want)
    for m in want:
        assert [s for s, _ in got[m]] == [s for s, _ in want[m]], m  # each step once
        if not m.startswith(TIMINGS):
            assert got[m] == want[m], m

# -- liveness, placement, progress -----------------------------------------------------------------
def test_a_run_is_alive_while_its_process_is():
    assert tracking.holder_alive(tracking.lease_tags())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    me = tracking.lease_tags()
    assert not tracking.holder_alive(me | {"vaebench.pid": f"{proc.pid}@1"})  # gone
    if me["vaebench.pid"].split("@")[1]:  # Linux: a pid reused by another process is not the holder
        assert not tracking.holder_alive(me | {"vaebench.pid": f"{os.getpid()}@1"})
    now = time.time()
    remote = {"vaebench.host": "another-node", "vaebench.pid": "1@1"}
    assert tracking.holder_alive(remote | {"vaebench.heartbeat": str(now - 10)})
    assert not tracking.holder_alive(remote | {"vaebench.heartbeat": str(now - tracking.STALE_S - 1)})


def test_heartbeat_refreshes_the_lease_and_reads_the_run_back(store):
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("t"), tags={"vaebench.heartbeat": "0"}).info.run_id
    seen = []
    beat = tracking.Heartbeat(client, run_id, every=0.05, check=seen.append)
    try:
        wait_for(lambda: len(seen) >= 2, "two heartbeats", timeout=30)
    finally:
        beat.stop()
    assert time.time() - float(client.get_run(run_id).data.tags["vaebench.heartbeat"]) < 30
    assert seen[-1].info.run_id == run_id


def test_a_worker_whose_attempt_was_superseded_leaves_the_run_alone(store):
    """The fence: a job handed out before another attempt took the run over does nothing."""
    from bench.run.job import Job
    from bench.run.worker import execute

    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("t"), tags={"vaebench.attempt": "newer"}).info.run_id
    client.update_run(run_id, status="SCHEDULED")
    job = Job(uri=store, run_id=run_id, attempt="older", run_key="k", run_name="n",
              cfg=RunConfig(device="cpu"), threads=1)
    assert execute(job).status == "SUPERSEDED"
    run = client.get_run(run_id)
    assert run.info.status == "SCHEDULED" and not run.data.metrics and "vaebench.pid" not in run.data.tags


def test_how_a_worker_died_in_words():
    assert executors.died(-9) == "worker process died of SIGKILL (killed: kill -9, or the out-of-memory killer)"
    assert "segmentation fault" in executors.died(-11)
    assert executors.died(1) == "worker process exited with code 1 before reporting"


def _planned(n: int, **cfg) -> list[plan.Planned]:
    return [plan.Planned(i, RunConfig(seed=i, **cfg), {}) for i in range(n)]


def test_jobs_auto_fills_the_cores_or_the_gpus():
    runs = _planned(10, threads=1)
    assert executors.place_local(runs, None, cores=8, n_gpus=0, default_threads=8) == 8
    assert {p.device for p in runs} == {"cpu"} and {p.threads for p in runs} == {1}
    runs = _planned(10, threads=4)
    assert executors.place_local(runs, None, cores=8, n_gpus=0, default_threads=8) == 2
    runs = _planned(10)  # threads = 0: torch's default alone, a share of the cores with others
    assert executors.place_local(runs, None, cores=8, n_gpus=0, default_threads=8) == 1 and runs[0].threads == 8
    assert executors.place_local(runs, 4, cores=8, n_gpus=0, default_threads=8) == 4 and runs[0].threads == 2
    assert executors.place_local(_planned(3, threads=1), None, cores=8, n_gpus=0, default_threads=8) == 3
    runs = _planned(20, threads=1)  # on CUDA: GPUs x runs per GPU
    assert executors.place_local(runs, None, cores=16, n_gpus=2, default_threads=1, runs_per_gpu=4) == 8
    assert {p.device for p in runs} == {"cuda"}
    assert [executors.gpu_of_slot(i, ["0", "1"], 4) for i in range(8)] == ["0"] * 4 + ["1"] * 4
    assert [executors.gpu_of_slot(i, ["3", "5"], 1) for i in range(3)] == ["3", "5", "3"]
    assert executors.place_local(_planned(2, device="cpu"), None, cores=4, n_gpus=2, default_threads=1) == 1
    with pytest.raises(ConfigError, match="CUDA is not available"):
        executors.place_local(_planned(2, device="cuda"), None, cores=4, n_gpus=0, default_threads=1)


def test_progress_lines(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    pr = SuiteProgress("tiny", to_run=2, reused=1, stream=out, tty=False)
    pr.plan_epochs(30)
    pr.plan_epochs(30)
    pr.start("a", "[1/3] a", 30)
    clock[0] += 30
    for e in range(1, 7):
        pr.update("a", e)  # a remote worker: the epoch only
    # 6 of 60 epochs in 30 s: 54 to go take 270 s
    assert pr.suite_line() == "suite tiny: 0 done, 1 running, 0 failed, 1 to go, 1 reused; elapsed 0:30, ETA 4:30"
    pr.finish("a", True, "[1/3] a finished")
    text = out.getvalue()
    assert "[1/3] a started" in text
    # logs get epoch 1, every tenth of the epochs and the last
    assert [line for line in text.splitlines() if "epoch" in line] == ["[1/3] a epoch   1/30", "[1/3] a epoch   3/30",
                                                                       "[1/3] a epoch   6/30"]
    assert text.rstrip().endswith("suite tiny: 1 done, 0 running, 0 failed, 1 to go, 1 reused; elapsed 0:30, ETA 0:30")
    tty = io.StringIO()
    pr = SuiteProgress("tiny", to_run=1, reused=0, stream=tty, tty=True)
    pr.plan_epochs(4)
    pr.start("b", "[1/1] b", 4)
    row = {"train/loss": 3.25, "val/elbo": -3.0, "train/examples_per_s": 12345.6}
    assert run_line(2, 4, row) == "epoch   2/4  train    -3.250  val/elbo    -3.000      12,346 ex/s"
    assert run_line(-1, 4, {"test/elbo": -3.5, "perf/eval_examples_per_s": 2e4}) == (
        "test/elbo -3.500  test/log_px skipped  (20,000 eval ex/s)")
    pr.update("b", 2, row)
    pr.finish("b", True, "[1/1] b finished")
    screen = tty.getvalue()
    assert "\x1b[2F\x1b[J" in screen  # the live block (suite line + one run) is redrawn in place
    assert _render(screen) == ["[1/1] b finished", "suite tiny: 1 done, 0 running, 0 failed, 0 to go; elapsed 0:00, ETA 0:00"]


def _render(text: str) -> list[str]:
    """The lines a terminal shows after ``text``, with "ESC[nF" (up n lines, to their start) and
    "ESC[J" (erase to the end of the screen) applied."""
    import re

    lines: list[str] = []
    for part in re.split(r"(\x1b\[\d+F\x1b\[J)", text):
        if part.startswith("\x1b["):
            del lines[len(lines) - int(part[2:].split("F")[0]):]
        else:
            lines += part.splitlines()
    return lines


# -- reuse, --fresh, the parent's record -----------------------------------------------------------
def _invocation(uri: str, parent) -> dict:
    client = MlflowClient(uri)
    path = client.download_artifacts(parent.info.run_id, "invocation.json")
    return json.loads(Path(path).read_text())


@pytest.mark.slow
def test_finished_runs_are_reused_and_fresh_recomputes(store, capsys):
    args = ["run", "--suite", str(TINY), "--tracking-uri", store, "--set", "variants=vanilla,iwae", "--set", "epochs=1"]
    assert cli.main(args) == 0
    first = {r.data.tags["vaebench.run_key"]: r.info.run_id for r in children(store)}
    assert len(first) == 2
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "2 reused" in err and "ran" not in err.split("outcome")[-1]
    assert {r.data.tags["vaebench.run_key"]: r.info.run_id for r in children(store)} == first  # nothing new
    record = _invocation(store, parents(store)[-1])
    assert {r["run_key"]: (r["run_id"], r["outcome"]) for r in record["runs"]} == {k: (v, "reused") for k, v in first.items()}
    assert parents(store)[-1].data.tags["vaebench.n_reused"] == "2"

    assert cli.main(args + ["--fresh"]) == 0
    assert "2 ran" in capsys.readouterr().err
    runs = children(store)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)  # earlier runs stay
    fresh = {r.data.tags["vaebench.run_key"]: r.info.run_id for r in runs if r.info.run_id not in first.values()}
    assert sorted(fresh) == sorted(first)
    # a FINISHED run of another commit is not reused (a new commit means new numbers)
    client = MlflowClient(store)
    vanilla = next(p for p in load_suite(str(TINY)).runs if p.variant == "vanilla")
    for r in runs:
        if r.info.run_name == vanilla.run_name:
            client.set_tag(r.info.run_id, "git_commit", "another-commit")
    assert cli.main(args) == 0
    outcomes = {r["run_name"]: r["outcome"] for r in _invocation(store, parents(store)[-1])["runs"]}
    assert outcomes == {"vanilla/elbo/digits/seed0": "ran", "iwae/iwae/digits/seed0": "reused"}


# -- end to end, in subprocesses -------------------------------------------------------------------
@pytest.mark.slow
def test_a_dead_worker_then_kill_9_of_the_driver_then_the_same_command_completes_the_suite(tmp_path, store, tiny_ref):
    """With ``--jobs 2``: kill -9 of one worker fails its run, with the reason, and the suite goes
    on (another run starts); then kill -9 of the driver: its workers die with it, its runs stay
    RUNNING. The same command again marks the dead parent and runs KILLED with the reason,
    continues every unfinished run in its own MLflow run from its checkpoint, reuses the finished
    ones, and every metric of every run equals the uninterrupted run's, step for step and bit for
    bit."""
    first = Cli(tmp_path, store, "--jobs", "2")
    victim = wait_for(lambda: checkpointed(store), "a checkpointed run", proc=first)
    os.kill(holder_pid(victim), signal.SIGKILL)
    client = MlflowClient(store)
    wait_for(lambda: client.get_run(victim.info.run_id).info.status == "FAILED", "the run to be FAILED", proc=first)
    failed = client.get_run(victim.info.run_id)
    assert "died of SIGKILL" in failed.data.tags["error"]
    other = wait_for(lambda: checkpointed(store, exclude={victim.info.run_id}), "the suite to go on", proc=first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    wait_for(lambda: not alive(holder_pid(other)), "its workers to die with the driver", timeout=10)
    before = {r.info.run_id: r.info.status for r in children(store)}
    assert before[other.info.run_id] == "RUNNING"  # dead, until an invocation looks

    again = Cli(tmp_path, store, "--jobs", "2")
    assert again.wait() == 0, again.stderr[-3000:]
    assert "resumed" in again.stderr and "Traceback" not in again.stderr
    runs = {r.info.run_id: r for r in children(store)}
    assert set(runs) == set(before)  # no new run: each unfinished one continued in its own
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert "FAILED after epoch" in runs[victim.info.run_id].data.tags["vaebench.history"]  # its story is kept
    assert "KILLED after epoch" in runs[other.info.run_id].data.tags["vaebench.history"]
    dead, live = parents(store)
    assert dead.info.status == "KILLED" and "is gone" in dead.data.tags["vaebench.end_reason"]
    outcomes = {r["run_id"]: r["outcome"] for r in _invocation(store, live)["runs"]}
    assert outcomes[victim.info.run_id] == outcomes[other.info.run_id] == "resumed"
    assert {o for rid, o in outcomes.items() if before[rid] == "FINISHED"} <= {"reused"}
    assert_same_numbers(histories(store), tiny_ref[1])


@pytest.mark.slow
def test_the_same_suite_twice_at_once_shares_the_runs_and_ctrl_c_stops_one(tmp_path, store, tiny_ref):
    """Two invocations of one suite started together (``--jobs 2``): the one that claims the runs
    first computes them, the other waits for them rather than computing them again. Ctrl-C (SIGINT
    to its process group, as a terminal sends it) stops the first after the epochs in progress:
    its runs and its parent KILLED, exit code 130. The other takes the runs over, resumes them and
    finishes them, with the uninterrupted run's numbers."""
    a, b = Cli(tmp_path, store, "--jobs", "2"), Cli(tmp_path, store, "--jobs", "2")

    def claimed():
        watcher = next((c for c in (a, b) if "running elsewhere" in c.stderr and "0 running elsewhere" not in c.stderr), None)
        computer = b if watcher is a else a
        return (watcher, computer) if watcher and checkpointed(store) else None

    watcher, computer = wait_for(claimed, "one invocation to compute and the other to wait")
    os.killpg(computer.pid, signal.SIGINT)
    assert computer.wait(60) == 130
    assert "interrupted" in computer.stderr and "Traceback" not in computer.stderr
    (first, *_) = parents(store)
    assert first.info.status == "KILLED" and "Ctrl-C" in first.data.tags["vaebench.end_reason"]
    assert watcher.wait() == 0, watcher.stderr[-3000:]
    assert "resuming it here" in watcher.stderr
    runs = children(store)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert any("KILLED after epoch" in r.data.tags.get("vaebench.history", "") for r in runs)
    outcomes = {r["outcome"] for r in _invocation(store, parents(store)[1])["runs"]}
    assert "resumed" in outcomes and outcomes <= {"resumed", "reused", "ran"}  # "ran": taken over before its first checkpoint
    assert_same_numbers(histories(store), tiny_ref[1])


@pytest.mark.slow
def test_four_invocations_at_once_into_a_new_store(tmp_path):
    """Started together into a store that does not exist yet (one of them asks for the runs two
    others make): every process succeeds without a traceback, every key has one FINISHED run."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "run", "--suite", str(TINY), "--tracking-uri", uri,
                               "--set", "variants=vanilla", "--set", "epochs=1", "--set", f"seeds={seeds}"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for seeds in ("0", "1", "0,1", "2")]
    for p in procs:
        err = p.communicate(timeout=300)[1]
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    runs = children(uri)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.info.run_name for r in runs) == [f"vanilla/elbo/digits/seed{s}" for s in range(3)]
