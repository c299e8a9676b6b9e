"""Carry the stopped jang2017-tuned search to the next session: a consistent copy of the MLflow
store and the Optuna studies (sqlite backup API), with the checkpoint tag removed from every
unfinished run (its file stays behind in mlartifacts/; the code the search runs at, 2651ad6,
predates the fallback that starts such a run over by itself). Usage: python carry.py SRC_DIR DEST_DIR"""
import sqlite3
import sys
from pathlib import Path

from mlflow import MlflowClient

src, dest = Path(sys.argv[1]), Path(sys.argv[2])
dest.mkdir(parents=True, exist_ok=True)
for name in ("mlflow.db", "mlflow-optuna.db"):
    out = dest / name
    out.unlink(missing_ok=True)
    with sqlite3.connect(src / name) as a, sqlite3.connect(out) as b:
        a.backup(b)
    with sqlite3.connect(out) as b:
        b.execute("VACUUM")
client = MlflowClient(f"sqlite:///{dest / 'mlflow.db'}")
exp = client.get_experiment_by_name("jang2017-tuned")
runs = client.search_runs([exp.experiment_id], max_results=5000)
cleared = 0
for r in runs:
    if r.info.status != "FINISHED" and "vaebench.checkpoint" in r.data.tags:
        client.delete_tag(r.info.run_id, "vaebench.checkpoint")
        cleared += 1
print(f"{len(runs)} runs; checkpoint tag removed from {cleared} unfinished runs")
for name in ("mlflow.db", "mlflow-optuna.db"):
    print(name, (dest / name).stat().st_size)
