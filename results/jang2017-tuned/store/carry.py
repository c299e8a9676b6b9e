"""Carry the stopped jang2017-tuned search to the next session: a consistent copy of the MLflow
store and the Optuna studies (sqlite backup API), written here as gzipped SQL dumps (text, not a
live database file; restore: python carry.py --restore DEST_DIR), with the checkpoint tag removed from every
unfinished run (its file stays behind in mlartifacts/; the code the search runs at, 2651ad6,
predates the fallback that starts such a run over by itself). Usage: python carry.py SRC_DIR DEST_DIR | --restore DIR"""
import gzip
import sqlite3
import sys
from pathlib import Path

from mlflow import MlflowClient

HERE = Path(__file__).parent
if sys.argv[1] == "--restore":  # the dumps here -> DIR/mlflow.db, DIR/mlflow-optuna.db
    for name in ("mlflow", "mlflow-optuna"):
        with gzip.open(HERE / f"{name}.sql.gz", "rt") as f, sqlite3.connect(Path(sys.argv[2]) / f"{name}.db") as c:
            c.executescript(f.read())
    sys.exit(0)
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
for name in ("mlflow", "mlflow-optuna"):
    with sqlite3.connect(dest / f"{name}.db") as c, gzip.open(HERE / f"{name}.sql.gz", "wt") as f:
        f.writelines(line + "\n" for line in c.iterdump())
    (dest / f"{name}.db").unlink()
    print(name, (HERE / f"{name}.sql.gz").stat().st_size)
