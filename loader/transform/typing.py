"""SQL that turns a strategy's documents into typed, checked rows of one table.

For every column: the raw JSON value (mapped field, then fallbacks: C3, C4) and its BSON type,
the converted value (C5-C8, the typed macros of loader/sql/bson.sql), the reject reason of the
value (C6, C10) and a warning (`bad_reference`, C5). A row's `_problem` is its first rejected
column, in column order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from loader.config import Column, Table
from loader.duck import sql_identifier as q
from loader.duck import sql_literal

INTEGER_RANGES = {
    "SMALLINT": (-32768, 32767),
    "INTEGER": (-(2**31), 2**31 - 1),
    "INT": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
}


class TransformError(Exception):
    """A table cannot be transformed (unsupported type, missing parent...)."""


@dataclass(frozen=True)
class ColumnSql:
    value: str  # converted value, NULL when it does not convert
    error: str  # reject reason or NULL; may use v (value), r (raw) and t (its bson_type)
    final: str  # the value in its output type
    warning: str = "NULL"


def column_sql(table: Table, column: Column, timezone: str) -> ColumnSql:
    """Conversion and checks of one column, as SQL over `r` (raw JSON, never a JSON null), `t`
    (its bson_type) and `v` (converted)."""
    base = column.base_type
    lost = "r IS NOT NULL AND v IS NULL"
    not_null = "NULL" if column.nullable else f"CASE WHEN v IS NULL THEN {sql_literal('not_null:' + column.name)} END"

    def error(*checks: str) -> str:
        # The first failing check names the reason; a value that did not convert is a type_error.
        return (f"CASE WHEN t = 'invalidUtf8' THEN 'invalid_utf8' {' '.join(checks)} "
                f"WHEN {lost} THEN 'type_error' ELSE {not_null} END")

    if column.is_reference:
        return ColumnSql(
            value="bson_ref_typed(r, '_id', t)",
            error=not_null,
            final="v",
            warning=f"CASE WHEN {lost} THEN 'bad_reference' END",
        )
    if column.family == "text":
        too_long = f"WHEN length(v) > {column.length} THEN 'value_too_long'" if column.length else ""
        # PostgreSQL text cannot hold NUL characters.
        return ColumnSql(value="bson_to_text_typed(r, t)", error=error("WHEN strpos(v, chr(0)) > 0 THEN 'nul_character'", too_long),
                         final="v")
    if column.family == "integer":
        low, high = INTEGER_RANGES[base]
        # A number that does not fit (Infinity, 1E+400) is out of range; NaN is no number at all.
        beyond = f"WHEN {lost} AND t IN ('int', 'double', 'decimal') AND NOT coalesce(isnan(bson_to_double_typed(r, t)), false)"
        return ColumnSql(
            value="bson_to_integer_typed(r, t)",
            error=error(f"{beyond} THEN 'out_of_range'", f"WHEN v NOT BETWEEN {low} AND {high} THEN 'out_of_range'"),
            final=f"CASE WHEN v BETWEEN {low} AND {high} THEN CAST(v AS {'INTEGER' if base == 'INT' else base}) END",
        )
    converters = {
        "boolean": "bson_to_boolean_typed(r, t)",
        "timestamp": "bson_to_timestamp_typed(r, t)",
        "date": f"bson_to_date_typed(r, t, {sql_literal(timezone)})",
        "number": "bson_to_number_typed(r, t)",
    }
    if column.family not in converters:
        raise TransformError(f"table '{table.name}', column '{column.name}': a {column.sql_type} column is not read from documents")
    # Dates outside years 1..9999 do not convert: type_error (C6).
    return ColumnSql(value=converters[column.family], error=error(), final="v")


def source_columns(table: Table) -> list[Column]:
    """Columns read from the documents: not generated, and not references to a generated key
    (those are staged as their natural key, see `carried_columns`)."""
    return [c for c in table.columns if c.family != "generated" and not c.resolved_at_load]


def carried_columns(table: Table) -> list[str]:
    """Natural-key values of references to a generated key, given by the strategy SQL and
    resolved to the generated id by the load stage."""
    return [name for c in table.columns for name in c.carried().values()]


def staged_columns(table: Table) -> list[str]:
    """The columns of staging/tables/<table>.parquet."""
    return [c.name for c in source_columns(table)] + carried_columns(table)


def typed_rows_sql(table: Table, documents: str, timezone: str, deferred_not_null: tuple[str, ...] = ()) -> str:
    """Typed columns plus `_problem` (first reject) and `_warnings`, from a strategy's documents.

    Columns in `deferred_not_null` may be NULL here: their NOT NULL is checked after merging.
    """
    columns = [replace(c, nullable=True) if c.name in deferred_not_null else c for c in source_columns(table)]
    carried = "".join(f"{q(name)}, " for name in carried_columns(table))
    paths = sorted({field for c in columns for field in c.sources})
    index = {field: i + 1 for i, field in enumerate(paths)}
    path_list = "[" + ", ".join(sql_literal(f'$."{field}"') for field in paths) + "]"

    def raw(c: Column) -> str:
        reads = [f"bson_nn(f[{index[field]}])" for field in c.sources]
        return reads[0] if len(reads) == 1 else f"coalesce({', '.join(reads)})"

    parts = {c.name: column_sql(table, c, timezone) for c in columns}

    def on(c: Column, template: str) -> str:
        # Substitute this column's raw value, its type and its converted value for r, t and v.
        return _substitute(template, {"r": q("r_" + c.name), "t": q("t_" + c.name), "v": q("v_" + c.name)})

    raw_cols = ", ".join(f"{raw(c)} AS {q('r_' + c.name)}" for c in columns)
    type_cols = ", ".join(f"bson_type({q('r_' + c.name)}) AS {q('t_' + c.name)}" for c in columns)
    value_cols = ", ".join(f"{on(c, parts[c.name].value)} AS {q('v_' + c.name)}" for c in columns)
    # Only the columns that can have a reject or a warning are listed in _problem and _warnings
    # (every struct is DuckDB's planning, about a tenth of the typing's in an incremental transform).
    rejecting = [c for c in columns if parts[c.name].error != "NULL"]
    warning = [c for c in columns if parts[c.name].warning != "NULL"]
    check_cols = ", ".join([*(f"{on(c, parts[c.name].error)} AS {q('e_' + c.name)}" for c in rejecting),
                            *(f"{on(c, parts[c.name].warning)} AS {q('w_' + c.name)}" for c in warning)]) or "NULL AS _none"
    final_cols = ", ".join(f"{on(c, parts[c.name].final)} AS {q(c.name)}" for c in columns)
    problems = _first_issue(rejecting, "e_")
    warnings = _issue_list(warning, "w_")
    return f"""
