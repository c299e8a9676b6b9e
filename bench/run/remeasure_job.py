"""A re-measure job in a worker: a FINISHED run's final measurements recomputed on its stored
weights with the current code, and logged into the same run (``python -m bench remeasure``,
``bench.run.remeasure``, chooses the runs and says how).

:func:`execute` downloads the run's ``config.json`` and ``model.pt`` artifacts (:func:`load_run`),
seeds torch with the run's seed before *each* measurement (:func:`compute`), and logs the values at
the step of the final metrics with a timestamp later than every stored value, with the tags
``vaebench.remeasured.*`` in the same store write.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
import traceback
from pathlib import Path

from bench.errors import BenchError
from bench.run.job import MEASUREMENTS, Job, Outcome
from bench.store.tracking import (
    TAG_REMEASURED_AT,
    TAG_REMEASURED_COMMIT,
    TAG_REMEASURED_MEASUREMENTS,
    TAG_REMEASURED_NOTE,
)


def already(tags: dict[str, str], commit: str) -> set[str]:
    """The measurements a run's tags say were re-measured at ``commit``."""
    if tags.get(TAG_REMEASURED_COMMIT) != commit:
        return set()
    return {m for m in tags.get(TAG_REMEASURED_MEASUREMENTS, "").split(",") if m}


def load_run(client, run_id: str, device: str, threads: int = 0, data_dir: str | None = None):
    """``(cfg, dataset, model)`` of a stored run: its ``config.json`` on ``device``, its dataset,
    its model rebuilt and loaded with the ``model.pt`` weights, in eval mode."""
    import torch

    from bench import config, train
    from bench.config import RunConfig
    from bench.run import worker

    with tempfile.TemporaryDirectory() as tmp:
        stored = json.loads(Path(client.download_artifacts(run_id, "config.json", tmp)).read_text())
        known = {f.name for f in dataclasses.fields(RunConfig)}
        cfg = RunConfig(**{k: v for k, v in stored.items() if k in known})
        cfg = dataclasses.replace(cfg, device=device, threads=threads or cfg.threads,
                                  data_dir=data_dir if data_dir else cfg.data_dir)
        ds = worker.dataset(cfg)
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


def execute(job: Job) -> Outcome:
    """Re-measure one stored run (a ``bench.run.job.Job`` of kind ``"remeasure"``); an
    ``Outcome``: FINISHED with the logged metrics, or FAILED with the error (the run untouched)."""
    import torch
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    from bench import config, passes

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
        passes.set_gpu_share(job.gpu_share)
        device = job.cfg.device
        if config.resolve_device(device).type == "cpu":
            torch.set_flush_denormal(True)  # as the training loop (bench.train.run)
        cfg, ds, model = load_run(client, job.run_id, device, job.threads, job.cfg.data_dir or None)
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
        tags = {TAG_REMEASURED_COMMIT: job.commit, TAG_REMEASURED_MEASUREMENTS: ",".join(m for m in MEASUREMENTS if m in done),
                TAG_REMEASURED_AT: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        if notes:
            tags[TAG_REMEASURED_NOTE] = "; ".join(notes)[:5000]
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


