"""The load's pg_prewarm before a merge that touches much of a table (loader.load.writer.prewarm)."""

from __future__ import annotations

from conftest import connect, create_database
from loader.load.writer import prewarm


def test_a_table_and_its_indexes_are_read_when_the_rows_reach_enough_of_their_pages(postgres):
    with connect(create_database(postgres, "prewarm"), autocommit=True) as conn:
        conn.execute("CREATE TABLE wide (id text PRIMARY KEY, body text)")
        conn.execute("INSERT INTO wide SELECT i::text, repeat('x', 500) FROM generate_series(1, 20000) i")  # about 1,400 pages
        assert prewarm(conn, "wide", rows=1) == [], "one row touches too few of their pages"
        assert prewarm(conn, "wide", rows=20_000_000) == ["wide", "wide_pkey"]  # beyond a 32-bit product of rows and bytes
        conn.execute("DROP EXTENSION pg_prewarm")
        assert prewarm(conn, "wide", rows=20_000_000) == [], "without the extension nothing is read"
