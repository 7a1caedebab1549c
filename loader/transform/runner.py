"""Transform stage: DuckDB SQL over the staged snapshots -> one Parquet file per target table.

Per table, in load order:
  1. the strategy's SQL file (loader/transform/sql/) selects the table's records: one small JSON
     document per future row, or a record without row (`_dropped`: a skip or a warning);
  2. the typing step converts and checks every column (loader/transform/typing.py);
  3. foreign keys are checked against the rows accepted for the parent tables (C10): a dangling
     nullable reference is nulled with a warning, a dangling required one rejects the row;
  4. UPSERT-KEY tables merge their rows per key with the "latest timestamps" rule (5.5);
  5. accepted rows go to staging/tables/<table>.parquet, rejects, skips and warnings with their
     reason to staging/issues/<table>.parquet, the keys whose rows the load replaces to
     staging/scopes/<table>.parquet, counts to staging/transform.json.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path

from loader import duck
from loader.config import Column, Config, Table
from loader.duck import sql_identifier as q
from loader.duck import sql_literal
from loader.reasons import REJECT, SKIP, WARNING, kind_sql
from loader.settings import Settings
from loader.staging import Staging, utc_now
from loader.transform.typing import TransformError, staged_columns, typed_rows_sql

SQL_DIR = files("loader.transform").joinpath("sql")


@dataclass
class TableResult:
    table: str
    documents: int = 0  # source documents (parents, candidates) the table was derived from
    rows: int = 0
    rejected: int = 0
    skipped: int = 0
    warnings: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def transform(settings: Settings, config: Config, staging: Staging, tables: list[Table]) -> list[TableResult]:
    con = duck.connect(spill_dir=staging.tmp_dir)
    _register_sources(con, staging, config.collections(tables))
    accepted: dict[str, str] = {}  # table -> relation holding its accepted rows in this run
    prepared: set[str] = set()  # shared passes already run (moments_pass.sql)
    results = [_transform_table(con, settings, staging, table, accepted, prepared) for table in tables]
    previous = staging.read_transform_report()["tables"] if staging.transform_report_path.exists() else {}
    staging.write_transform_report(
        {
            "finished_at": utc_now().isoformat(),
            "source_timezone": settings.source_timezone,
            "tables": previous | {r.table: asdict(r) for r in results},
        }
    )
    return results


def _register_sources(con, staging: Staging, collections: dict[str, set[str]]) -> None:
    for collection in collections:
        duck.run(con, 
            f"CREATE OR REPLACE VIEW {q('src_' + collection)} AS "
            f"SELECT * FROM {duck.parquet_source(staging.current_parts(collection))}"
        )


def placeholders(table: Table, staging: Staging, accepted: dict[str, str], timezone: str) -> dict[str, str]:
    """Values of the placeholders of a strategy's SQL: {src} and {src_<collection>} (staged
    sources), {collection}, {timezone}, {parent_<table>} (accepted rows of a referenced table)
    and, for relationship strategies, {arrays}, {parent_column}, {element_column}, {element_date}."""
    strategy = table.strategy
    values = {
        "src": q(f"src_{table.collection}"),
        "collection": sql_literal(table.collection),
        "timezone": sql_literal(timezone),
        **{f"src_{c}": q(f"src_{c}") for c in table.sources()},
        **{f"parent_{c.foreign_key.table}": _parent_rows(c, staging, accepted) for c in table.foreign_keys},
    }
    if strategy.arrays:
        values |= {
            "arrays": ", ".join(
                f"({sql_literal(a.name)}, {sql_literal(a.key)}, CAST({sql_literal(json.dumps(a.constants))} AS JSON))"
                for a in strategy.arrays
            ),
            "parent_column": sql_literal(strategy.parent_column),
            "element_column": sql_literal(strategy.element_column),
            "element_date": "true" if strategy.element_date else "false",
        }
    return values


def sql_file(name: str, values: dict[str, str]) -> str:
    return SQL_DIR.joinpath(name).read_text(encoding="utf-8").format(**values)


def _transform_table(
    con, settings: Settings, staging: Staging, table: Table, accepted: dict[str, str], prepared: set[str]
) -> TableResult:
    clock = time.perf_counter()
    name, strategy = table.name, table.strategy
    values = placeholders(table, staging, accepted, settings.source_timezone)
    if strategy.prepare and strategy.prepare not in prepared:
        duck.run(con, sql_file(strategy.prepare, values))
        prepared.add(strategy.prepare)

    records = q(f"records_{name}")
    duck.run(con, f"CREATE OR REPLACE TEMP TABLE {records} AS {sql_file(strategy.sql, values)}")
    typed = q(f"typed_{name}")
    rows_sql = typed_rows_sql(table, f"SELECT * FROM {records} WHERE _dropped IS NULL", settings.source_timezone, table.latest_columns)
    duck.run(con, f"CREATE OR REPLACE TEMP TABLE {typed} AS {rows_sql}")
    checked = q(f"checked_{name}")
    duck.run(con, f"CREATE OR REPLACE TEMP TABLE {checked} AS {_merge_check_sql(table, _foreign_key_sql(table, typed, staging, accepted))}")

    rows_file = staging.table_file(name)
    _copy_atomically(con, _accepted_rows_sql(table, checked), rows_file)
    accepted[name] = _read(rows_file)
    _copy_atomically(con, _issues_sql(table, checked, records), staging.issues_file(name))
    if strategy.scope_sql:
        _copy_atomically(con, strategy.scope_sql.format(**values), staging.scope_file(name))
        documents = _count(con, _read(staging.scope_file(name)))
    else:
        documents = _count(con, records)

    kinds = dict(con.execute(f"SELECT kind, count(*) FROM {_read(staging.issues_file(name))} GROUP BY kind").fetchall())
    reasons = dict(
        con.execute(f"SELECT reason, count(*) FROM {_read(staging.issues_file(name))} GROUP BY reason ORDER BY reason").fetchall()
    )
    for relation in (records, typed, checked):
        duck.run(con, f"DROP TABLE {relation}")
    return TableResult(
        table=name,
        documents=documents,
        rows=_count(con, _read(rows_file)),
        rejected=kinds.get(REJECT, 0),
        skipped=kinds.get(SKIP, 0),
        warnings=kinds.get(WARNING, 0),
        reasons=reasons,
        seconds=round(time.perf_counter() - clock, 3),
    )


def _count(con, relation: str) -> int:
    return con.execute(f"SELECT count(*) FROM {relation}").fetchall()[0][0]


def _read(path: Path) -> str:
    return f"read_parquet({sql_literal(str(path))})"


def _foreign_key_sql(table: Table, typed: str, staging: Staging, accepted: dict[str, str]) -> str:
    """Null dangling nullable references (warning fk_nulled), reject dangling required ones."""
    # References to a generated key are checked by the strategy (moments: no_users_logbook_match).
    checks = [c for c in table.foreign_keys if c.foreign_key.table != table.name and not c.resolved_at_load]
    if not checks:
        return f"SELECT * FROM {typed}"
    replaced, problems, warnings = [], [], []
    for column in checks:
        ok = f"({q(column.name)} IS NULL OR {q(column.name)} IN (SELECT {q(column.foreign_key.column)} FROM {_parent_rows(column, staging, accepted)}))"

        def issue(reason: str) -> str:
            return f"{{'column': {sql_literal(column.name)}, 'reason': {sql_literal(reason)}, 'value': CAST({q(column.name)} AS VARCHAR)}}"

        if column.nullable:
            replaced.append(f"CASE WHEN {ok} THEN {q(column.name)} END AS {q(column.name)}")
            warnings.append(f"CASE WHEN NOT {ok} THEN {issue('fk_nulled:' + column.name)} END")
        else:
            problems.append(f"CASE WHEN NOT {ok} THEN {issue('fk_missing:' + column.name)} END")
    replace = f" REPLACE ({', '.join(replaced)})" if replaced else ""
    problem = f"coalesce(_problem, {', '.join(problems)})" if problems else "_problem"
    warning = (
        f"list_concat(_warnings, list_filter([{', '.join(warnings)}], lambda x: x IS NOT NULL))" if warnings else "_warnings"
    )
    # Foreign keys are only checked on rows that passed the column checks.
    return f"""
