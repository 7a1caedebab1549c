"""CREATE TABLE statements from the config (MAPPING.md C13): created if absent, never dropped,
with the two extra indexes C13 recommends.

Identifiers are always quoted, so reserved words and odd names work; SQL types are the config's
verbatim types (validated by loader.config).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from loader.config import Config, Table

# The loader's own tables: per target table, the staged state it holds (loader/load/writer.py),
# and the issue log of the rows it holds (staging/issues: rejects, warnings, skips).
SYNC_STATE = "loader_sync_state"
REJECTS = "loader_rejects"
ISSUE_COLUMNS = ("table", "source_collection", "source_id", "kind", "reason", "column", "value")


def create_table_sql(table: Table, schema: str) -> sql.Composed:
    definitions: list[sql.Composable] = []
    for column in table.columns:
        parts = [sql.Identifier(column.name), sql.SQL(column.sql_type)]
        if column.primary_key:
            parts.append(sql.SQL("PRIMARY KEY"))
        elif not column.nullable:
            parts.append(sql.SQL("NOT NULL"))
        definitions.append(sql.SQL(" ").join(parts))
    for column in table.foreign_keys:
        definitions.append(
            sql.SQL("FOREIGN KEY ({}) REFERENCES {}.{} ({})").format(
                sql.Identifier(column.name),
                sql.Identifier(schema),
                sql.Identifier(column.foreign_key.table),
                sql.Identifier(column.foreign_key.column),
            )
        )
    for constraint in table.unique_constraints:
        definitions.append(sql.SQL("UNIQUE ({})").format(sql.SQL(", ").join(map(sql.Identifier, constraint))))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {}.{} (\n    {}\n)").format(
        sql.Identifier(schema), sql.Identifier(table.name), sql.SQL(",\n    ").join(definitions)
    )


def index_columns(table: Table) -> list[str]:
    """Columns worth an index beyond the keys (C13's two recommendations): the column holding
    the unit a run replaces (the parent of a relationship row), and references to a generated key."""
    leading = {table.primary_key, *(constraint[0] for constraint in table.unique_constraints)}
    wanted = [table.strategy.unit_column] + [c.name for c in table.columns if c.resolved_at_load]
    return [c for c in dict.fromkeys(wanted) if c is not None and c not in leading]


def create_index_sql(table: Table, column: str, schema: str) -> sql.Composed:
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {}.{} ({})").format(
        sql.Identifier(f"{table.name}_{column}_idx"), sql.Identifier(schema), sql.Identifier(table.name), sql.Identifier(column)
    )


def table_statements(table: Table, schema: str) -> list[sql.Composed]:
    """What creates a table: the table, then its indexes."""
    return [create_table_sql(table, schema), *(create_index_sql(table, column, schema) for column in index_columns(table))]


def sync_state_table_sql(schema: str) -> sql.Composed:
    """Per table, the staged state PostgreSQL holds (written with the table's rows)."""
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.{} ("
        "table_name TEXT PRIMARY KEY, state TEXT NOT NULL, rows BIGINT NOT NULL, loaded_at TIMESTAMPTZ NOT NULL)"
    ).format(sql.Identifier(schema), sql.Identifier(SYNC_STATE))


def qualified(schema: str, table: str) -> sql.Composed:
    """schema.table, both quoted."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def rejects_table_sql(schema: str) -> sql.Composed:
    """The issue log of staging/issues, per target table as of its last load."""
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {}.{} ("
        '"table" TEXT NOT NULL, source_collection TEXT, source_id TEXT, kind TEXT NOT NULL, reason TEXT NOT NULL, '
        '"column" TEXT, value TEXT)'
    ).format(sql.Identifier(schema), sql.Identifier(REJECTS))


def has_rows(conn: psycopg.Connection, relation: sql.Composable) -> bool:
    return conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(relation)).fetchone()[0]


def existing_tables(conn: psycopg.Connection, schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
    ).fetchall()
    return {name for (name,) in rows}


def create_missing_tables(conn: psycopg.Connection, config: Config, schema: str) -> list[str]:
    """Create the schema and every missing table, parents first, in one transaction."""
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        present = existing_tables(conn, schema)
        created = [t.name for t in config.ordered() if t.name not in present]
        conn.execute(sync_state_table_sql(schema))
        conn.execute(rejects_table_sql(schema))
        for table in config.ordered():
            if table.name in created:
                for statement in table_statements(table, schema):
                    conn.execute(statement)
    return created
