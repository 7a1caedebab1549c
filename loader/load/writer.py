"""Load stage: staged table files -> PostgreSQL, one transaction per table, parents first.

Each table is streamed with COPY (CSV written by DuckDB from the staged Parquet) into a
temporary table, then merged with one set-based statement. A table that fails is rolled back
whole and stops the run (MAPPING.md C12): tables already committed stay committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from loader import duck
from loader.config import Config, Table
from loader.duck import sql_identifier, sql_literal
from loader.progress import ProgressHook
from loader.settings import Settings
from loader.staging import Staging
from loader.strategies import UPSERT_ID
from loader.load.ddl import create_missing_tables

COPY_CHUNK_BYTES = 1 << 20


class DestinationError(Exception):
    """PostgreSQL cannot be reached, or a table could not be written."""


@dataclass
class LoadResult:
    table: str
    status: str  # "done" | "pending" | "failed"
    rows: int = 0  # rows in the staged file
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    seconds: float = 0.0


def connect(settings: Settings) -> psycopg.Connection:
    try:
        return psycopg.connect(**settings.postgres_conninfo())
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DestinationError(f"cannot reach PostgreSQL at {settings.postgres_label()}: {reason}") from None


def load(
    settings: Settings,
    config: Config,
    staging: Staging,
    tables: list[Table],
    on_progress: ProgressHook | None = None,
) -> list[LoadResult]:
    hook = on_progress or ProgressHook()
    schema = settings.postgres_schema
    transformed = staging.read_transform_report()["tables"]
    with connect(settings) as conn:
        create_missing_tables(conn, config, schema)
        con = duck.connect(spill_dir=staging.tmp_dir)
        results = []
        for table in tables:
            if transformed.get(table.name, {}).get("status") != "done" or table.strategy.kind != UPSERT_ID:
                results.append(LoadResult(table.name, "pending"))
                continue
            try:
                results.append(_load_table(conn, con, staging, table, schema, hook))
            except psycopg.Error as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DestinationError(f"table '{table.name}' was not written (rolled back): {message}") from None
        return results


def _load_table(conn: psycopg.Connection, con, staging: Staging, table: Table, schema: str, hook: ProgressHook) -> LoadResult:
    clock = time.perf_counter()
    source = staging.table_file(table.name)
    rows = con.execute(f"SELECT count(*) FROM read_parquet({sql_literal(str(source))})").fetchall()[0][0]
    columns = [c.name for c in table.columns]
    csv_path = staging.tmp_dir / f"{table.name}.csv"
    _write_csv(con, source, columns, csv_path)
    hook.start(table.name, rows)
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE TEMP TABLE _incoming (LIKE {}.{}) ON COMMIT DROP").format(
                    sql.Identifier(schema), sql.Identifier(table.name)
                )
            )
            _copy_csv(conn, csv_path, columns, rows, lambda n: hook.advance(table.name, n))
            inserted, updated = conn.execute(_upsert_by_id_sql(table, schema)).fetchone()
    finally:
        csv_path.unlink(missing_ok=True)
        hook.finish(table.name)
    return LoadResult(
        table=table.name,
        status="done",
        rows=rows,
        inserted=inserted,
        updated=updated,
        unchanged=rows - inserted - updated,
        seconds=round(time.perf_counter() - clock, 3),
    )


def _write_csv(con, source: Path, columns: list[str], target: Path) -> None:
    # FORCE_QUOTE keeps '' (quoted empty string) apart from NULL (unquoted empty) for COPY csv.
    select = ", ".join(sql_identifier(c) for c in columns)
    duck.run(
        con,
        f"COPY (SELECT {select} FROM read_parquet({sql_literal(str(source))})) "
        f"TO {sql_literal(str(target))} (FORMAT csv, HEADER false, FORCE_QUOTE *)",
    )


def _copy_csv(conn: psycopg.Connection, path: Path, columns: list[str], rows: int, advance) -> None:
    statement = sql.SQL("COPY _incoming ({}) FROM STDIN (FORMAT csv)").format(
        sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    total = max(path.stat().st_size, 1)
    reported = 0
    with conn.cursor().copy(statement) as copy, path.open("rb") as stream:
        sent = 0
        while chunk := stream.read(COPY_CHUNK_BYTES):
            copy.write(chunk)
            sent += len(chunk)
            now = rows * sent // total  # progress in rows, estimated from the bytes sent
            advance(now - reported)
            reported = now


def _upsert_by_id_sql(table: Table, schema: str) -> sql.Composed:
    """UPSERT-ID (C14, 5.4): insert, or overwrite every other column; unchanged rows are not rewritten.

    Returns one row: (inserted, updated).
    """
    key = table.primary_key
    columns = [c.name for c in table.columns]
    others = [c for c in columns if c != key]
    ident = sql.Identifier
    target = sql.SQL("{}.{}").format(ident(schema), ident(table.name))
    column_list = sql.SQL(", ").join(map(ident, columns))
    return sql.SQL(
        """WITH merged AS (
    INSERT INTO {target} AS t ({columns})
    SELECT {columns} FROM _incoming
    ON CONFLICT ({key}) DO UPDATE SET {assignments}
    WHERE ({current}) IS DISTINCT FROM ({incoming})
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged"""
    ).format(
        target=target,
        columns=column_list,
        key=ident(key),
        assignments=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(ident(c), ident(c)) for c in others),
        current=sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in others),
        incoming=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(ident(c)) for c in others),
    )
