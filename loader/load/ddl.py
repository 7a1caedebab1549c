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
    """The table with its columns and NOT NULLs; its keys come from key_statements."""
    definitions = [sql.SQL(" ").join([sql.Identifier(c.name), sql.SQL(c.sql_type)] + ([] if c.nullable else [sql.SQL("NOT NULL")]))
                   for c in table.columns]
    return sql.SQL("CREATE TABLE IF NOT EXISTS {}.{} (\n    {}\n)").format(
        sql.Identifier(schema), sql.Identifier(table.name), sql.SQL(",\n    ").join(definitions)
    )


def key_statements(table: Table, schema: str) -> list[sql.Composed]:
    """A table's primary key, unique constraints, indexes, then foreign keys (PostgreSQL's default
    names, as inline constraints get). A table loaded while it is created gets them after its
    rows. The foreign keys go in the order of the tables they reference: adding one locks that
    table until commit, and two loads taking such locks in one order cannot wait for each other."""
    target = qualified(schema, table.name)
    statements = [sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(target, sql.Identifier(c.name))
                  for c in table.columns if c.primary_key]
    statements += [sql.SQL("ALTER TABLE {} ADD UNIQUE ({})").format(target, sql.SQL(", ").join(map(sql.Identifier, constraint)))
                   for constraint in table.unique_constraints]
    statements += [sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
        sql.Identifier(f"{table.name}_{column}_idx"), target, sql.Identifier(column)) for column in index_columns(table)]
    statements += [sql.SQL("ALTER TABLE {} ADD FOREIGN KEY ({}) REFERENCES {} ({})").format(
        target, sql.Identifier(c.name), qualified(schema, c.foreign_key.table), sql.Identifier(c.foreign_key.column))
        for c in sorted(table.foreign_keys, key=lambda c: (c.foreign_key.table, c.name))]
    return statements


def index_columns(table: Table) -> list[str]:
    """Columns worth an index beyond the keys (C13's two recommendations): the column holding
    the unit a run replaces (the parent of a relationship row), and references to a generated key."""
    leading = {table.primary_key, *(constraint[0] for constraint in table.unique_constraints)}
    wanted = [table.strategy.unit_column] + [c.name for c in table.columns if c.resolved_at_load]
    return [c for c in dict.fromkeys(wanted) if c is not None and c not in leading]


def table_statements(table: Table, schema: str) -> list[sql.Composed]:
    """What creates a table: the table, then its keys and indexes."""
    return [create_table_sql(table, schema), *key_statements(table, schema)]


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


def prepare_schema(conn: psycopg.Connection, schema: str) -> set[str]:
    """Create the schema and the loader's own tables; returns the tables present."""
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sync_state_table_sql(schema))
        conn.execute(rejects_table_sql(schema))
        return existing_tables(conn, schema)


def create_missing_tables(conn: psycopg.Connection, config: Config, schema: str) -> None:
    """Create every missing table (empty, with its keys), parents first, in one transaction."""
    with conn.transaction():
        present = existing_tables(conn, schema)
        for table in config.ordered():
            if table.name not in present:
                for statement in table_statements(table, schema):
                    conn.execute(statement)
