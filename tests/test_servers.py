"""The throwaway servers of the demo and the benchmark (loader/demo/servers.py)."""

from __future__ import annotations

import psycopg

from loader.demo.servers import PostgresServer


def test_a_throwaway_postgresql_takes_the_settings_it_is_given():
    """The benchmark sizes its server's shared_buffers for the data; other settings keep the defaults."""
    with PostgresServer(database="settings", settings={"shared_buffers": "200MB"}) as server:
        with psycopg.connect(**server.conninfo()) as conn:
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "200MB"
            assert conn.execute("SHOW work_mem").fetchone()[0] == "4MB"