SELECT * EXCLUDE (_problem, _warnings){replace},
       {problem} AS _problem,
       CASE WHEN _problem IS NULL THEN {warning} ELSE _warnings END AS _warnings
FROM {typed}"""


def _parent_rows(column: Column, staging: Staging, accepted: dict[str, str]) -> str:
    parent = column.foreign_key.table
    if parent in accepted:
        return accepted[parent]
    path = staging.table_file(parent)
    if not path.exists():
        raise TransformError(f"column '{column.name}' references '{parent}', which has not been transformed yet")
    return _read(path)


def _merge_check_sql(table: Table, checked: str) -> str:
    """UPSERT-KEY (5.5): a key whose merged timestamps are all NULL rejects each of its rows."""
    if not table.latest_columns:
        return checked
    key = ", ".join(q(c) for c in table.natural_key)
    problems = ", ".join(
        f"CASE WHEN max(CASE WHEN _problem IS NULL THEN {q(c)} END) OVER (PARTITION BY {key}) IS NULL "
        f"THEN {{'column': {sql_literal(c)}, 'reason': {sql_literal('not_null:' + c)}, 'value': CAST(NULL AS VARCHAR)}} END"
        for c in table.latest_columns
    )
    return f"SELECT * REPLACE (coalesce(_problem, {problems}) AS _problem) FROM ({checked})"


def _accepted_rows_sql(table: Table, checked: str) -> str:
    """The rows to load; UPSERT-KEY rows merged per key with the greatest timestamps (5.5)."""
    columns = staged_columns(table)
    if not table.latest_columns:
        return f"SELECT {', '.join(map(q, columns))} FROM {checked} WHERE _problem IS NULL"
    latest = table.latest_columns
    order = f"row({', '.join(q(c) for c in latest)}, _source_id)"
    merged = [
        q(c) if c in table.natural_key else f"max({q(c)}) AS {q(c)}" if c in latest else f"arg_max({q(c)}, {order}) AS {q(c)}"
        for c in columns
    ]
    return f"SELECT {', '.join(merged)} FROM {checked} WHERE _problem IS NULL GROUP BY {', '.join(q(c) for c in table.natural_key)}"


def _issues_sql(table: Table, checked: str, records: str) -> str:
    """One record per reject (`_problem`), per warning of an accepted row, and per record the
    strategy dropped (a skip or a warning, C10, 4.8)."""
    name = sql_literal(table.name)
    return f"""
SELECT {name} AS "table", _source_collection AS source_collection, _source_id AS source_id,
       'reject' AS kind, _problem.reason AS reason, _problem."column" AS "column", _problem.value AS value
FROM {checked} WHERE _problem IS NOT NULL
UNION ALL
SELECT {name}, _source_collection, _source_id, 'warning', w.reason, w."column", w.value
FROM (SELECT _source_collection, _source_id, unnest(_warnings) AS w FROM {checked} WHERE _problem IS NULL)
UNION ALL
SELECT {name}, _source_collection, _source_id, {kind_sql("_dropped")}, _dropped, NULL, left(CAST(d AS VARCHAR), 200)
FROM {records} WHERE _dropped IS NOT NULL
ORDER BY 4, 5, 3"""


def _copy_atomically(con, query: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    duck.run(con, f"COPY ({query}) TO {sql_literal(str(scratch))} (FORMAT parquet, COMPRESSION zstd)")
    os.replace(scratch, path)
