"""Real servers for the integration tests: a throwaway PostgreSQL cluster and SecantusDB.

Tests drive the `loader` CLI in a subprocess, configured through the environment exactly as a
user's `.env` would, and read the result back from PostgreSQL.
"""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from pymongo import MongoClient

from loader.demo import generator
from loader.demo.servers import MongoServer, PostgresServer

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DATABASE = "smartdiet"
DATASET_SIZE = 3_000
DATASET_SEED = 11


@pytest.fixture(scope="session")
def postgres():
    with PostgresServer(database="postgres_admin") as server:
        yield server


@pytest.fixture(scope="session")
def mongo():
    with MongoServer() as server:
        yield server


@pytest.fixture(scope="session")
def dataset() -> dict[str, list[dict]]:
    return generator.generate(size=DATASET_SIZE, seed=DATASET_SEED)


@pytest.fixture(scope="session")
def source(mongo, dataset) -> dict[str, str]:
    """The generated dataset in SecantusDB; returns the loader's MongoDB settings."""
    with MongoClient(mongo.url) as client:
        generator.insert(client[SOURCE_DATABASE], copy.deepcopy(dataset))
    return {"MONGODB_URL": mongo.url, "MONGODB_DATABASE": SOURCE_DATABASE}


_numbers = itertools.count()


@pytest.fixture
def target(postgres) -> dict[str, str]:
    """A fresh, empty PostgreSQL database; returns the loader's PostgreSQL settings."""
    name = f"target_{next(_numbers)}"
    with psycopg.connect(**postgres.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return {**postgres.env(), "POSTGRES_DATABASE": name}


def run_loader(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`loader <args>` in a subprocess, from the project root, with only the given settings."""
    return subprocess.run(
        [sys.executable, "-m", "loader", *args],
        cwd=ROOT,
        env=loader_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def fetch_rows(settings: dict[str, str], table: str) -> list[dict]:
    with psycopg.connect(
        host=settings["POSTGRES_HOST"], port=settings["POSTGRES_PORT"], dbname=settings["POSTGRES_DATABASE"],
        user=settings["POSTGRES_USER"], row_factory=psycopg.rows.dict_row,
    ) as conn:
        return conn.execute(f'SELECT * FROM "{table}"').fetchall()


# --------------------------------------------------------------------------- shared helpers (test_incremental)

def create_database(postgres, prefix: str = "target") -> dict[str, str]:
    """A fresh, empty PostgreSQL database on the session cluster; returns the loader's settings
    (the `target` fixture, callable several times in one test)."""
    name = f"{prefix}_{next(_numbers)}"
    with psycopg.connect(**postgres.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return {**postgres.env(), "POSTGRES_DATABASE": name}


def connect(settings: dict[str, str], **options) -> psycopg.Connection:
    """A psycopg connection to the database named by the loader's settings."""
    return psycopg.connect(host=settings["POSTGRES_HOST"], port=settings["POSTGRES_PORT"],
                           dbname=settings["POSTGRES_DATABASE"], user=settings["POSTGRES_USER"], **options)


def loader_env(env: dict[str, str]) -> dict[str, str]:
    """The environment `run_loader` gives the loader: ours without loader settings, plus `env`."""
    settings = ("MONGODB_", "POSTGRES_", "LOADER_", "SOURCE_TIMEZONE", "BATCH_SIZE", "CONNECT_TIMEOUT", "WATERMARK_",
                "TRANSFER_", "REMOTE_", "SSH_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(settings)}
    return {**clean, **env, "COLUMNS": "200"}


def start_loader(*args: str, env: dict[str, str], output: Path) -> subprocess.Popen:
    """`loader <args>` started in the background like `run_loader`; stdout and stderr go to the
    file `output` (a pipe nobody reads could fill up and block the loader)."""
    with output.open("w") as stream:
        return subprocess.Popen([sys.executable, "-m", "loader", *args], cwd=ROOT, env=loader_env(env),
                                stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)


# Generated keys differ between two databases loaded alike (users_logbook.id is a SERIAL): rows
# are compared without them, and a reference to such a row is replaced by the row's natural key.
GENERATED_KEYS = {"users_logbook": ("id", ("user_id", "day"))}                  # table: (key, natural key)
REFERENCES_TO_GENERATED_KEYS = {"users_logbooks_moments": ("user_logbook_id", "users_logbook", "user_logbook_key")}


def comparable_rows(conn: psycopg.Connection, table: str) -> list[dict]:
    """The rows of `table` as any two equally loaded databases hold them: users_logbook without
    its generated id; users_logbooks_moments with `user_logbook_key` = the (user_id, day) of its
    users_logbook row instead of `user_logbook_id` (test_pipeline's `_comparable_rows`, for any
    connection)."""
    rows = conn.cursor(row_factory=psycopg.rows.dict_row).execute(f'SELECT * FROM "{table}"').fetchall()
    if table in GENERATED_KEYS:
        generated, _ = GENERATED_KEYS[table]
        return [{k: v for k, v in row.items() if k != generated} for row in rows]
    if table in REFERENCES_TO_GENERATED_KEYS:
        column, parent, replacement = REFERENCES_TO_GENERATED_KEYS[table]
        generated, natural = GENERATED_KEYS[parent]
        selected = ", ".join(f'"{c}"' for c in (generated, *natural))
        keys = {key: tuple(rest) for key, *rest in conn.execute(f'SELECT {selected} FROM "{parent}"').fetchall()}
        return [{**{k: v for k, v in row.items() if k != column}, replacement: keys.get(row[column])} for row in rows]
    return rows
