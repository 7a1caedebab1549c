"""Load stage: staged table files -> PostgreSQL, one transaction per table, parents first: the
tables that exist one at a time, the missing ones created and filled LOAD_WORKERS at a time.

PostgreSQL is made to hold exactly the rows of staging/tables/<table>.parquet. Each table's
`loader_sync_state` row names the staged state it holds (a hash of the file), and
staging/loaded/<table>/<state>.parquet keeps a copy of that state, so a run only writes the
difference (incremental):

  unchanged state      nothing is read or written
  incremental          the rows that differ from the loaded state are COPied into a temporary
                       table and merged; identities no longer staged are deleted
  full                 no usable loaded state (first load, forced, or a crash left no copy):
                       every staged row is COPied and merged, every other row is deleted

Merging (C14): insert or update by the row's identity (primary key, else the first unique
constraint), never rewriting an identical row; UPSERT-KEY rows keep their generated id and new
keys are inserted in key order. Deleting a row first deletes (or, for a nullable reference,
nulls) the rows of other tables that reference it, children first, in the same transaction:
they are rows the child tables no longer stage either. The MOMENTS tables are written together
in one transaction (4.6). A table that fails is rolled back whole and stops the run (C12):
tables already committed stay committed, and the next run starts from what they hold.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Hashable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from pgpq import ArrowToPostgresBinaryEncoder
from psycopg import sql

from loader import duck
from loader.config import Column, Config, Table
from loader.duck import sql_identifier, sql_literal
from loader.load.schema import drift as schema_drift
from loader.load.ddl import (ISSUE_COLUMNS, REJECTS, SYNC_STATE, create_missing_tables, create_table_sql, existing_tables, has_rows,
                             key_statements, prepare_schema, qualified as _qualified)
from loader.parallel import in_dependency_order
from loader.progress import ProgressHook
from loader.settings import Settings
from loader.staging import Staging, file_hash
from loader.strategies import MOMENTS, UPSERT_KEY
from loader.transform.typing import staged_columns

COPY_CHUNK_BYTES = 1 << 20
# Rows are sent to a binary COPY in Arrow batches of about COPY_BATCH_BYTES of the source file's
# average row (so a table of large documents' rows goes a few rows at a time), at most COPY_BATCH_ROWS.
COPY_BATCH_BYTES = 32 << 20
COPY_BATCH_ROWS = 65_536
# PostgreSQL types a binary COPY reads from the Arrow form of DuckDB's values, as pgpq encodes it
# (an Arrow string as text, which varchar and char read too). numeric and real are not among
# them: their values are DOUBLEs, which PostgreSQL must round from their decimal text (CSV).
ARROW_TYPES = {
    "text": pa.string(), "character varying": pa.string(), "character": pa.string(),
    "smallint": pa.int16(), "integer": pa.int32(), "bigint": pa.int64(), "boolean": pa.bool_(),
    "date": pa.date32(), "timestamp without time zone": pa.timestamp("us"), "double precision": pa.float64(),
}
ident = sql.Identifier


class DestinationError(Exception):
    """PostgreSQL cannot be reached, or a table could not be written."""


FULL, INCREMENTAL, UNCHANGED, TRUNCATED = "full", "incremental", "unchanged", "truncated"


@dataclass
class LoadResult:
    table: str
    mode: str = UNCHANGED
    rows: int = 0  # rows in the staged file
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    note: str = ""  # e.g. what a TRUNCATE ... CASCADE emptied


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
    force: frozenset[str] = frozenset(),
    truncate: frozenset[str] = frozenset(),
    derived: Mapping[str, Future] | None = None,
) -> list[LoadResult]:
    """Write the staged tables; those in `force` (or with force_reimport) in full, those in
    `truncate` (or with truncate_before_import, only together with force) after TRUNCATE CASCADE.
    A missing table is created in the transaction that fills it, several at a time
    (LOAD_WORKERS); a table that exists is written alone. With `derived` (table -> future
    completed once a transform running alongside has derived it), a table is written once it is
    derived; one that deletes rows first waits until the tables referencing it are derived too
    (deleting its rows reads what they stage)."""
    hook = on_progress or ProgressHook()
    derived = derived or {}
    for table in tables:
        if table.name not in derived and not staging.table_file(table.name).exists():
            raise DestinationError(f"table '{table.name}' has not been transformed yet: run `loader transform` first")
    with connect(settings) as conn:
        refuse_drift(conn, config, settings.postgres_schema, tables)
        new = {t.name for t in tables} - prepare_schema(conn, settings.postgres_schema)
        with _Writers(settings, config, staging, hook, derived) as writers:

            def write(unit: list[Table]) -> list[LoadResult]:
                forced = {t.name for t in unit if t.is_forced(force) or t.name in new}
                truncated = {t.name for t in unit if t.is_forced(force) and (t.name in truncate or t.truncate_before_import)} - new
                try:
                    return writers.mine().write(unit, forced, truncated, new)
                except psycopg.Error as exc:
                    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    names = " and ".join(f"'{t.name}'" for t in unit)
                    raise DestinationError(f"table {names} was not written (rolled back): {message}") from None

            def alone(unit: list[Table]) -> bool:
                return any(t.name not in new for t in unit)

            def needs(unit: list[Table]) -> set[Hashable]:
                # Not the tables referencing it: a table waits for them only if it deletes rows
                # (_Writer.write), so that its upserts do not wait for the last groups derived.
                return {p for t in unit for p in t.parents} | {_derived_name(t.name) for t in unit}

            # New tables by their rows, so that the longest chain starts first; the others, and
            # every table while the transform runs alongside (its rows are not staged yet), in load order.
            written = in_dependency_order(
                _write_units(tables), settings.load_workers, write, thread_name="load",
                names=lambda unit: {t.name for t in unit}, needs=needs, alone=alone,
                weight=lambda unit: 0 if alone(unit) or derived else sum(_staged_rows(staging, t) for t in unit),
                given={_derived_name(name): future for name, future in derived.items()})
        create_missing_tables(conn, config, settings.postgres_schema)  # those this load does not write
        return [result for results in written for result in results]


class _Writers:
    """One writer per load thread, with its own PostgreSQL connection and DuckDB cursor."""

    def __init__(self, settings: Settings, config: Config, staging: Staging, hook: ProgressHook, derived: Mapping[str, Future]):
        self.settings, self.config, self.staging, self.hook, self.derived = settings, config, staging, hook, derived
        self.duck = duck.connect(spill_dir=staging.tmp_dir, memory_limit=settings.duckdb_memory_limit)
        self.local = threading.local()
        self.opened: list[_Writer] = []
        self.lock = threading.Lock()

    def mine(self) -> _Writer:
        if not hasattr(self.local, "writer"):
            self.local.writer = _Writer(connect(self.settings), duck.cursor(self.duck), self.config, self.staging,
                                        self.settings.postgres_schema, self.hook, self.derived)
            with self.lock:
                self.opened.append(self.local.writer)
        return self.local.writer

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, *exc) -> None:
        for writer in self.opened:
            writer.conn.close()
        self.duck.close()


def refuse_drift(conn: psycopg.Connection, config: Config, schema: str, tables: list[Table]) -> None:
    """Stop before writing anything when a table to load differs from the config."""
    drifted = schema_drift(conn, config, schema, tables)
    if drifted:
        listing = "".join(f"\n  {difference}" for difference in drifted)
        raise DestinationError(
            f"the PostgreSQL schema differs from the config ({len(drifted)} differences); nothing was written:{listing}\n"
            "`loader schema diff` shows the SQL of each; `loader schema apply` applies the additive ones")


def plan(settings: Settings, staging: Staging, tables: list[Table], force: frozenset[str] = frozenset()) -> dict[str, str]:
    """What the next load would do per table (read-only)."""
    with connect(settings) as conn:
        loaded = _sync_states(conn, settings.postgres_schema)
        present = existing_tables(conn, settings.postgres_schema)
    return {t.name: _mode(staging, t.name, staging.table_state(t.name), loaded.get(t.name),
                          forced=t.is_forced(force) or t.name not in present) for t in tables}


def _mode(staging: Staging, table: str, state: str | None, loaded: str | None, forced: bool) -> str:
    """How to bring PostgreSQL (holding state `loaded`) to the staged `state`."""
    if forced or loaded is None:
        return FULL
    if loaded == state:
        return UNCHANGED
    return INCREMENTAL if staging.loaded_file(table, loaded).exists() else FULL


def _sync_states(conn: psycopg.Connection, schema: str) -> dict[str, str]:
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}".{SYNC_STATE}']).fetchone()[0]
    if not exists:
        return {}
    return dict(conn.execute(sql.SQL("SELECT table_name, state FROM {}.{}").format(ident(schema), ident(SYNC_STATE))).fetchall())


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


class _Writer:
    def __init__(self, conn: psycopg.Connection, con, config: Config, staging: Staging, schema: str, hook: ProgressHook,
                 derived: Mapping[str, Future]):
        self.conn, self.con, self.config, self.staging, self.schema, self.hook = conn, con, config, staging, schema, hook
        self.derived = derived  # table -> future of a transform running alongside

    def write(self, unit: list[Table], forced: set[str], truncated: set[str], new: set[str]) -> list[LoadResult]:
        """One transaction: upserts parents first, deletes children first, then the sync states.
        A table in `new` (missing) is created and filled before its keys are added."""
        results, states = [], {}
        with self.conn.transaction():
            loaded = _sync_states(self.conn, self.schema)
            notes = {}
            for table in unit:
                if table.name in truncated:
                    cascaded = self._truncate(table)
                    notes[table.name] = f"truncated; cascade emptied: {', '.join(cascaded) or 'none'}"
                    loaded = _sync_states(self.conn, self.schema)
            plans, merged = [], set()
            for table in unit:
                clock = time.perf_counter()
                state = self.staging.table_state(table.name)
                mode = TRUNCATED if table.name in truncated else _mode(self.staging, table.name, state, loaded.get(table.name), table.name in forced)
                result = LoadResult(table.name, mode, rows=_staged_rows(self.staging, table), note=notes.get(table.name, ""))
                if table.name in new:
                    self.conn.execute(create_table_sql(table, self.schema))
                    result.inserted = self._bulk_load(table, key_statements(table, self.schema))
                    states[table.name] = state
                elif mode in (FULL, TRUNCATED) and self._is_empty(table):
                    result.inserted = self._bulk_load(table, self._detach_constraints(_qualified(self.schema, table.name)))
                    states[table.name] = state
                elif mode != UNCHANGED:
                    changes = self.staging.change_file(table.name, loaded.get(table.name), state) if mode == INCREMENTAL else None
                    if changes is not None and changes.exists():
                        self._stage_changes(table, changes)
                    else:
                        baseline = self._staged_baseline(table, loaded.get(table.name)) if mode == INCREMENTAL else None
                        self._stage_incoming(table, baseline)
                        _resolve_generated_keys(self.conn, table, self.schema)
                        self._stage_removed(table, baseline, mode)
                    self._prewarm(table)
                    result.inserted, result.updated = self.conn.execute(_merge_sql(table, self.schema)).fetchone()
                    states[table.name] = state
                    merged.add(table.name)
                result.seconds = time.perf_counter() - clock
                plans.append((table, result))
                results.append(result)
            for table, result in reversed(plans):  # children first
                if table.name in merged and self._any(_removed(table)):
                    self._await_derived(self._cascade(table))
                    clock = time.perf_counter()
                    self._delete_dependants(table, sql.SQL("SELECT * FROM {}").format(_removed(table)), set())
                    result.deleted = self.conn.execute(_delete_removed_sql(table, self.schema)).rowcount
                    result.seconds += time.perf_counter() - clock
            for table in unit:
                issues = file_hash(self.staging.issues_file(table.name)) or ""
                # A run without change writes nothing; a forced one rewrites the rejects too.
                if table.name in forced or loaded.get(_issues_key(table.name), "") != issues:
                    rows = self._replace_issues(table)
                    self.conn.execute(_set_sync_state_sql(self.schema), [_issues_key(table.name), issues, rows])
            for name, state in states.items():
                self._keep_loaded_copy(name, state)
                self.conn.execute(_set_sync_state_sql(self.schema), [name, state, next(r.rows for r in results if r.table == name)])
        for name, state in states.items():
            self._drop_other_copies(name, state)
        for result in results:
            result.unchanged = result.rows - result.inserted - result.updated
            result.seconds = round(result.seconds, 3)
        return results

    # ------------------------------------------------------------ empty table: bulk load
    def _is_empty(self, table: Table) -> bool:
        return not self._any(_qualified(self.schema, table.name))

    def _bulk_load(self, table: Table, attach: list[sql.Composed]) -> int:
        """Fill an empty table without keys, indexes and foreign keys (a new table, or one whose
        own and referencing ones are detached): COPY straight into it (new UPSERT-KEY keys in key
        order), then execute `attach`: PostgreSQL builds each index once, sorted, and checks each
        foreign key in one join instead of once per row (the transform has checked them already);
        twice as fast as maintaining them row by row. A table with a reference to a generated key
        goes through `_incoming_<table>` to resolve it. The rows go in in identity order: the
        first index is then built from sorted rows (three times faster than from unsorted ones),
        and new UPSERT-KEY keys get their ids in key order. Returns the rows written."""
        target = _qualified(self.schema, table.name)
        order = f" ORDER BY {', '.join(map(sql_identifier, table.identity))}" if table.identity else ""
        if any(c.resolved_at_load for c in table.columns):
            self._stage_incoming(table, None)
            _resolve_generated_keys(self.conn, table, self.schema)
            columns = ", ".join(map(sql_identifier, _written_columns(table)))
            rows = self.conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}{}").format(
                target, sql.SQL(columns), sql.SQL(columns), _incoming(table), sql.SQL(order))).rowcount
        else:
            columns = staged_columns(table)
            rows = self._copy(table.name, f"SELECT {', '.join(map(sql_identifier, columns))} FROM {self._staged(table)}{order}",
                              target, columns, self.staging.table_file(table.name), progress=True, total=_staged_rows(self.staging, table))
        for statement in attach:
            self.conn.execute(statement)
        return rows

    def _detach_constraints(self, target: sql.Composed) -> list[sql.Composed]:
        """Drop the table's foreign keys, the foreign keys of other tables referencing it, its
        primary key, unique constraints and other indexes; returns the statements that restore
        them (PostgreSQL's own definitions), keys before the foreign keys that need them."""
        relation = target.as_string(self.conn)
        constraints = self.conn.execute(
            """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype FROM pg_constraint
               WHERE (conrelid = %(t)s::regclass AND contype IN ('f', 'p', 'u')) OR (confrelid = %(t)s::regclass AND contype = 'f')
               ORDER BY contype = 'f' DESC""", {"t": relation}).fetchall()
        indexes = self.conn.execute(
            """SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index
               WHERE indrelid = %s::regclass AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = indexrelid)""",
            [relation]).fetchall()
        for owner, name, _, _ in constraints:  # foreign keys first: they depend on the keys
            self.conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.SQL(owner), ident(name)))
        for index, _ in indexes:
            self.conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(index)))
        added = [(kind == "f", sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(sql.SQL(owner), ident(name), sql.SQL(definition)))
                 for owner, name, definition, kind in constraints]
        return ([statement for foreign, statement in added if not foreign]
                + [sql.SQL(definition) for _, definition in indexes]
                + [statement for foreign, statement in added if foreign])

    # ------------------------------------------------------------ staged rows -> temporary tables
    def _staged(self, table: Table) -> str:
        return f"read_parquet({sql_literal(str(self.staging.table_file(table.name)))})"

    def _staged_baseline(self, table: Table, state: str) -> str:
        return f"read_parquet({sql_literal(str(self.staging.loaded_file(table.name, state)))})"

    def _stage_incoming(self, table: Table, baseline: str | None) -> None:
        """COPY the rows to write into `_incoming_<table>`: every staged row, or those that differ
        from the loaded state."""
        columns = ", ".join(map(sql_identifier, staged_columns(table)))
        query = f"SELECT {columns} FROM {self._staged(table)}"
        if baseline:
            query += f" EXCEPT SELECT {columns} FROM {baseline}"
        self._fill_incoming(table, query, self.staging.table_file(table.name), total=None if baseline else _staged_rows(self.staging, table))

    def _stage_changes(self, table: Table, changes: Path) -> None:
        """`_incoming_<table>` and `_removed_<table>` from what the transform changed since the
        state PostgreSQL holds (Staging.change_file): the whole file is not compared then. The
        file's removed identities include those of rows rejected before as now, which PostgreSQL
        does not hold: they are left out (a table deleting rows waits for its dependants)."""
        source = f"read_parquet({sql_literal(str(changes))})"
        self._fill_incoming(table, f"SELECT {', '.join(map(sql_identifier, staged_columns(table)))} FROM {source} WHERE NOT _removed",
                            changes)
        _resolve_generated_keys(self.conn, table, self.schema)
        self._create_removed(table)
        self._copy(table.name, f"SELECT {', '.join(map(sql_identifier, table.identity))} FROM {source} WHERE _removed",
                   _removed(table), list(table.identity), changes, progress=False)
        self.conn.execute(sql.SQL("DELETE FROM {} AS r WHERE NOT EXISTS (SELECT FROM {} AS t WHERE ({}) = ({}))").format(
            _removed(table), _qualified(self.schema, table.name), _columns_of("t", table.identity), _columns_of("r", table.identity)))

    def _fill_incoming(self, table: Table, query: str, reads: Path, total: int | None = None) -> None:
        """A new `_incoming_<table>` holding the rows of the DuckDB `query` (reading `reads`)."""
        self.conn.execute(_incoming_table_sql(table, self.schema))
        self._copy(table.name, query, _incoming(table), staged_columns(table), reads, progress=True, total=total)

    def _create_removed(self, table: Table) -> None:
        self.conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {}.{} WITH NO DATA").format(
            _removed(table), sql.SQL(", ").join(map(ident, table.identity)), ident(self.schema), ident(table.name)))

    def _stage_removed(self, table: Table, baseline: str | None, mode: str) -> None:
        """`_removed_<table>`: identities PostgreSQL holds that the staged state no longer has."""
        key = table.identity
        self._create_removed(table)
        if mode == TRUNCATED:
            return
        if baseline:
            columns = ", ".join(map(sql_identifier, key))
            self._copy(table.name, f"SELECT {columns} FROM {baseline} EXCEPT SELECT {columns} FROM {self._staged(table)}",
                       _removed(table), list(key), self.staging.table_file(table.name), progress=False)
        else:  # full: everything PostgreSQL holds that is not staged (incoming holds every row)
            self.conn.execute(sql.SQL("INSERT INTO {removed} SELECT {key} FROM {target} EXCEPT SELECT {key} FROM {incoming}").format(
                removed=_removed(table), key=sql.SQL(", ").join(map(ident, key)),
                target=_qualified(self.schema, table.name), incoming=_incoming(table)))

    def _copy(self, name: str, query: str, target: sql.Composable, columns: list[str], reads: Path, progress: bool,
              total: int | None = None) -> int:
        """COPY the rows of a DuckDB query (reading the Parquet file `reads`) into `target`'s
        `columns`; returns their count. In PostgreSQL's binary format, encoded from Arrow batches,
        when every column has an Arrow counterpart (ARROW_TYPES): nothing is formatted as text nor
        parsed back, half the CPU of CSV. Otherwise as CSV written by DuckDB."""
        advance = (lambda n: self.hook.advance(name, n)) if progress else (lambda n: None)
        if progress:
            self.hook.start(name, total)
        try:
            schema = _arrow_schema(self.conn, target, columns)
            if schema is not None:
                return _copy_binary(self.conn, target, self.con.sql(query).to_arrow_reader(_batch_rows(reads)), schema, advance)
            return self._copy_through_csv(name, query, target, columns, advance)
        finally:
            if progress:
                self.hook.finish(name)

    def _copy_through_csv(self, name: str, query: str, target: sql.Composable, columns: list[str], advance) -> int:
        csv_path = self.staging.tmp_dir / f"{name}.csv"
        try:
            rows = _write_csv(self.con, query, csv_path)
            _copy_csv(self.conn, target, csv_path, columns, rows, advance)
        finally:
            csv_path.unlink(missing_ok=True)
        return rows

    def _replace_issues(self, table: Table) -> int:
        """loader_rejects gets the table's current issue log (rows no longer rejected go away)."""
        target = _qualified(self.schema, REJECTS)
        self.conn.execute(sql.SQL('DELETE FROM {} WHERE "table" = %s').format(target), [table.name])
        issues = self.staging.issues_file(table.name)
        if not issues.exists():
            return 0
        columns = ", ".join(map(sql_identifier, ISSUE_COLUMNS))
        return self._copy(f"{table.name}.issues", f"SELECT {columns} FROM read_parquet({sql_literal(str(issues))})",
                          target, list(ISSUE_COLUMNS), issues, progress=False)

    # ------------------------------------------------------------ deletes
    def _await_derived(self, names: list[str]) -> None:
        """Wait until a transform running alongside has derived these tables (raises its error)."""
        for name in names:
            if name in self.derived:
                self.derived[name].result()

    def _delete_dependants(self, table: Table, removed: sql.Composable, seen: set[str]) -> None:
        """Rows of other tables referencing the removed rows: deleted (their own dependants
        first) or, for a nullable reference, nulled."""
        for child, column in _references_to(self.config, table):
            referenced = sql.SQL("SELECT t.{col} FROM {target} AS t WHERE ({key}) IN ({removed})").format(
                col=ident(column.foreign_key.column), target=_qualified(self.schema, table.name),
                key=_columns_of("t", table.identity), removed=removed)
            rows = sql.SQL("SELECT {key} FROM {child} WHERE {column} IN ({referenced})").format(
                key=sql.SQL(", ").join(map(ident, child.identity)),
                child=_qualified(self.schema, child.name), column=ident(column.name), referenced=referenced)
            if column.nullable:
                touched = self.conn.execute(sql.SQL("UPDATE {}.{} SET {} = NULL WHERE {} IN ({})").format(
                    ident(self.schema), ident(child.name), ident(column.name), ident(column.name), referenced)).rowcount
            else:
                if child.name not in seen:
                    self._delete_dependants(child, rows, seen | {child.name})
                touched = self.conn.execute(sql.SQL("DELETE FROM {}.{} WHERE ({}) IN ({})").format(
                    ident(self.schema), ident(child.name), sql.SQL(", ").join(map(ident, child.identity)), rows)).rowcount
            if touched and not self._stages_without(child, table):
                self._forget_sync_state(child.name)

    def _stages_without(self, child: Table, parent: Table) -> bool:
        """The child's staged rows were checked against the parent's staged rows, so they lack
        the rows just deleted or nulled; otherwise its next load must be a full one."""
        checked = self.staging.transform_state().get(child.name, {}).get("parents", {}).get(parent.name)
        return checked is not None and checked == self.staging.table_state(parent.name)

    def _truncate(self, table: Table) -> list[str]:
        """TRUNCATE ... CASCADE (5.8); the emptied tables are loaded in full next time. Returns
        the other tables the cascade emptied."""
        cascaded = self._cascade(table)
        self.conn.execute(sql.SQL("TRUNCATE TABLE {}.{} CASCADE").format(ident(self.schema), ident(table.name)))
        for name in [table.name, *cascaded]:
            self._forget_sync_state(name)
        return cascaded

    def _cascade(self, table: Table) -> list[str]:
        found: list[str] = []
        for child, _ in _references_to(self.config, table):
            if child.name not in found:
                found += [child.name] + [n for n in self._cascade(child) if n not in found and n != child.name]
        return list(dict.fromkeys(found))

    def _forget_sync_state(self, name: str) -> None:
        self.conn.execute(sql.SQL("DELETE FROM {}.{} WHERE table_name = %s").format(ident(self.schema), ident(SYNC_STATE)), [name])

    # ------------------------------------------------------------ loaded copies
    def _keep_loaded_copy(self, name: str, state: str) -> None:
        """Before commit: keep the staged file as the loaded state (a hard link: the transform
        replaces tables/<table>.parquet, never rewrites it)."""
        copy = self.staging.loaded_file(name, state)
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            scratch = copy.with_name(f".{copy.name}.tmp")
            scratch.unlink(missing_ok=True)
            os.link(self.staging.table_file(name), scratch)
            os.replace(scratch, copy)

    def _drop_other_copies(self, name: str, state: str) -> None:
        for old in self.staging.loaded_file(name, state).parent.glob("*.parquet"):
            if old.stem != state:
                old.unlink(missing_ok=True)

    def _prewarm(self, table: Table) -> None:
        """Before a merge: `prewarm` the table for the rows it is to write or delete."""
        rows = self.conn.execute(sql.SQL("SELECT (SELECT count(*) FROM {}) + (SELECT count(*) FROM {})").format(
            _incoming(table), _removed(table))).fetchone()[0]
        prewarm(self.conn, _qualified(self.schema, table.name).as_string(self.conn), rows)

    def _any(self, relation: sql.Composable) -> bool:
        return has_rows(self.conn, relation)


