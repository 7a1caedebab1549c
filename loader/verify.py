"""`loader verify`: reconcile PostgreSQL with the source, table by table.

The expected rows are derived afresh, independently of the incremental state: a full extract of
MongoDB (or, with `staged`, the staged current view) transformed whole in a staging area of its
own, <staging>/verify. Each side renders every row as one canonical text (the same rendering in
DuckDB and in PostgreSQL, see `_canonical`) and hashes it with md5 in its own engine; DuckDB then
compares the two sides by key: rows missing from PostgreSQL, extra rows, rows whose content
differs, and a checksum per table (md5 of the sorted row hashes).

Source rows the transform rejects are not expected: the rejects explain them, provided
PostgreSQL's loader_rejects records exactly those rejects (compared too).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from loader import duck
from loader.config import Config, Table
from loader.duck import sql_identifier as q
from loader.duck import sql_literal
from loader.extract import mongo
from loader.load import ddl
from loader.progress import ProgressHook
from loader.reasons import REJECT
from loader.settings import Settings
from loader.staging import Staging, write_json_atomically
from loader.transform import runner

SEPARATOR = "chr(31)"  # between the columns of a row's canonical text (unit separator)
NULL_TEXT = "'\\N'"
EXAMPLES_FILE = "differences.json"


@dataclass
class TableCheck:
    table: str
    collections: list[str]
    key: list[str] = field(default_factory=list)  # the columns identifying a row (all of them: none does)
    expected: int = 0  # rows the source gives, after the transform's checks
    rejected: int = 0  # source rows rejected (explained by the rejects)
    actual: int = 0  # rows in PostgreSQL
    missing: int = 0
    extra: int = 0
    changed: int = 0
    rejects_unrecorded: int = 0  # rejects of the source that loader_rejects does not hold, or holds too many
    expected_checksum: str = ""
    actual_checksum: str = ""
    problem: str = ""  # the table cannot be compared (absent from PostgreSQL)
    examples: dict[str, list[str]] = field(default_factory=dict)  # kind of difference -> keys

    @property
    def ok(self) -> bool:
        return not (self.problem or self.missing or self.extra or self.changed or self.rejects_unrecorded)


@dataclass(frozen=True)
class _Compared:
    """A column as compared: its name in the staged table, its family, and how PostgreSQL reads it."""

    name: str
    family: str
    postgres: sql.Composable


def verify(settings: Settings, config: Config, tables: list[Table], conn: psycopg.Connection, staged: bool,
           examples: int = 5, on_progress: ProgressHook | None = None) -> list[TableCheck]:
    """Compare each table of `tables` in PostgreSQL (`conn`) with the rows its source gives."""
    expected = _expected_rows(settings, config, tables, staged, on_progress)
    con = duck.connect(spill_dir=expected.tmp_dir, memory_limit=settings.duckdb_memory_limit)
    schema = settings.postgres_schema
    existing = ddl.existing_tables(conn, schema)
    _record_rejects(conn, con, schema, existing, expected.tmp_dir)
    checks = []
    for table in tables:
        check = TableCheck(table.name, sorted(table.sources()))
        if table.name not in existing:
            check.problem = "table absent from PostgreSQL"
        else:
            _compare_rows(check, table, config, con, conn, schema, expected, examples)
        _compare_rejects(check, con, expected, examples)
        checks.append(check)
    write_json_atomically(expected.root / EXAMPLES_FILE, {c.table: c.examples for c in checks if c.examples})
    return checks


def source_counts(settings: Settings, staging: Staging, collections: list[str]) -> list[tuple[str, int, int]]:
    """Per collection of the verify staging: live documents, documents the extract rejected."""
    con = duck.connect(spill_dir=staging.tmp_dir, memory_limit=settings.duckdb_memory_limit)
    return [(name, con.execute(f"SELECT count(*) FROM ({staging.view_sql(name)})").fetchone()[0],
             sum(s.rejected for s in staging.chain(name))) for name in collections]


def verify_staging(settings: Settings) -> Staging:
    return Staging(Path(settings.staging_dir) / "verify")


# ---------------------------------------------------------------- the expected side

def _expected_rows(settings: Settings, config: Config, tables: list[Table], staged: bool,
                   on_progress: ProgressHook | None) -> Staging:
    """A staging area of its own holding the tables (and their parents) transformed whole from a
    full extract of MongoDB, or from the snapshots of the loader's staging (`staged`)."""
    needed = config.ordered(sorted(_with_parents(config, tables)))
    scratch = verify_staging(settings)
    shutil.rmtree(scratch.root, ignore_errors=True)
    scratch.root.mkdir(parents=True)
    if staged:
        source = Staging(settings.staging_dir)
        (scratch.root / "snapshots").symlink_to((source.root / "snapshots").resolve(), target_is_directory=True)
        shutil.copyfile(source.manifest_path, scratch.manifest_path)
    else:
        collections = list(config.collections(needed))
        mongo.extract(settings, scratch, collections, on_progress, full=set(collections))
    runner.transform(settings, scratch, needed, force=frozenset(t.name for t in needed))
    return scratch


