"""An incremental transform checks only the re-derived units' rows (runner `_Run._finish_units`)
unless another unit's row shares an identity with them, before or after the change: rows sharing
an identity are rejected together (`duplicate_key`), so the whole table is checked then. Either
way PostgreSQL must hold what a full rebuild gives.

The mapping takes a table's primary key from a field (`code`) rather than `_id`, so that two
documents, two units, can give rows the same identity."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone

import pytest
from bson import ObjectId
from pymongo import MongoClient

from test_incremental import Source, Target, rebuild

MAPPING = textwrap.dedent("""\
    tables:
      badges:
        mongo_collection: badges
        export_order: 1
        include_base: true
        additional_columns:
          - {name: label, sql_type: VARCHAR}
        additional_mappings: {code: id}
    """)
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def badges(mongo, postgres, target, tmp_path):
    """Three badges coded x, y and z, loaded by one `loader run`; yields the loader, the source
    database and a function rebuilding from scratch (test_incremental.rebuild)."""
    mapping = tmp_path / "badges.yaml"
    mapping.write_text(MAPPING)
    with MongoClient(mongo.url) as client:
        client.drop_database("badges")
        db = client["badges"]
        db.badges.insert_many([{"_id": ObjectId(), "code": code, "label": label, "creation_date": T0, "update_date": T0}
                               for code, label in (("x", "a"), ("y", "b"), ("z", "c"))])
        source = Source(db, {"MONGODB_URL": mongo.url, "MONGODB_DATABASE": "badges", "LOADER_CONFIG": str(mapping)}, {})
        loader = Target({**source.env, **target}, tmp_path / "staging")
        loader.loader("run")
        yield loader, db, lambda: rebuild(source, postgres, tmp_path)
        client.drop_database("badges")


def rows(loader: Target) -> set[tuple]:
    return set(loader.query("SELECT id, label FROM badges"))


def duplicates(loader: Target) -> set[str]:
    return {source for (source,) in loader.query(
        "SELECT source_id FROM loader_rejects WHERE \"table\" = 'badges' AND reason = 'duplicate_key'")}


def test_a_row_sharing_an_identity_with_another_units_row_is_checked_with_the_whole_table(badges):
    loader, db, rebuilt = badges
    coded = {doc["code"]: doc["_id"] for doc in db.badges.find()}

    def recode(document_id: ObjectId, code: str, day: int) -> None:
        db.badges.update_one({"_id": document_id}, {"$set": {"code": code, "update_date": T0.replace(day=day)}})
        loader.loader("run")

    # y recoded x: its row now shares x's identity with an unchanged document's row; both are rejected.
    recode(coded["y"], "x", 2)
    reference = rebuilt()
    assert rows(loader) == {("z", "c")} == rows(reference)
    assert duplicates(loader) == {str(coded["x"]), str(coded["y"])} == duplicates(reference)
    # ... then recoded w: the row it shared an identity with is accepted again.
    recode(coded["y"], "w", 3)
    reference = rebuilt()
    assert rows(loader) == {("x", "a"), ("w", "b"), ("z", "c")} == rows(reference)
    assert duplicates(loader) == set() == duplicates(reference)
