"""`loader rebuild`, `loader plan` and `loader snapshots`: state inspection and rebuilds from the
staged snapshots, without MongoDB."""

from __future__ import annotations

import json
import signal

from conftest import ROOT, connect, fetch_rows, run_loader, start_loader
from test_incremental import BACKEND_EXIT_TIMEOUT, wait_until_gone, waiting_backend

NO_MONGODB = {"MONGODB_URL": "mongodb://127.0.0.1:9", "CONNECT_TIMEOUT": "1"}


def _execute(env: dict[str, str], statement: str) -> None:
    with connect(env, autocommit=True) as conn:
        conn.execute(statement)


def test_rebuild_restores_hand_edited_tables_without_mongodb(source, target, tmp_path):
    env = {**source, **target}
    staging = str(tmp_path / "staging")
    assert run_loader("run", "--staging", staging, "--no-progress", env=env).returncode == 0
    users = sorted(fetch_rows(env, "users"), key=lambda r: r["id"])
    user_events = len(fetch_rows(env, "user_events"))
    _execute(env, "DELETE FROM user_events")
    _execute(env, "UPDATE users SET firstname = 'edited by hand'")

    # An incremental load sees no staged change and leaves the hand edits alone...
    assert run_loader("load", "--staging", staging, "--no-progress", env=env).returncode == 0
    assert len(fetch_rows(env, "user_events")) == 0
    # ... a rebuild re-derives from the staged snapshots (MongoDB unreachable) and loads in full.
    result = run_loader("rebuild", "--staging", staging, "--no-progress", env={**env, **NO_MONGODB})
    assert result.returncode == 0, result.stderr
    assert sorted(fetch_rows(env, "users"), key=lambda r: r["id"]) == users
    assert len(fetch_rows(env, "user_events")) == user_events
    assert "full" in result.stdout


def test_plan_and_snapshots_describe_the_next_run(source, target, tmp_path):
    env = {**source, **target}
    staging = tmp_path / "staging"
    first = run_loader("plan", "--staging", str(staging), env=env)
    assert first.returncode == 0, first.stderr
    assert "full (first extract)" in first.stdout and "full (first transform)" in first.stdout

    assert run_loader("run", "--staging", str(staging), "--no-progress", env=env).returncode == 0
    after = run_loader("plan", "--staging", str(staging), env=env)
    assert "delta since" in after.stdout and "incremental" in after.stdout and "unchanged" in after.stdout
    assert "deletions: change stream" in after.stdout  # SecantusDB keeps one; the run recorded its position
    forced = run_loader("plan", "--staging", str(staging), "--table", "users", "--force-reimport", env=env)
    assert "full (forced)" in forced.stdout
    # users forced in the mapping: its collection is staged whole, so user_events, which reads it
    # and is not forced, is re-derived whole too.
    mapping = (ROOT / "config" / "schemas.yaml").read_text()
    forced_config = tmp_path / "forced.yaml"
    forced_config.write_text(mapping.replace("\n  users:\n", "\n  users:\n    force_reimport: true\n", 1))
    by_config = run_loader("plan", "--staging", str(staging), "--config", str(forced_config),
                           "--table", "users", "--table", "user_events", env=env)
    assert by_config.returncode == 0, by_config.stderr
    assert "full (new full snapshot of users)" in by_config.stdout, by_config.stdout

    listing = run_loader("snapshots", "--staging", str(staging), env=env)
    assert listing.returncode == 0, listing.stderr
    manifest = json.loads((staging / "manifest.json").read_text())
    assert all(history[0]["kind"] == "full" for history in manifest["collections"].values())
    assert "users" in listing.stdout and "full" in listing.stdout


def test_truncate_needs_force_reimport(target, tmp_path):
    result = run_loader("load", "--staging", str(tmp_path), "--truncate", env=target)
    assert result.returncode == 1
    assert "--truncate only applies together with --force-reimport" in result.stderr


def _catalog(env: dict[str, str], table: str) -> list[tuple]:
    """The constraints and indexes PostgreSQL holds for a table, by name and definition."""
    with connect(env) as conn:
        return conn.execute(
            """SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint WHERE conrelid = %(t)s::regclass
               UNION ALL SELECT indexname, indexdef, true FROM pg_indexes WHERE tablename = %(t)s::text ORDER BY 1""",
            {"t": table}).fetchall()


def test_a_table_dropped_in_postgresql_is_created_and_loaded_again(source, target, tmp_path):
    """The sync state still names what the dropped table held: the next load creates the table and
    loads it in full, with the same keys, indexes and foreign keys."""
    env = {**source, **target}
    staging = str(tmp_path / "staging")
    assert run_loader("run", "--staging", staging, "--no-progress", env=env).returncode == 0
    rows = sorted(fetch_rows(env, "users_contents_reads"), key=lambda r: (r["content_id"], r["user_id"]))
    catalog = _catalog(env, "users_contents_reads")
    assert rows and any("FOREIGN KEY" in definition for _, definition, _ in catalog)
    _execute(env, "DROP TABLE users_contents_reads")

    plan = run_loader("plan", "--staging", staging, env=env)
    assert plan.returncode == 0, plan.stderr
    assert any("users_contents_reads" in line and "full" in line for line in plan.stdout.splitlines()), plan.stdout
    result = run_loader("load", "--staging", staging, "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(fetch_rows(env, "users_contents_reads"), key=lambda r: (r["content_id"], r["user_id"])) == rows
    assert _catalog(env, "users_contents_reads") == catalog


def test_a_first_load_killed_in_a_new_table_leaves_no_half_made_table(source, target, tmp_path):
    """A missing table is created in the transaction that fills it: killed while it waits to add
    its foreign key to `contents` (locked by the test), the load leaves no users_contents_reads
    behind, the tables committed meanwhile stay, and the next load creates and fills it."""
    env = {**source, **target}
    staging = str(tmp_path / "staging")
    assert run_loader("run", "--staging", staging, "--no-progress", env=env).returncode == 0
    rows = sorted(fetch_rows(env, "users_contents_reads"), key=lambda r: (r["content_id"], r["user_id"]))
    _execute(env, "DROP TABLE users_contents_reads")

    log = tmp_path / "killed-load.log"
    with connect(env) as locker, connect(env, autocommit=True) as monitor:
        locker.execute("LOCK TABLE contents IN ACCESS EXCLUSIVE MODE")
        loader = start_loader("load", "--staging", staging, "--no-progress", env=env, output=log)
        try:
            pid, _, relation = waiting_backend(monitor, loader, [locker.info.backend_pid, monitor.info.backend_pid], log)
            waiting = monitor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0]
        finally:
            loader.send_signal(signal.SIGKILL)
            loader.wait(timeout=30)
        # Blocked after the COPY, adding the new table's foreign key (not earlier, e.g. reading contents).
        assert relation == "contents" and waiting.startswith('ALTER TABLE "public"."users_contents_reads" ADD FOREIGN KEY'), waiting
        locker.rollback()
        if not wait_until_gone(monitor, pid, BACKEND_EXIT_TIMEOUT):
            monitor.execute("SELECT pg_terminate_backend(%s)", [pid])
            assert wait_until_gone(monitor, pid, BACKEND_EXIT_TIMEOUT)
        assert monitor.execute("SELECT to_regclass('users_contents_reads')").fetchone()[0] is None

    result = run_loader("load", "--staging", staging, "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(fetch_rows(env, "users_contents_reads"), key=lambda r: (r["content_id"], r["user_id"])) == rows