def _with_parents(config: Config, tables: list[Table]) -> set[str]:
    """The tables and every table their foreign keys lead to (the transform checks references
    against the parents' rows)."""
    found: set[str] = set()
    pending = [t.name for t in tables]
    while pending:
        name = pending.pop()
        if name not in found:
            found.add(name)
            pending += [c.foreign_key.table for c in config.tables[name].foreign_keys]
    return found


# ---------------------------------------------------------------- canonical rows

def _canonical(family: str) -> tuple[str, str]:
    """Templates of a value's canonical text over `{v}`: (DuckDB SQL, PostgreSQL SQL), giving the
    same text for the same value."""
    if family == "timestamp":
        return "strftime({v}, '%Y-%m-%d %H:%M:%S.%f')", "to_char({v}, 'YYYY-MM-DD HH24:MI:SS.US')"
    if family == "date":
        return "strftime({v}, '%Y-%m-%d')", "to_char({v}, 'YYYY-MM-DD')"
    if family == "boolean":
        both = "CASE WHEN {v} THEN 'true' WHEN NOT {v} THEN 'false' END"
        return both, both
    if family == "number":  # as PostgreSQL writes a float8: NaN, Infinity, integral values without '.0'
        return ("CASE WHEN isnan({v}) THEN 'NaN' WHEN isinf({v}) THEN CASE WHEN {v} > 0 THEN 'Infinity' ELSE '-Infinity' END "
                "WHEN {v} = trunc({v}) AND abs({v}) < 1e15 THEN CAST(CAST({v} AS BIGINT) AS VARCHAR) "
                "ELSE CAST({v} AS VARCHAR) END"), "CAST(CAST({v} AS float8) AS text)"
    return "CAST({v} AS VARCHAR)", "CAST({v} AS text)"


def _compared_columns(table: Table, config: Config, schema: str) -> tuple[list[_Compared], list[str], list[sql.Composable]]:
    """The columns compared (generated ones excluded; a reference to a generated key compared as
    the parent's natural key, as staged), the key columns among them, and the joins PostgreSQL
    needs to read those natural keys."""
    compared, joins = [], []
    for column in table.columns:
        if column.family == "generated":
            continue
        if not column.resolved_at_load:
            compared.append(_Compared(column.name, column.family, sql.SQL("t.{}").format(sql.Identifier(column.name))))
            continue
        parent = config.tables[column.foreign_key.table]
        alias = sql.Identifier(f"p_{column.name}")
        joins.append(sql.SQL("LEFT JOIN {} AS {} ON {}.{} = t.{}").format(
            ddl.qualified(schema, parent.name), alias, alias, sql.Identifier(column.foreign_key.column), sql.Identifier(column.name)))
        compared += [_Compared(staged, parent.column(key).family, sql.SQL("{}.{}").format(alias, sql.Identifier(key)))
                     for key, staged in column.carried().items()]
    return compared, _key_names(table, compared), joins


def _key_names(table: Table, compared: list[_Compared]) -> list[str]:
    """The compared columns identifying a row: the table's identity (a reference to a generated
    key as its natural key), else every column (the table is a multiset of rows)."""
    names = []
    for key in table.identity:
        column = table.column(key)
        names += list(column.carried().values()) if column.resolved_at_load else [key]
    return names or [c.name for c in compared]


def _row_sql(compared: list[_Compared], keys: list[str]) -> tuple[str, sql.Composable]:
    """(key, hash) of every row: as a DuckDB select list, and as a PostgreSQL one."""
    duck_texts, postgres_texts = {}, {}
    for c in compared:
        duck_template, postgres_template = _canonical(c.family)
        duck_texts[c.name] = f"coalesce({duck_template.format(v=q(c.name))}, {NULL_TEXT})"
        postgres_texts[c.name] = sql.SQL("coalesce({}, {})").format(
            sql.SQL(postgres_template).format(v=c.postgres), sql.SQL(NULL_TEXT))

    def duck_concat(names: list[str]) -> str:
        return f"concat_ws({SEPARATOR}, {', '.join(duck_texts[n] for n in names)})"

    def postgres_concat(names: list[str]) -> sql.Composable:
        return sql.SQL("concat_ws({}, {})").format(sql.SQL(SEPARATOR), sql.SQL(", ").join(postgres_texts[n] for n in names))

    every = [c.name for c in compared]
    duck_select = f"{duck_concat(keys)} AS key, md5({duck_concat(every)}) AS hash"
    postgres_select = sql.SQL("{} AS key, md5({}) AS hash").format(postgres_concat(keys), postgres_concat(every))
    return duck_select, postgres_select


# ---------------------------------------------------------------- comparison

