"""loader_rejects: the issue log of staging/issues in PostgreSQL, replaced by each load."""

from __future__ import annotations

import re
from collections import Counter

import duckdb
from bson import ObjectId

import test_incremental
from conftest import run_loader
from test_incremental import Target

generated_source = test_incremental.generated_source  # fixture: the dataset in a database of the test's own


def _staged_issues(target: Target) -> Counter:
    return Counter(duckdb.sql(
        f"SELECT \"table\", source_id, kind, reason FROM read_parquet('{target.staging}/issues/*.parquet')").fetchall())


def _loaded_issues(target: Target) -> Counter:
    return Counter(target.query('SELECT "table", source_id, kind, reason FROM loader_rejects'))


def test_loader_rejects_holds_the_current_issue_log(generated_source, target, tmp_path):
    loader = Target({**generated_source.env, **target}, tmp_path / "staging")
    loader.loader("run")
    loaded = _loaded_issues(loader)
    assert loaded == _staged_issues(loader)
    rejected = sorted((table, source_id) for (table, source_id, kind, _), _ in loaded.items()
                      if kind == "reject" and table == "users" and source_id)
    assert rejected, "the generated dataset has rejected users"

    table, source_id = rejected[0]
    reason = next(key[3] for key in loaded if key[:2] == (table, source_id))
    listed = run_loader("report", "--staging", str(loader.staging), "--table", table, "--reason", reason, env={})
    assert listed.returncode == 0, listed.stderr
    assert source_id in listed.stdout
    counted = sum(n for key, n in loaded.items() if key[0] == table and key[3] == reason)
    assert re.search(rf"{re.escape(reason)}\s*│\s*{counted}\s*│", listed.stdout), listed.stdout

    generated_source.db.users.delete_one({"_id": ObjectId(source_id)})
    loader.loader("run")
    after = _loaded_issues(loader)
    assert after == _staged_issues(loader)
    assert not [key for key in after if key[:2] == (table, source_id)], "the deleted document's reject stayed"
    assert sum(after.values()) < sum(loaded.values())
