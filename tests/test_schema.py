"""Schema drift: `loader schema diff` / `loader schema apply`, and `loader load` refusing to write
into tables that differ from the config."""

from __future__ import annotations

import textwrap

from conftest import connect, run_loader


def _execute(env: dict[str, str], *statements: str) -> None:
    with connect(env, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _rows(env: dict[str, str], table: str) -> int:
    with connect(env) as conn:
        return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


def test_drifted_schema_is_listed_refused_and_mended(source, target, tmp_path):
    env = {**source, **target, "LOADER_STAGING_DIR": str(tmp_path / "staging")}
    assert run_loader("run", "--no-progress", env=env).returncode == 0
    clean = run_loader("schema", "diff", env=env)
    assert clean.returncode == 0 and "PostgreSQL matches the config" in clean.stdout

    _execute(env,
             'ALTER TABLE users ALTER COLUMN role TYPE TEXT',                  # manual: a type change
             'ALTER TABLE messages DROP COLUMN content',                       # additive: a missing column
             'ALTER TABLE users DROP CONSTRAINT users_company_id_fkey',       # additive: a missing foreign key
             'ALTER TABLE companies ADD COLUMN note TEXT',                     # manual: an extra column
             'DELETE FROM messages')
    expected = [
        "users: column role: type text in PostgreSQL, character varying(100) in the config",
        "messages: column content missing",
        "users: foreign key company_id -> companies(id) missing",
        "companies: column note not in the config",
    ]

    refused = run_loader("load", "--no-progress", "--force-reimport", env=env)
    assert refused.returncode == 1
    assert "the PostgreSQL schema differs from the config (4 differences); nothing was written" in refused.stderr
    for line in expected:
        assert line in refused.stderr
    assert _rows(env, "messages") == 0  # nothing written

    diff = run_loader("schema", "diff", env=env)
    assert diff.returncode == 1
    for line in expected:
        table, what = line.split(": ", 1)
        assert what in diff.stdout
    assert 'ALTER TABLE "public"."users" ALTER COLUMN "role" TYPE character varying(100)' in diff.stdout

    applied = run_loader("schema", "apply", env=env)
    assert applied.returncode == 1  # the type change and the extra column are left to the user
    after = run_loader("schema", "diff", env=env).stdout
    assert "column content missing" not in after and "company_id -> companies(id) missing" not in after
    assert "column role: type text" in after and "column note not in the config" in after

    _execute(env, 'ALTER TABLE users ALTER COLUMN role TYPE VARCHAR(100)', 'ALTER TABLE companies DROP COLUMN note')
    assert run_loader("schema", "diff", env=env).returncode == 0
    loaded = run_loader("load", "--no-progress", "--force-reimport", env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert _rows(env, "messages") > 0


def test_reserved_words_and_odd_names_are_quoted(target, tmp_path):
    mapping = tmp_path / "odd.yaml"
    mapping.write_text(textwrap.dedent("""\
        tables:
          user:
            include_base: true
            additional_columns:
              - {name: order, sql_type: INTEGER, nullable: false}
              - {name: type, sql_type: VARCHAR(20)}
          "Group Members":
            columns:
              - {name: id, sql_type: VARCHAR, primary_key: true}
              - {name: user, sql_type: VARCHAR, foreign_key: user(id)}
              - {name: select, sql_type: "NUMERIC(10, 2)"}
            unique_constraints:
              - [user, select]
        """))
    env = {**target, "LOADER_CONFIG": str(mapping)}
    created = run_loader("schema", "apply", env=env)
    assert created.returncode == 0, created.stderr
    assert "table missing" in created.stdout and "applied" in created.stdout
    assert run_loader("schema", "diff", env=env).returncode == 0
    _execute(env, 'ALTER TABLE "Group Members" ALTER COLUMN "select" TYPE NUMERIC(12, 2)')
    diff = run_loader("schema", "diff", env=env)
    assert diff.returncode == 1
    assert "column select: type numeric(12,2) in PostgreSQL, numeric(10,2) in the config" in diff.stdout
