"""Load stage: staged table files -> PostgreSQL, one transaction per table, parents first.

Each table is streamed with COPY (CSV written by DuckDB from the staged Parquet) into a
temporary table, then merged with set-based statements according to its strategy (C14):

  UPSERT-ID, DELETE-INSERT, MOMENTS   insert or update by the row's identity (primary key, else
                                      the first unique constraint); unchanged rows are not rewritten
  UPSERT-KEY                          new keys inserted (generated ids assigned), existing keys
                                      keep their row and take the greatest timestamps (5.5)
  scope (DELETE-INSERT, MOMENTS)      rows of the keys in staging/scopes/<table>.parquet that the
                                      run did not produce are deleted, so PostgreSQL mirrors the
                                      parent's current array (5.6) or the moments pass (4.6)

The net effect of delete-and-insert, without rewriting identical rows. The MOMENTS tables are
written together in one transaction (4.6). A table that fails is rolled back whole and stops
the run (C12): tables already committed stay committed.
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
from loader.load.ddl import create_missing_tables
from loader.progress import ProgressHook
from loader.settings import Settings
from loader.staging import Staging
from loader.strategies import MOMENTS, UPSERT_KEY
from loader.transform.typing import staged_columns

COPY_CHUNK_BYTES = 1 << 20
ident = sql.Identifier


class DestinationError(Exception):
    """PostgreSQL cannot be reached, or a table could not be written."""


@dataclass
class LoadResult:
    table: str
    rows: int = 0  # rows in the staged file
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
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
    for table in tables:
        if not staging.table_file(table.name).exists():
            raise DestinationError(f"table '{table.name}' has not been transformed yet: run `loader transform` first")
    with connect(settings) as conn:
        create_missing_tables(conn, config, schema)
        con = duck.connect(spill_dir=staging.tmp_dir)
        results = []
        for unit in _write_units(tables):
            try:
                results.extend(_load_unit(conn, con, staging, unit, schema, hook))
            except psycopg.Error as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                names = " and ".join(f"'{t.name}'" for t in unit)
                raise DestinationError(f"table {names} was not written (rolled back): {message}") from None
        return results


def _write_units(tables: list[Table]) -> list[list[Table]]:
    """One transaction per table, except the MOMENTS tables, written together (4.6)."""
    units: list[list[Table]] = []
    moments: list[Table] = []
    for table in tables:
        if table.strategy.kind == MOMENTS:
            if not moments:
                units.append(moments)
            moments.append(table)
        else:
            units.append([table])
    return units


def _load_unit(conn: psycopg.Connection, con, staging: Staging, unit: list[Table], schema: str, hook: ProgressHook) -> list[LoadResult]:
    results = []
    with conn.transaction():
        for table in unit:
            clock = time.perf_counter()
            rows = _stage_incoming(conn, con, staging, table, schema, hook)
            _resolve_generated_keys(conn, table, schema)
            inserted, updated = conn.execute(_merge_sql(table, schema)).fetchone()
            results.append(LoadResult(table.name, rows, inserted, updated, seconds=time.perf_counter() - clock))
        # Children first, so that a stale moment loses its details before it goes.
        for table, result in reversed(list(zip(unit, results))):
            if table.strategy.scope_column:
                clock = time.perf_counter()
                result.deleted = conn.execute(_delete_stale_sql(table, schema)).rowcount
                result.seconds += time.perf_counter() - clock
    for result in results:
        result.unchanged = result.rows - result.inserted - result.updated
        result.seconds = round(result.seconds, 3)
    return results


def _incoming(table: Table) -> sql.Identifier:
    return ident(f"_incoming_{table.name}")


def _stage_incoming(conn: psycopg.Connection, con, staging: Staging, table: Table, schema: str, hook: ProgressHook) -> int:
    """COPY the staged rows (and the scope, if any) into temporary tables; returns the row count."""
    source = staging.table_file(table.name)
    rows = con.execute(f"SELECT count(*) FROM read_parquet({sql_literal(str(source))})").fetchall()[0][0]
    columns = staged_columns(table)
    conn.execute(_incoming_table_sql(table, schema))
    csv_path = staging.tmp_dir / f"{table.name}.csv"
    _write_csv(con, f"SELECT {', '.join(map(sql_identifier, columns))} FROM read_parquet({sql_literal(str(source))})", csv_path)
    hook.start(table.name, rows)
    try:
        _copy_csv(conn, _incoming(table), csv_path, columns, rows, lambda n: hook.advance(table.name, n))
    finally:
        csv_path.unlink(missing_ok=True)
        hook.finish(table.name)
    if table.strategy.scope_column:
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (key VARCHAR) ON COMMIT DROP").format(_scope(table)))
        scope_csv = staging.tmp_dir / f"{table.name}.scope.csv"
        _write_csv(con, f"SELECT key FROM read_parquet({sql_literal(str(staging.scope_file(table.name)))})", scope_csv)
        try:
            _copy_csv(conn, _scope(table), scope_csv, ["key"], 0, lambda n: None)
        finally:
            scope_csv.unlink(missing_ok=True)
    return rows


def _scope(table: Table) -> sql.Identifier:
    return ident(f"_scope_{table.name}")


def _incoming_table_sql(table: Table, schema: str) -> sql.Composed:
    """A temporary table with the target's columns (no constraints) plus, for references to a
    generated key, the parent's natural-key columns (`<column>__<key>`), typed as in the parent."""
    target = sql.SQL("{}.{}").format(ident(schema), ident(table.name))
    selected = [sql.SQL("t.{}").format(ident(c.name)) for c in table.columns]
    joined = []
    for column in (c for c in table.columns if c.resolved_at_load):
        alias = ident(f"p_{column.name}")
        joined.append(sql.SQL("{}.{} AS {}").format(ident(schema), ident(column.foreign_key.table), alias))
        selected += [sql.SQL("{}.{} AS {}").format(alias, ident(k), ident(staged)) for k, staged in column.carried().items()]
    return sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
        _incoming(table), sql.SQL(", ").join(selected), sql.SQL(", ").join([sql.SQL("{} AS t").format(target), *joined])
    )


