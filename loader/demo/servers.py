"""Embedded servers for the demo and the tests: a throwaway PostgreSQL cluster and SecantusDB.

PostgreSQL: Debian's server binaries, a fresh cluster in a temporary directory, listening on
127.0.0.1 at a free port, trust authentication for the loopback. `initdb` refuses to run as
root, so when we are root the cluster is owned and run by the `postgres` system user.
"""

from __future__ import annotations

import getpass
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg


class ServerError(Exception):
    """An embedded server could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin_dir() -> Path:
    """Folder of initdb/pg_ctl: $PG_BIN, else the newest /usr/lib/postgresql/<v>/bin."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ServerError(
        "PostgreSQL server binaries not found (install Debian's postgresql package, or set PG_BIN)"
    )


class PostgresServer:
    """A throwaway PostgreSQL cluster; use as a context manager or call start()/stop()."""

    user = "loader"
    password = ""

    def __init__(self, database: str = "smartdiet", base_dir: Path | None = None):
        self.database = database
        self.base_dir = base_dir
        self.host = "127.0.0.1"
        self.port = 0
        self.root: Path | None = None
        self._run_as: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def start(self) -> "PostgresServer":
        bin_dir = postgres_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="loader-pg-", dir=self.base_dir))
        self._run_as = "postgres" if os.geteuid() == 0 else None
        if self._run_as:
            account = pwd.getpwnam(self._run_as)
            os.chmod(self.root, 0o700)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self.port = free_port()
        self._run([bin_dir / "initdb", "-D", self.data_dir, "-U", self.user, "--auth=trust",
                   "--encoding=UTF8", "--locale=C.UTF-8"])
        options = (f"-c listen_addresses={self.host} -p {self.port} -k {self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run([bin_dir / "pg_ctl", "-D", self.data_dir, "-l", self.log_file, "-o", options, "-w", "-t", "60", "start"])
        # pg_prewarm in template1, so in every database created from now on: the load reads a table
        # before a merge that touches much of it (README, load).
        with psycopg.connect(**self.conninfo("template1"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_prewarm")
        with psycopg.connect(**self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            self._run([postgres_bin_dir() / "pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def conninfo(self, database: str | None = None) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "dbname": database or self.database, "user": self.user}

    def env(self) -> dict[str, str]:
        """The loader's settings for this server."""
        return {
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_DATABASE": self.database,
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
        }

    def _run(self, command: list, check: bool = True) -> None:
        command = [str(part) for part in command]
        if self._run_as and self._run_as != getpass.getuser():
            command = ["runuser", "-u", self._run_as, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if check and done.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise ServerError(f"{Path(command[-1]).name if command else ''} failed: {done.stderr.strip() or done.stdout.strip()}\n{log}")

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MongoServer:
    """SecantusDB in-process: a MongoDB wire-protocol server on a free loopback port."""

    def __init__(self, cache_size: str = "1G"):
        from secantus import SecantusDBServer  # optional dependency (extras demo/dev)

        # In memory, the documents, indexes and oplog live in WiredTiger's cache: it bounds the data.
        self._server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=":memory:", cache_size=cache_size)

    @property
    def url(self) -> str:
        return self._server.uri

    def start(self) -> "MongoServer":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> "MongoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
