"""Schema drift: the PostgreSQL tables compared with the config (columns, types, nullability,
primary key, unique constraints, foreign keys).

`loader load` refuses to write into a drifted table; `loader schema diff` lists the differences;
`loader schema apply` applies the additive ones (a missing table, column or constraint) and prints
the SQL for the rest, which may lose or reject data and is left to the user. Types are compared
as PostgreSQL spells them: the config's types are normalized by PostgreSQL itself (a temporary
table declared with them), so `VARCHAR(255)` and `character varying(255)` are the same type.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from loader.config import Config, Table
from loader.load.ddl import has_rows, qualified as _qualified, table_statements

ident = sql.Identifier


class SchemaError(Exception):
    """An additive change could not be applied (for example existing rows violate a new key)."""


@dataclass(frozen=True)
class Difference:
    table: str
    what: str                        # e.g. "column amount: type numeric in PostgreSQL, integer in the config"
    fix: str                         # the SQL that would remove the difference
    additive: bool                   # applied by `loader schema apply`
    missing_table: bool = False      # `loader load` creates missing tables itself: not drift

    def __str__(self) -> str:
        return f"{self.table}: {self.what}"


@dataclass(frozen=True)
class _Shape:
    """A table as PostgreSQL's catalog describes it; constraints by their columns, with their names."""
    columns: dict[str, tuple[str, bool]]                   # name -> (type, not null)
    primary_key: tuple[tuple[str, ...], str] | None        # (columns, constraint name)
    unique: dict[tuple[str, ...], str]
    foreign_keys: dict[str, tuple[tuple[str, str], str]]   # column -> ((table, column), constraint name)


def differences(conn: psycopg.Connection, config: Config, schema: str, tables: list[Table] | None = None) -> list[Difference]:
    """Every difference between the config's tables (all, or `tables`) and the schema, in load order."""
    found: list[Difference] = []
    with conn.transaction():  # read-only; ends here, so the caller's writes get transactions of their own
        actual = _shapes(conn, schema)
        selected = tables or config.ordered()
        types = _expected_types(conn, [table for table in selected if table.name in actual])
        for table in selected:
            if table.name in actual:
                found.extend(_table_differences(conn, table, schema, actual[table.name], types[table.name]))
            else:
                create = _as_text(conn, sql.SQL(";\n").join(table_statements(table, schema)))
                found.append(Difference(table.name, "table missing", create, True, missing_table=True))
    return found


def drift(conn: psycopg.Connection, config: Config, schema: str, tables: list[Table]) -> list[Difference]:
    """The differences that stop `loader load` (a missing table is not one: load creates it)."""
    return [d for d in differences(conn, config, schema, tables) if not d.missing_table]


def apply_additive(conn: psycopg.Connection, found: list[Difference]) -> list[Difference]:
    """Apply the additive differences in one transaction; returns those applied."""
    additive = [d for d in found if d.additive]
    try:
        with conn.transaction():
            for difference in additive:
                conn.execute(difference.fix)
    except psycopg.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SchemaError(f"nothing applied (rolled back): {difference}: {message}") from None
    return additive


def _table_differences(conn, table: Table, schema: str, shape: _Shape, types: dict[str, str]) -> list[Difference]:
    name = _qualified(schema, table.name)
    found: list[Difference] = []
    add = _collector(conn, table, found)
    for column in table.columns:
        expected_not_null = column.primary_key or not column.nullable
        if column.name not in shape.columns:
            definition = sql.SQL("{} {}").format(ident(column.name), sql.SQL(types[column.name]))
            if expected_not_null:
                definition = sql.SQL("{} NOT NULL").format(definition)
            # rows already there would have no value for a NOT NULL column
            add(f"column {column.name} missing", not (expected_not_null and has_rows(conn, name)),
                sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(name, definition))
            continue
        actual_type, not_null = shape.columns[column.name]
        if actual_type != types[column.name]:
            add(f"column {column.name}: type {actual_type} in PostgreSQL, {types[column.name]} in the config", False,
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}::{}").format(
                    name, ident(column.name), sql.SQL(types[column.name]), ident(column.name), sql.SQL(types[column.name])))
        if not_null != expected_not_null:
            wanted, clause = ("NOT NULL", "SET NOT NULL") if expected_not_null else ("nullable", "DROP NOT NULL")
            add(f"column {column.name}: {'NOT NULL' if not_null else 'nullable'} in PostgreSQL, {wanted} in the config", False,
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} " + clause).format(name, ident(column.name)))
    for extra in sorted(set(shape.columns) - set(table.column_names)):
        add(f"column {extra} not in the config", False, sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(name, ident(extra)))
    found.extend(_key_differences(conn, table, schema, shape))
    return found