def _resolve_generated_keys(conn: psycopg.Connection, table: Table, schema: str) -> None:
    """Fill references to a generated key (users_logbook.id) from the parent's natural key."""
    for column in (c for c in table.columns if c.resolved_at_load):
        fk = column.foreign_key
        match = sql.SQL(" AND ").join(sql.SQL("p.{} = i.{}").format(ident(k), ident(staged)) for k, staged in column.carried().items())
        conn.execute(
            sql.SQL("UPDATE {} AS i SET {} = p.{} FROM {}.{} AS p WHERE {}").format(
                _incoming(table), ident(column.name), ident(fk.column), ident(schema), ident(fk.table), match
            )
        )
        missing = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(_incoming(table), ident(column.name))
        ).fetchone()[0]
        if missing:
            raise DestinationError(
                f"table '{table.name}': {missing} row(s) reference a '{fk.table}' row ({', '.join(fk.natural_key)}) "
                f"that PostgreSQL does not hold; load '{fk.table}' first"
            )


def _write_csv(con, query: str, target: Path) -> None:
    # FORCE_QUOTE keeps '' (quoted empty string) apart from NULL (unquoted empty) for COPY csv.
    duck.run(con, f"COPY ({query}) TO {sql_literal(str(target))} (FORMAT csv, HEADER false, FORCE_QUOTE *)")


def _copy_csv(conn: psycopg.Connection, table: sql.Identifier, path: Path, columns: list[str], rows: int, advance) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(table, sql.SQL(", ").join(map(ident, columns)))
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


def _merge_sql(table: Table, schema: str) -> sql.Composed:
    return _merge_latest_sql(table, schema) if table.strategy.kind == UPSERT_KEY else _upsert_sql(table, schema)


def _written_columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.family != "generated"]


def _upsert_sql(table: Table, schema: str) -> sql.Composed:
    """Insert, or overwrite every other column (the MongoDB side wins, 5.4); unchanged rows are
    not rewritten. Returns one row: (inserted, updated)."""
    columns = _written_columns(table)
    others = [c for c in columns if c not in table.identity]
    column_list = sql.SQL(", ").join(map(ident, columns))
    if others:
        action = sql.SQL("DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(ident(c), ident(c)) for c in others),
            sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in others),
            sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(ident(c)) for c in others),
        )
    else:
        action = sql.SQL("DO NOTHING")
    return sql.SQL(
        """WITH merged AS (
    INSERT INTO {target} AS t ({columns})
    SELECT {columns} FROM {incoming}
    ON CONFLICT ({key}) {action}
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged"""
    ).format(
        target=sql.SQL("{}.{}").format(ident(schema), ident(table.name)),
        columns=column_list,
        incoming=_incoming(table),
        key=sql.SQL(", ").join(map(ident, table.identity)),
        action=action,
    )


def _merge_latest_sql(table: Table, schema: str) -> sql.Composed:
    """UPSERT-KEY (5.5): existing keys keep their row (and generated id) and take the greatest
    timestamps; new keys are inserted in key order. Updating first and inserting only absent
    keys leaves the id sequence untouched by known keys. Returns one row: (inserted, updated)."""
    columns = _written_columns(table)
    key = table.natural_key
    target = sql.SQL("{}.{}").format(ident(schema), ident(table.name))

    def new_value(c: str) -> sql.Composable:
        if c in table.latest_columns:
            return sql.SQL("GREATEST(t.{0}, i.{0})").format(ident(c))
        return sql.SQL("i.{}").format(ident(c))

    others = [c for c in columns if c not in key]
    same_key = sql.SQL(" AND ").join(sql.SQL("t.{0} = i.{0}").format(ident(c)) for c in key)
    return sql.SQL(
        """WITH updated AS (
    UPDATE {target} AS t SET {assignments}
    FROM {incoming} AS i
    WHERE {same_key} AND ({current}) IS DISTINCT FROM ({new})
    RETURNING 1
), inserted AS (
    INSERT INTO {target} ({columns})
    SELECT {columns} FROM {incoming} AS i
    WHERE NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {same_key})
    ORDER BY {key}
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM updated)"""
    ).format(
        target=target,
        incoming=_incoming(table),
        assignments=sql.SQL(", ").join(sql.SQL("{} = {}").format(ident(c), new_value(c)) for c in others),
        same_key=same_key,
        current=sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in others),
        new=sql.SQL(", ").join(new_value(c) for c in others),
        columns=sql.SQL(", ").join(map(ident, columns)),
        key=sql.SQL(", ").join(map(ident, key)),
    )


def _delete_stale_sql(table: Table, schema: str) -> sql.Composed:
    """Rows of the scope's keys that this run did not produce (delete-and-insert, 5.6, 4.6)."""
    return sql.SQL(
        "DELETE FROM {}.{} AS t WHERE t.{} IN (SELECT key FROM {}) "
        "AND NOT EXISTS (SELECT 1 FROM {} AS i WHERE {})"
    ).format(
        ident(schema),
        ident(table.name),
        ident(table.strategy.scope_column),
        _scope(table),
        _incoming(table),
        sql.SQL(" AND ").join(sql.SQL("i.{0} = t.{0}").format(ident(c)) for c in table.identity),
    )
