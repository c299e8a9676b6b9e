"""Carry a stopped suite's store between sittings on machines wiped in between.

    python carry.py SRC_DIR DUMP_DIR        # SRC_DIR/mlflow.db (and mlflow-optuna.db) -> DUMP_DIR/*.sql.gz
    python carry.py --restore DIR [DUMP_DIR] # DUMP_DIR's dumps (default: this directory) -> DIR/*.db

A consistent copy of the MLflow store and, where there is one, the Optuna studies (sqlite's
backup API, safe while the suite runs), written as gzipped SQL dumps (text, not a live database
file), with the checkpoint tag removed from every unfinished run: its file stays behind in
mlartifacts/, so the run starts over from epoch 0 (the code jang2017-tuned runs at, 2651ad6,
predates the fallback that does so by itself)."""
import gzip
import sqlite3
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient

HERE = Path(__file__).parent
NAMES = ("mlflow", "mlflow-optuna")
if sys.argv[1] == "--restore":
    dest, dumps = Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else HERE
    for name in NAMES:
        if (dumps / f"{name}.sql.gz").is_file():
            with gzip.open(dumps / f"{name}.sql.gz", "rt") as f, sqlite3.connect(dest / f"{name}.db") as c:
                c.executescript(f.read())
    sys.exit(0)
src, dumps = Path(sys.argv[1]), Path(sys.argv[2])
dumps.mkdir(parents=True, exist_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    copies = {}
    for name in NAMES:
        if not (src / f"{name}.db").is_file():
            continue
        copies[name] = out = Path(tmp) / f"{name}.db"
        with sqlite3.connect(src / f"{name}.db") as a, sqlite3.connect(out) as b:
            a.backup(b)
        with sqlite3.connect(out) as b:
            b.execute("VACUUM")
    client = MlflowClient(f"sqlite:///{copies['mlflow']}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=5000)
    cleared = 0
    for r in runs:
        if r.info.status != "FINISHED" and "vaebench.checkpoint" in r.data.tags:
            client.delete_tag(r.info.run_id, "vaebench.checkpoint")
            cleared += 1
    print(f"{len(runs)} runs; checkpoint tag removed from {cleared} unfinished runs")
    for name, db in copies.items():
        with sqlite3.connect(db) as c, gzip.open(dumps / f"{name}.sql.gz", "wt") as f:
            f.writelines(line + "\n" for line in c.iterdump())
        print(name, (dumps / f"{name}.sql.gz").stat().st_size)
