"""The test-split bounds of finished validation-only runs (the ablation's part (c)), from their
stored weights, with the final runs' own evaluation code: ``test/elbo`` (bench.train.evaluate_elbo,
``val_k`` samples) and ``test/log_px`` (bench.metrics.log_likelihood, L_k with the run's
``eval_k`` = 1000), torch seeded with the run's seed before each. Prints them; writes nothing.

    python results/jang2017-ablation/test_eval.py sqlite:////work/wt/abl/mlflow.db \\
        --variant bernoulli --lr 0.001 [--objectives st-gumbel,gumbel-softmax] [--data-dir data]

Not part of the suite: `bench remeasure` re-measures L_k into a run, but not its ELBO, and would
re-measure every run of the suite. The store's SQLite file is read in short transactions only (a
long read would lock the suite's writers out while it runs).
"""

import argparse
import time

import torch
from mlflow.tracking import MlflowClient

from bench import metrics, train
from bench.run.remeasure_job import load_run

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("tracking_uri")
p.add_argument("--variant", default="bernoulli")
p.add_argument("--lr", default="0.001")
p.add_argument("--objectives", default="st-gumbel,gumbel-softmax", help="comma-separated")
p.add_argument("--data-dir", default="data")
a = p.parse_args()

torch.set_num_threads(1)
torch.set_flush_denormal(True)  # as the training loop on CPU
torch.distributions.Distribution.set_default_validate_args(False)
client = MlflowClient(a.tracking_uri)
runs = [
    r
    for r in client.search_runs([e.experiment_id for e in client.search_experiments()], "attributes.status = 'FINISHED'")
    if r.data.params.get("variant") == a.variant
    and r.data.params.get("lr") == a.lr
    and r.data.params.get("objective") in a.objectives.split(",")
]
for r in runs:
    cfg, ds, model = load_run(client, r.info.run_id, "cpu", 1, a.data_dir)
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.manual_seed(cfg.seed)
        elbo = train.evaluate_elbo(model, ds.test, cfg.val_k, cfg.eval_chunk)["elbo"]
        torch.manual_seed(cfg.seed)
        log_px = metrics.log_likelihood(model, ds.test, k=cfg.eval_k, chunk=cfg.eval_chunk).mean().item()
    rn = {k: v for k, v in r.data.params.items() if k in ("option.anneal_rate", "option.anneal_every")}
    print(
        f"{r.info.run_name} lr {a.lr} {rn}: "
        f"test/elbo {elbo:.2f}  test/log_px (L_{cfg.eval_k}) {log_px:.2f}  [{time.perf_counter() - t0:.0f} s]",
        flush=True,
    )
