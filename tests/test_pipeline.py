"""End to end: `loader run` against SecantusDB and a real PostgreSQL, rows checked against the
independent oracle of MAPPING.md (tests/oracle.py) computed from the generated documents."""

from __future__ import annotations

import duckdb
import psycopg
import pytest

from conftest import ROOT, fetch_rows, run_loader
from loader.config import load_config
from oracle import expected_entities
from oracle_relations import expected_relations

PLAIN_ENTITY_TABLES = [
    "ingredients", "appointment_types", "companies", "offers", "categories", "targets", "recipes", "quizzs",
    "quizzs_questions", "contents", "events", "users", "menus", "users_quizzs", "messages", "coachings",
    "users_quizzs_questions", "appointments", "periods", "items", "days",
]
RELATION_TABLES = [
    "quizzs_links_questions", "user_events", "users_targets", "users_quizzs_links_questions", "users_contents_reads",
    "days_contents_links", "days_logbooks_links", "users_logbook", "menu_recipes", "users_logbooks_moments",
    "users_logbooks_moments_details",
]


@pytest.fixture(scope="module")
def loaded(source, postgres, tmp_path_factory, dataset):
    """One `loader run` into a fresh database, shared by the checks of this module."""
    name = "target_pipeline"
    with psycopg.connect(**postgres.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {**source, **postgres.env(), "POSTGRES_DATABASE": name}
    staging = tmp_path_factory.mktemp("staging")
    result = run_loader("run", "--staging", str(staging), "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    return {"env": env, "staging": staging, "stdout": result.stdout}


@pytest.mark.parametrize("table", PLAIN_ENTITY_TABLES)
def test_plain_entity_table_matches_the_mapping(loaded, dataset, table):
    expected = expected_entities(dataset, tz="Europe/Paris")[table]
    actual = {row["id"]: row for row in fetch_rows(loaded["env"], table)}
    assert actual, f"{table} is empty"
    missing = sorted(set(expected.rows) - set(actual))
    extra = sorted(set(actual) - set(expected.rows))
    differing = {k: (actual[k], expected.rows[k]) for k in set(actual) & set(expected.rows) if actual[k] != expected.rows[k]}
    assert not missing and not extra and not differing, (
        f"{table}: missing {missing[:5]}, extra {extra[:5]}, differing {list(differing.items())[:3]}"
    )


@pytest.mark.parametrize("table", PLAIN_ENTITY_TABLES)
def test_rejected_documents_are_recorded_with_their_reason(loaded, dataset, table):
    expected = expected_entities(dataset, tz="Europe/Paris")[table]
    issues = duckdb.sql(
        f"SELECT source_id, reason FROM read_parquet('{loaded['staging']}/issues/{table}.parquet') WHERE kind = 'reject'"
    ).fetchall()
    assert dict(issues) == expected.rejects


@pytest.fixture(scope="module")
def relations(dataset):
    return expected_relations(dataset, tz="Europe/Paris")


@pytest.mark.parametrize("table", RELATION_TABLES)
def test_relation_table_matches_the_mapping(loaded, relations, table):
    expected = relations[table]
    actual = {tuple(row[c] for c in expected.key_columns): row for row in _comparable_rows(loaded["env"], table)}
    expected_rows = {key if isinstance(key, tuple) else (key,): row for key, row in expected.rows.items()}
    assert expected_rows, f"the generated data gives no {table} rows"
    missing = sorted(set(expected_rows) - set(actual))
    extra = sorted(set(actual) - set(expected_rows))
    differing = {k: (actual[k], v) for k, v in expected_rows.items() if k in actual and actual[k] != v}
    assert not missing and not extra and not differing, (
        f"{table}: missing {missing[:5]}, extra {extra[:5]}, differing {list(differing.items())[:3]}"
    )


@pytest.mark.parametrize("table", RELATION_TABLES)
def test_relation_issues_are_recorded_with_their_reason(loaded, relations, table):
    expected = relations[table]
    issues = duckdb.sql(
        f"SELECT kind, source_id, reason FROM read_parquet('{loaded['staging']}/issues/{table}.parquet')"
    ).fetchall()
    assert sorted((i, r) for k, i, r in issues if k == "reject") == sorted(expected.reject_list)
    assert sorted((i, r) for k, i, r in issues if k == "warning") == sorted(expected.warnings)
    assert {i: r for k, i, r in issues if k == "skip"} == expected.skips


def test_every_foreign_key_is_in_place_and_validated_after_the_bulk_load(loaded):
    """The first load COPies into empty tables with their foreign keys dropped and added back."""
    config = load_config(ROOT / "config" / "schemas.yaml")
    expected = {(t.name, c.name, c.foreign_key.table) for t in config.ordered() for c in t.foreign_keys}
    env = loaded["env"]
    with psycopg.connect(host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"], dbname=env["POSTGRES_DATABASE"],
                         user=env["POSTGRES_USER"]) as conn:
        found = conn.execute(
            """SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text, c.convalidated
               FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
               WHERE c.contype = 'f'"""
        ).fetchall()
    assert {(t, col, parent) for t, col, parent, _ in found} == expected
    assert all(validated for *_, validated in found)


def test_recommended_indexes_exist(loaded):
    env = loaded["env"]
    with psycopg.connect(host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"], dbname=env["POSTGRES_DATABASE"],
                         user=env["POSTGRES_USER"]) as conn:
        definitions = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname LIKE '%\\_idx'").fetchall()]
    assert any("users_logbooks_moments_details USING btree (user_logbook_moment_id)" in d for d in definitions), definitions
    assert any("users_logbooks_moments USING btree (user_logbook_id)" in d for d in definitions), definitions


def _comparable_rows(env: dict[str, str], table: str) -> list[dict]:
    """Rows as the oracle states them: users_logbook without its generated id, moments with the
    (user_id, day) of their users_logbook row instead of its id."""
    rows = fetch_rows(env, table)
    if table == "users_logbook":
        return [{k: v for k, v in row.items() if k != "id"} for row in rows]
    if table == "users_logbooks_moments":
        days = {row["id"]: (row["user_id"], row["day"]) for row in fetch_rows(env, "users_logbook")}
        return [
            {**{k: v for k, v in row.items() if k != "user_logbook_id"}, "user_logbook_key": days[row["user_logbook_id"]]}
            for row in rows
        ]
    return rows


def test_every_source_document_lands_or_is_rejected(loaded, dataset):
    config = load_config(ROOT / "config" / "schemas.yaml")
    for name in PLAIN_ENTITY_TABLES:
        table = config.tables[name]
        if table.strategy.name != "entity":  # menus: union of two collections, checked by the oracle
            continue
        rows = len(fetch_rows(loaded["env"], name))
        rejects = duckdb.sql(
            f"SELECT count(*) FROM read_parquet('{loaded['staging']}/issues/{name}.parquet') WHERE kind = 'reject'"
        ).fetchall()[0][0]
        assert rows + rejects == len(dataset[table.collection]), name


def test_second_run_changes_nothing(loaded):
    before = _fingerprint(loaded["env"])
    result = run_loader("run", "--staging", str(loaded["staging"]), "--no-progress", env=loaded["env"])
    assert result.returncode == 0, result.stderr
    assert _fingerprint(loaded["env"]) == before


def test_summary_lists_every_table(loaded):
    for table in PLAIN_ENTITY_TABLES + RELATION_TABLES:
        assert table in loaded["stdout"]


def _fingerprint(env: dict[str, str]) -> dict[str, tuple]:
    """Per table: row count, md5 of all rows, and the system columns that change on any rewrite."""
    with psycopg.connect(
        host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"], dbname=env["POSTGRES_DATABASE"], user=env["POSTGRES_USER"]
    ) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        return {
            t: conn.execute(
                f'SELECT count(*), md5(coalesce(string_agg(x::text, \'|\' ORDER BY x::text), \'\')), '
                f'coalesce(string_agg(x.xmin::text || x.ctid::text, \',\' ORDER BY x.ctid), \'\') FROM "{t}" x'
            ).fetchone()
            for t in tables
        }
