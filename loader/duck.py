"""DuckDB connections with the loader's Extended-JSON macros (loader/sql/bson.sql)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import duckdb

SESSION_SETTINGS = "SET TimeZone = 'UTC'"  # C7: timestamps without offset are UTC
# Every Parquet file the loader writes with DuckDB is zstd at level 1: half the CPU of DuckDB's
# default level 3 for files as small (the 540,000 rows of users_quizzs_links_questions: 0.21
# against 0.42 s, 16.8 against 17.1 MB), and the level of the document parts pyarrow writes.
PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1"
BSON_MACROS = files("loader").joinpath("sql/bson.sql").read_text(encoding="utf-8")


def connect(spill_dir: Path | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the session zone at UTC (C7) and the BSON macros loaded."""
    con = duckdb.connect()
    run(con, SESSION_SETTINGS)
    if spill_dir is not None:
        run(con, f"SET temp_directory = {sql_literal(str(spill_dir))}")
    if memory_limit:
        run(con, f"SET memory_limit = {sql_literal(memory_limit)}")
    run(con, BSON_MACROS)
    return con


def cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Another connection to the same database, for another thread: the tables, views and macros
    are shared, its temporary tables are its own, the session settings are set again (a cursor
    does not inherit them)."""
    other = con.cursor()
    run(other, SESSION_SETTINGS)
    return other


def run(con: duckdb.DuckDBPyConnection, statement: str) -> None:
    """Execute a statement to completion (DuckDB keeps a result pending until it is consumed)."""
    con.execute(statement).fetchall()


def sql_literal(value: str) -> str:
    """A SQL string literal (for identifiers of files and tables composed into DuckDB SQL)."""
    return "'" + value.replace("'", "''") + "'"


def sql_literals(values) -> str:
    """Comma-separated SQL string literals (an IN list)."""
    return ", ".join(sql_literal(v) for v in values)


def sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parquet_source(paths: list[Path]) -> str:
    return "read_parquet([" + ", ".join(sql_literal(str(p)) for p in paths) + "])"