def prewarm(conn: psycopg.Connection, relation: str, rows: int) -> list[str]:
    """Read the table `relation` and its indexes into the operating system's cache, each in one
    sequential pass (pg_prewarm, where the database has that extension), when writing `rows` rows
    is to touch a fair share of their pages (one row per 16 pages or more): rows spread over a
    table read each page they touch on their own, from the disk when it is not cached (a 1% change
    of users_quizzs_questions, 5,400 rows: 1-8 s against 0.1 s for reading its 90 MB first). Not
    a relation larger than a quarter of effective_cache_size, which the reads would push out
    again. Returns the relations read."""
    if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_prewarm'").fetchone():
        return []
    return [name for name, _ in conn.execute(
        """SELECT oid::regclass::text, pg_prewarm(oid, 'read') FROM (
               SELECT oid, pg_relation_size(oid) AS bytes FROM pg_class
               WHERE oid = %(t)s::regclass OR oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %(t)s::regclass)) r
           WHERE bytes <= %(reach)s
             AND bytes * 4 <= (SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'effective_cache_size')
           ORDER BY oid""",
        {"t": relation, "reach": rows * 16 * 8192}).fetchall()]


def _columns_of(alias: str, columns) -> sql.Composed:
    """`alias.column, ...` for a statement's column list."""
    return sql.SQL(", ").join(sql.SQL("{}.{}").format(ident(alias), ident(c)) for c in columns)