def _compare_rows(check: TableCheck, table: Table, config: Config, con, conn: psycopg.Connection, schema: str,
                  expected: Staging, examples: int) -> None:
    compared, keys, joins = _compared_columns(table, config, schema)
    check.key = keys
    duck_select, postgres_select = _row_sql(compared, keys)
    duck.run(con, f"CREATE OR REPLACE TEMP TABLE expected AS SELECT {duck_select} "
                  f"FROM read_parquet({sql_literal(str(expected.table_file(table.name)))})")
    actual_file = expected.tmp_dir / f"{table.name}.actual.csv"
    query = sql.SQL("SELECT {} FROM {} AS t {}").format(postgres_select, ddl.qualified(schema, table.name), sql.SQL(" ").join(joins))
    _copy_out(conn, query, actual_file)
    duck.run(con, f"CREATE OR REPLACE TEMP TABLE actual AS SELECT * FROM {_csv(actual_file, ('key', 'hash'))}")
    actual_file.unlink()
    duck.run(con, "CREATE OR REPLACE TEMP TABLE only_expected AS SELECT * FROM expected EXCEPT ALL SELECT * FROM actual")
    duck.run(con, "CREATE OR REPLACE TEMP TABLE only_actual AS SELECT * FROM actual EXCEPT ALL SELECT * FROM expected")
    kinds = {
        "missing": "SELECT key FROM only_expected WHERE key NOT IN (SELECT key FROM only_actual)",
        "extra": "SELECT key FROM only_actual WHERE key NOT IN (SELECT key FROM only_expected)",
        "changed": "SELECT DISTINCT key FROM only_expected WHERE key IN (SELECT key FROM only_actual)",
    }
    for kind, keys_sql in kinds.items():
        count, sample = con.execute(f"SELECT count(*), list(key ORDER BY key)[1:{examples}] FROM ({keys_sql})").fetchone()
        setattr(check, kind, count)
        if count:
            check.examples[kind] = [f"{' | '.join(keys)}: {k.replace(chr(31), ' | ')}" for k in sample]
    checksum = "SELECT count(*), coalesce(left(md5(string_agg(hash, '' ORDER BY hash)), 16), '') FROM {}"
    check.expected, check.expected_checksum = con.execute(checksum.format("expected")).fetchone()
    check.actual, check.actual_checksum = con.execute(checksum.format("actual")).fetchone()


def _copy_out(conn: psycopg.Connection, query: sql.Composable, path: Path) -> None:
    with conn.transaction(), conn.cursor() as cursor, path.open("wb") as out:
        with cursor.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)) as copy:
            for block in copy:
                out.write(block)


def _csv(path: Path, columns: tuple[str, ...]) -> str:
    """DuckDB's reading of a CSV file PostgreSQL's COPY wrote (text columns; no sniffing, a file may be empty)."""
    names = ", ".join(f"{sql_literal(c)}: 'VARCHAR'" for c in columns)
    return (f"read_csv({sql_literal(str(path))}, header = false, auto_detect = false, delim = ',', quote = '\"', "
            f"escape = '\"', columns = {{{names}}})")


def _record_rejects(conn: psycopg.Connection, con, schema: str, existing: set[str], tmp: Path) -> None:
    """DuckDB's table `recorded`: the rejects PostgreSQL's loader_rejects holds ("table", source_id, reason)."""
    duck.run(con, 'CREATE TEMP TABLE recorded ("table" VARCHAR, source_id VARCHAR, reason VARCHAR)')
    if ddl.REJECTS in existing:
        path = tmp / "loader_rejects.csv"
        _copy_out(conn, sql.SQL('SELECT "table", source_id, reason FROM {} WHERE kind = {}').format(
            ddl.qualified(schema, ddl.REJECTS), sql.Literal(REJECT)), path)
        duck.run(con, f"INSERT INTO recorded SELECT * FROM {_csv(path, ('table', 'source_id', 'reason'))}")
        path.unlink()


def _compare_rejects(check: TableCheck, con, expected: Staging, examples: int) -> None:
    """Rejects of the fresh transform vs those loader_rejects records for the table."""
    issues = expected.issues_file(check.table)
    fresh = (f"SELECT \"table\", source_id, reason FROM read_parquet({sql_literal(str(issues))}) WHERE kind = '{REJECT}'"
             if issues.exists() else "SELECT * FROM recorded WHERE false")
    held = f"SELECT * FROM recorded WHERE \"table\" = {sql_literal(check.table)}"
    check.rejected = con.execute(f"SELECT count(*) FROM ({fresh})").fetchone()[0]
    differing = f"(({fresh}) EXCEPT ALL ({held})) UNION ALL (({held}) EXCEPT ALL ({fresh}))"
    check.rejects_unrecorded, sample = con.execute(
        f"SELECT count(*), list(source_id || ' ' || reason ORDER BY source_id)[1:{examples}] FROM ({differing})").fetchone()
    if check.rejects_unrecorded:
        check.examples["rejects not as recorded"] = sample
