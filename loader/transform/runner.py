"""Transform stage: DuckDB SQL over the staged snapshots -> one Parquet file per target table.

Per table, in load order:
  1. the strategy's SQL file (loader/transform/sql/) selects the documents of the table;
  2. the typing step converts and checks every column (loader/transform/typing.py);
  3. foreign keys are checked against the rows accepted for the parent tables (C10): a dangling
     nullable reference is nulled with a warning, a dangling required one rejects the row;
  4. accepted rows go to staging/tables/<table>.parquet, rejects and warnings with their reason
     to staging/issues/<table>.parquet, counts to staging/transform.json.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path

from loader import duck
from loader.config import Column, Config, Table
from loader.duck import sql_identifier as q
from loader.duck import sql_literal
from loader.settings import Settings
from loader.staging import Staging, utc_now
from loader.transform.typing import TransformError, source_columns, typed_rows_sql

SQL_DIR = files("loader.transform").joinpath("sql")


@dataclass
class TableResult:
    table: str
    status: str  # "done" | "pending" (strategy not implemented yet)
    documents: int = 0
    rows: int = 0
    rejected: int = 0
    warnings: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def transform(settings: Settings, config: Config, staging: Staging, tables: list[Table]) -> list[TableResult]:
    con = duck.connect(spill_dir=staging.tmp_dir)
    _register_sources(con, staging, config.collections(tables))
    accepted: dict[str, str] = {}  # table -> relation holding its accepted rows in this run
    results = []
    for table in tables:
        if table.strategy.sql is None:
            results.append(TableResult(table.name, "pending"))
            continue
        results.append(_transform_table(con, settings, staging, table, accepted))
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


def strategy_sql(table: Table) -> str:
    """The strategy's SQL with its placeholders bound to the staged source views."""
    template = SQL_DIR.joinpath(table.strategy.sql).read_text(encoding="utf-8")
    views = {f"src_{c}": q(f"src_{c}") for c in table.sources()}
    return template.format(src=q(f"src_{table.collection}"), collection=sql_literal(table.collection), **views)


def _transform_table(con, settings: Settings, staging: Staging, table: Table, accepted: dict[str, str]) -> TableResult:
    clock = time.perf_counter()
    name = table.name
    documents_sql = strategy_sql(table)
    typed = q(f"typed_{name}")
    duck.run(con, f"CREATE OR REPLACE TEMP TABLE {typed} AS {typed_rows_sql(table, documents_sql, settings.source_timezone)}")
    documents = con.execute(f"SELECT count(*) FROM {typed}").fetchall()[0][0]  # one typed row per document

    checked = q(f"checked_{name}")
    duck.run(con, f"CREATE OR REPLACE TEMP TABLE {checked} AS {_foreign_key_sql(table, typed, staging, accepted)}")

    columns = ", ".join(q(c.name) for c in source_columns(table))
    rows_file = staging.table_file(name)
    _copy_atomically(con, f"SELECT {columns} FROM {checked} WHERE _problem IS NULL", rows_file)
    accepted[name] = f"read_parquet({sql_literal(str(rows_file))})"
    _copy_atomically(con, _issues_sql(table, checked), staging.issues_file(name))

    rows, rejected = con.execute(
        f"SELECT count(*) FILTER (WHERE _problem IS NULL), count(*) FILTER (WHERE _problem IS NOT NULL) FROM {checked}"
    ).fetchall()[0]
    reasons = dict(
        con.execute(
            f"SELECT reason, count(*) FROM read_parquet({sql_literal(str(staging.issues_file(name)))}) GROUP BY reason ORDER BY reason"
        ).fetchall()
    )
    warnings = sum(n for reason, n in reasons.items() if _is_warning(reason))
    duck.run(con, f"DROP TABLE {typed}")
    return TableResult(
        table=name,
        status="done",
        documents=documents,
        rows=rows,
        rejected=rejected,
        warnings=warnings,
        reasons=reasons,
        seconds=round(time.perf_counter() - clock, 3),
    )


WARNING_REASONS = ("bad_reference", "fk_nulled:")


def _is_warning(reason: str) -> bool:
    return reason.startswith(WARNING_REASONS)


def _foreign_key_sql(table: Table, typed: str, staging: Staging, accepted: dict[str, str]) -> str:
    """Null dangling nullable references (warning fk_nulled), reject dangling required ones."""
    checks = [c for c in table.foreign_keys if c.foreign_key.table != table.name]
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
    return f"read_parquet({sql_literal(str(path))})"


def _issues_sql(table: Table, checked: str) -> str:
    """One record per reject (`_problem`) and per warning of an accepted row (C10)."""
    return f"""
SELECT {sql_literal(table.name)} AS "table", _source_collection AS source_collection, _source_id AS source_id,
       'reject' AS kind, _problem.reason AS reason, _problem."column" AS "column", _problem.value AS value
FROM {checked} WHERE _problem IS NOT NULL
UNION ALL
SELECT {sql_literal(table.name)}, _source_collection, _source_id,
       'warning', w.reason, w."column", w.value
FROM (SELECT _source_collection, _source_id, unnest(_warnings) AS w FROM {checked} WHERE _problem IS NULL)
ORDER BY 4, 5, 3"""


def _copy_atomically(con, query: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    duck.run(con, f"COPY ({query}) TO {sql_literal(str(scratch))} (FORMAT parquet, COMPRESSION zstd)")
    os.replace(scratch, path)
