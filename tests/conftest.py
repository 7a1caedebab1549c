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
    settings = ("MONGODB_", "POSTGRES_", "LOADER_", "SOURCE_TIMEZONE", "BATCH_SIZE", "CONNECT_TIMEOUT")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(settings)}
    return subprocess.run(
        [sys.executable, "-m", "loader", *args],
        cwd=ROOT,
        env={**clean, **env, "COLUMNS": "200"},
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
