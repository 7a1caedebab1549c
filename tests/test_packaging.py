"""The installed dependencies fit together."""

import subprocess
import sys


def test_pymongoarrow_and_pyarrow_are_a_binary_compatible_pair():
    # pymongoarrow built against another pyarrow prints "size changed" warnings at import.
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import pyarrow, pymongoarrow.api"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "size changed" not in done.stderr and "Warning" not in done.stderr, done.stderr
