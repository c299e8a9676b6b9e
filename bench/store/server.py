"""``python -m bench server``: an MLflow tracking server for many writers, on the loopback
interface, with a PostgreSQL backend store and proxied artifacts.

A sqlite file serves one machine; workers on other nodes (Ray, Slurm) or many concurrent writers
need a server. This one:

* uses the PostgreSQL named by ``--database-uri`` (``postgresql+psycopg://user:password@host:5432/db``,
  a lab's existing database), or else starts a cluster of its own in ``<root>/postgres`` (made
  with ``initdb`` on first use, listening on 127.0.0.1 only, on a free port, password
  authentication with a random password kept in ``<root>/postgres.password``; as root, initdb
  refuses to run, so the cluster runs as the ``postgres`` user);
* starts ``mlflow server --backend-store-uri <db> --serve-artifacts --artifacts-destination
  <root>/artifacts`` on 127.0.0.1 (``bench.store.ui``: one worker, no job-runner processes) and prints the
  ``--tracking-uri`` for ``python -m bench run``. Clients write artifacts (and the checkpoints)
  through the server: workers need no shared filesystem.

Ctrl-C stops the MLflow server, then the cluster it started. Reach it from other nodes through an
SSH tunnel (it has no authentication, hence the loopback binding).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

from bench.errors import BenchError

__all__ = ["LocalPostgres", "postgres_binaries", "serve"]


def postgres_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's
    ``/usr/lib/postgresql/<version>/bin`` (the newest); None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalPostgres:
    """A PostgreSQL cluster of our own in ``datadir``, on ``127.0.0.1:port``.

    ``start()`` creates it on first use (``initdb``), starts it (``pg_ctl``, its own session: a
    terminal's Ctrl-C reaches only the caller, which stops it in order), creates the database
    ``mlflow`` and returns its SQLAlchemy URI; ``stop()`` shuts it down (fast mode)."""

    USER, DATABASE = "vaebench", "mlflow"

    def __init__(self, datadir: Path, port: int | None = None) -> None:
        self.datadir = Path(datadir).absolute()
        self.port = port or free_port()
        self.bin = postgres_binaries()
        if self.bin is None:
            raise BenchError("PostgreSQL is not installed (no initdb): on Debian `apt-get install postgresql`, "
                             "or pass --database-uri of an existing one")
        self.password_file = self.datadir.with_name(self.datadir.name + ".password")
        self._as_postgres = os.geteuid() == 0  # initdb refuses root: run the cluster as postgres

    def _run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        argv = [str(self.bin / cmd[0]), *cmd[1:]]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        try:
            return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)
        except subprocess.CalledProcessError as e:
            raise BenchError(f"{cmd[0]} failed: {(e.stderr or e.stdout).strip()[-2000:]}") from None

    def _own(self, path: Path) -> None:
        if self._as_postgres:
            shutil.chown(path, "postgres", "postgres")

    def start(self) -> str:
        if not (self.datadir / "PG_VERSION").is_file():
            self.datadir.mkdir(parents=True, exist_ok=True)
            self._own(self.datadir)
            self.password_file.write_text(secrets.token_urlsafe(24))
            self.password_file.chmod(0o600)
            self._own(self.password_file)
            writable = ["runuser", "-u", "postgres", "--", "test", "-w", str(self.datadir)]
            if self._as_postgres and subprocess.run(writable, check=False).returncode:
                raise BenchError(f"the postgres user cannot write {self.datadir} (as root, the cluster runs as postgres): "
                                 "choose a --root that it can reach")
            self._run("initdb", "-D", str(self.datadir), "-U", self.USER, f"--pwfile={self.password_file}",
                      "--auth=scram-sha-256", "-E", "UTF8", "--locale=C")
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.datadir}"
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.datadir / "server.log"), "-o", opts, "-w", "start",
                  start_new_session=True)
        password = self.password_file.read_text().strip()
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER, password=password,
                             dbname="postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.DATABASE,)).fetchone():
                conn.execute(f"CREATE DATABASE {self.DATABASE}")
        return f"postgresql+psycopg://{self.USER}:{password}@127.0.0.1:{self.port}/{self.DATABASE}"

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").is_file():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")


def _masked(uri: str) -> str:
    """The database URI without its password, for printing."""
    head, sep, tail = uri.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return uri
    scheme, _, userinfo = head.partition("//")
    return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{tail}"


def serve(port: int = 5000, database_uri: str | None = None, root: Path = Path("mlflow-server")) -> int:
    """Run the server until Ctrl-C / SIGTERM (see the module docstring); the exit code."""
    from bench.store import ui

    if database_uri is not None and not database_uri.startswith("postgresql"):
        raise BenchError(f"--database-uri must be a PostgreSQL URI (postgresql+psycopg://...), got {_masked(database_uri)}")
    try:
        import psycopg  # noqa: F401 - MLflow's PostgreSQL driver
    except ImportError:
        raise BenchError("the server needs psycopg: pip install 'vaebench[server]'") from None
    root = Path(root).absolute()
    pg = None
    if database_uri is None:
        pg = LocalPostgres(root / "postgres")
        database_uri = pg.start()
    try:
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        url = f"http://127.0.0.1:{port}"
        banner = (f"MLflow tracking server on {_masked(database_uri)}, artifacts in {root / 'artifacts'}\n"
                  f"  python -m bench run --tracking-uri {url} ...   (or MLFLOW_TRACKING_URI={url})")
        return ui.serve(database_uri, port=port, artifacts=str(root / "artifacts"), banner=banner)
    finally:
        if pg is not None:
            pg.stop()