def _references_to(config: Config, table: Table) -> list[tuple[Table, Column]]:
    """The other tables' columns referencing `table`."""
    return [(t, c) for t in config.ordered() for c in t.foreign_keys if c.foreign_key.table == table.name and t.name != table.name]


def _derived_name(table: str) -> tuple[str, str]:
    """The name a load unit needs for a table derived alongside (tables and units share names)."""
    return ("derived", table)


def _staged_rows(staging: Staging, table: Table) -> int:
    """The rows of staging/tables/<table>.parquet (from its footer)."""
    return pq.read_metadata(staging.table_file(table.name)).num_rows


def _removed(table: Table) -> sql.Identifier:
    return ident(f"_removed_{table.name}")


def _issues_key(table: str) -> str:
    """The loader_sync_state row naming the issue log loader_rejects holds for `table`."""
    return f"{table}#issues"


def _set_sync_state_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {}.{} (table_name, state, rows, loaded_at) VALUES (%s, %s, %s, now()) "
        "ON CONFLICT (table_name) DO UPDATE SET state = EXCLUDED.state, rows = EXCLUDED.rows, loaded_at = EXCLUDED.loaded_at"
    ).format(ident(schema), ident(SYNC_STATE))


def _incoming(table: Table) -> sql.Identifier:
    return ident(f"_incoming_{table.name}")