def _key_differences(conn, table: Table, schema: str, shape: _Shape) -> list[Difference]:
    name = _qualified(schema, table.name)
    found: list[Difference] = []
    add = _collector(conn, table, found)

    def drop(constraint: str) -> sql.Composable:
        return sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(name, ident(constraint))

    expected_pk = (table.primary_key,) if table.primary_key else None
    actual_pk, pk_name = shape.primary_key or (None, None)
    if actual_pk != expected_pk:
        statements = [drop(pk_name)] if pk_name else []
        if expected_pk:
            statements.append(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(name, ident(table.primary_key)))
        add(f"primary key ({', '.join(actual_pk or ())}) in PostgreSQL, ({table.primary_key or ''}) in the config",
            actual_pk is None, *statements)
    expected_unique = set(table.unique_constraints)
    for columns in sorted(expected_unique - set(shape.unique)):
        add(f"unique ({', '.join(columns)}) missing", True,
            sql.SQL("ALTER TABLE {} ADD UNIQUE ({})").format(name, sql.SQL(", ").join(map(ident, columns))))
    for columns in sorted(set(shape.unique) - expected_unique):
        add(f"unique ({', '.join(columns)}) not in the config", False, drop(shape.unique[columns]))
    expected_fks = {c.name: (c.foreign_key.table, c.foreign_key.column) for c in table.foreign_keys}
    for column, target in sorted(expected_fks.items()):
        actual, fk_name = shape.foreign_keys.get(column, (None, None))
        if column in shape.columns and actual != target:  # a missing column is reported as such
            statements = [drop(fk_name)] if fk_name else []
            statements.append(sql.SQL("ALTER TABLE {} ADD FOREIGN KEY ({}) REFERENCES {} ({})").format(
                name, ident(column), _qualified(schema, target[0]), ident(target[1])))
            now = f", {actual[0]}({actual[1]}) in PostgreSQL" if actual else " missing"
            add(f"foreign key {column} -> {target[0]}({target[1]}){now}", actual is None, *statements)
    for column in sorted(set(shape.foreign_keys) - set(expected_fks)):
        (target, target_column), fk_name = shape.foreign_keys[column]
        add(f"foreign key {column} -> {target}({target_column}) not in the config", False, drop(fk_name))
    return found


def _collector(conn: psycopg.Connection, table: Table, found: list[Difference]):
    """add(what, additive, *statements): record a difference of `table` and the SQL that removes it."""
    def add(what: str, additive: bool, *statements: sql.Composable) -> None:
        found.append(Difference(table.name, what, _as_text(conn, sql.SQL(";\n").join(statements)), additive))
    return add


def _expected_types(conn: psycopg.Connection, tables: list[Table]) -> dict[str, dict[str, str]]:
    """Per table, the config's column types as PostgreSQL spells them (declared in temporary
    tables, rolled back; one catalog query for all)."""
    temporary = {f"loader_expected_{i}": table for i, table in enumerate(tables)}
    with conn.transaction(force_rollback=True):
        for name, table in temporary.items():
            columns = sql.SQL(", ").join(sql.SQL("{} {}").format(ident(c.name), sql.SQL(c.sql_type)) for c in table.columns)
            conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} ({})").format(ident(name), columns))
        rows = conn.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE c.relnamespace = pg_my_temp_schema() AND c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            [list(temporary)],
        ).fetchall()
    expected: dict[str, dict[str, str]] = {table.name: {} for table in tables}
    for name, column, type_ in rows:
        expected[temporary[name].name][column] = type_
    return expected


def _shapes(conn: psycopg.Connection, schema: str) -> dict[str, _Shape]:
    columns: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, column, type_, not_null in conn.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        [schema],
    ):
        columns.setdefault(table, {})[column] = (type_, not_null)
    keys: dict[str, dict[str, list]] = {t: {"p": [], "u": [], "f": []} for t in columns}
    for table, kind, constraint, own, target, target_columns in conn.execute(
        "SELECT c.relname, con.contype, con.conname, "
        "  ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(num, pos) "
        "        JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num ORDER BY k.pos), "
        "  t.relname, "
        "  ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(num, pos) "
        "        JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num ORDER BY k.pos) "
        "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_class t ON t.oid = con.confrelid "
        "WHERE n.nspname = %s AND con.contype IN ('p', 'u', 'f') ORDER BY con.conname",
        [schema],
    ):
        if table in keys:
            keys[table][kind].append((tuple(own), constraint, target, tuple(target_columns or ())))
    return {
        table: _Shape(
            columns=columns[table],
            primary_key=next(((own, constraint) for own, constraint, _, _ in keys[table]["p"]), None),
            unique={own: constraint for own, constraint, _, _ in keys[table]["u"]},
            foreign_keys={own[0]: ((target, target_columns[0]), constraint)
                          for own, constraint, target, target_columns in keys[table]["f"] if len(own) == 1},
        )
        for table in columns
    }


def _as_text(conn: psycopg.Connection, statement: sql.Composable) -> str:
    return statement.as_string(conn)