WITH docs AS ({documents}),
raw AS (
    SELECT _source_id, _source_collection, _unit, {carried}{raw_cols}
    FROM (SELECT *, json_extract(d, {path_list}) AS f FROM docs)
),
typed AS (SELECT *, {type_cols} FROM raw),
converted AS (SELECT *, {value_cols} FROM typed),
checked AS (SELECT *, {check_cols} FROM converted)
SELECT _source_id, _source_collection, _unit, {carried}{final_cols},
       {problems} AS _problem,
       {warnings} AS _warnings
FROM checked"""


_ISSUE_TYPE = 'STRUCT("column" VARCHAR, reason VARCHAR, value VARCHAR)'


def _issue_struct(c: Column, prefix: str) -> str:
    return (
        f"{{'column': {sql_literal(c.name)}, 'reason': {q(prefix + c.name)}, "
        f"'value': left(CAST({q('r_' + c.name)} AS VARCHAR), 200)}}"
    )


def _issue_list(columns: list[Column], prefix: str) -> str:
    """The columns' issues (reason not NULL) as a list of structs; built only for the rows that
    have one (most have none, and each struct copies its column's raw value)."""
    if not columns:
        return f"CAST([] AS {_ISSUE_TYPE}[])"
    return f"CASE WHEN {_any_issue(columns, prefix)} THEN {_issues(columns, prefix)} ELSE [] END"


def _first_issue(columns: list[Column], prefix: str) -> str:
    if not columns:
        return f"CAST(NULL AS {_ISSUE_TYPE})"
    return f"CASE WHEN {_any_issue(columns, prefix)} THEN {_issues(columns, prefix)}[1] END"


def _issues(columns: list[Column], prefix: str) -> str:
    items = ", ".join(_issue_struct(c, prefix) for c in columns)
    return f"list_filter([{items}], lambda x: x.reason IS NOT NULL)"


def _any_issue(columns: list[Column], prefix: str) -> str:
    return f"coalesce({', '.join(q(prefix + c.name) for c in columns)}) IS NOT NULL"


def _substitute(template: str, names: dict[str, str]) -> str:
    """Replace the whole-word placeholders (r, t, v) of a column template, outside its string
    literals (a reason such as 'not_null:t' names a column)."""
    words = "|".join(map(re.escape, names))
    return re.sub(rf"'(?:[^']|'')*'|\b({words})\b", lambda m: names[m.group(1)] if m.group(1) else m.group(0), template)
