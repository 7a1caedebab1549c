"""DuckDB connections: every connection of a stage, the threads' cursors included, reads an
offset-less timestamp as UTC (C7), whatever the machine's time zone."""

import os
import subprocess
import sys

PROBE = """
from loader import duck
con = duck.connect()
for c in (con, duck.cursor(con)):
    print(c.execute("SELECT epoch(CAST('2024-01-01 00:00:00' AS TIMESTAMPTZ))").fetchone()[0])
"""


def test_connections_and_cursors_read_timestamps_as_utc_in_any_machine_zone():
    env = os.environ | {"TZ": "America/New_York"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1704067200.0", "1704067200.0"]