def _incoming_table_sql(table: Table, schema: str) -> sql.Composed:
    """A temporary table with the target's columns (no constraints) plus, for references to a
    generated key, the parent's natural-key columns (`<column>__<key>`), typed as in the parent."""
    target = _qualified(schema, table.name)
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


def _arrow_schema(conn: psycopg.Connection, target: sql.Composable, columns: list[str]) -> pa.Schema | None:
    """The Arrow schema `target`'s columns read in a binary COPY, or None when one has none."""
    types = dict(conn.execute(
        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        [target.as_string(conn)]).fetchall())
    fields = [(column, ARROW_TYPES.get(types[column])) for column in columns]
    return None if any(arrow is None for _, arrow in fields) else pa.schema(fields)


def _batch_rows(source: Path) -> int:
    """Rows per Arrow batch: about COPY_BATCH_BYTES of the Parquet file's average (uncompressed) row."""
    metadata = pq.read_metadata(source)
    size = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    return max(1, min(COPY_BATCH_ROWS, COPY_BATCH_BYTES * max(metadata.num_rows, 1) // max(size, 1)))


def _copy_binary(conn: psycopg.Connection, target: sql.Composable, batches, schema: pa.Schema, advance) -> int:
    """COPY ... FROM STDIN (FORMAT binary) of Arrow batches, each cast to `schema` and encoded by pgpq."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(target, sql.SQL(", ").join(map(ident, schema.names)))
    encoder = ArrowToPostgresBinaryEncoder(schema)
    rows = 0
    with conn.cursor().copy(statement) as copy:
        copy.write(encoder.write_header())
        for batch in batches:
            copy.write(encoder.write_batch(batch.cast(schema)))
            rows += batch.num_rows
            advance(batch.num_rows)
        copy.write(encoder.finish())
    return rows


def _write_csv(con, query: str, target: Path) -> int:
    """Write the rows of a DuckDB query as CSV for COPY; returns the row count."""
    # FORCE_QUOTE keeps '' (quoted empty string) apart from NULL (unquoted empty) for COPY csv.
    return con.execute(f"COPY ({query}) TO {sql_literal(str(target))} (FORMAT csv, HEADER false, FORCE_QUOTE *)").fetchall()[0][0]


def _copy_csv(conn: psycopg.Connection, table: sql.Composable, path: Path, columns: list[str], rows: int, advance) -> None:
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
            _columns_of("t", others),
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
        target=_qualified(schema, table.name),
        columns=column_list,
        incoming=_incoming(table),
        key=sql.SQL(", ").join(map(ident, table.identity)),
        action=action,
    )


def _merge_latest_sql(table: Table, schema: str) -> sql.Composed:
    """UPSERT-KEY (5.5): existing keys keep their row (and generated id) and take the staged
    values, merged from every current document of the key (so the greatest timestamps); new
    keys are inserted in key order. Updating first and inserting only absent keys leaves the id
    sequence untouched by known keys. Returns one row: (inserted, updated)."""
    columns = _written_columns(table)
    key = table.natural_key
    target = _qualified(schema, table.name)

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
        assignments=sql.SQL(", ").join(sql.SQL("{} = {}").format(ident(c), sql.SQL("i.{}").format(ident(c))) for c in others),
        same_key=same_key,
        current=_columns_of("t", others),
        new=_columns_of("i", others),
        columns=sql.SQL(", ").join(map(ident, columns)),
        key=sql.SQL(", ").join(map(ident, key)),
    )


def _delete_removed_sql(table: Table, schema: str) -> sql.Composed:
    return sql.SQL("DELETE FROM {}.{} AS t WHERE ({}) IN (SELECT * FROM {})").format(
        ident(schema), ident(table.name), _columns_of("t", table.identity), _removed(table)
    )
