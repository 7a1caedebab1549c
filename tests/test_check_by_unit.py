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

from loader.config import load_config
from loader.settings import Settings
from loader.staging import DerivedRows, Staging
from loader.transform import runner
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


# The same with a required label: a badge without one is rejected (not_null:label) before any
# identity is compared.
LABEL_REQUIRED = MAPPING.replace("{name: label, sql_type: VARCHAR}", "{name: label, sql_type: VARCHAR, nullable: false}")


@pytest.fixture
def badges(request, mongo, postgres, target, tmp_path):
    """Three badges coded x, y and z, loaded by one `loader run` with MAPPING (or the mapping
    given as the fixture's parameter); yields the loader, the source database and a function
    rebuilding from scratch (test_incremental.rebuild)."""
    mapping = tmp_path / "badges.yaml"
    mapping.write_text(getattr(request, "param", MAPPING))
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


def change(db, document_id: ObjectId, day: int, **fields) -> None:
    """Set `fields` of a badge (a field given None is removed), stamped on `day` of T0's month."""
    unset = {name: "" for name, value in fields.items() if value is None}
    db.badges.update_one({"_id": document_id}, {"$set": {**{k: v for k, v in fields.items() if v is not None},
                                                          "update_date": T0.replace(day=day)},
                                                 **({"$unset": unset} if unset else {})})


def test_a_row_sharing_an_identity_with_another_units_row_is_checked_with_the_whole_table(badges):
    loader, db, rebuilt = badges
    coded = {doc["code"]: doc["_id"] for doc in db.badges.find()}

    def recode(document_id: ObjectId, code: str, day: int) -> None:
        change(db, document_id, day, code=code)
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


@pytest.mark.parametrize("badges", [LABEL_REQUIRED], indirect=True)
def test_rows_rejected_before_are_compared_again_with_the_others(badges):
    loader, db, rebuilt = badges
    coded = {doc["code"]: doc["_id"] for doc in db.badges.find()}

    def run_after(document_id: ObjectId, day: int, **fields) -> None:
        change(db, document_id, day, **fields)
        loader.loader("run")

    # y recoded x without a label: rejected for the label, x's row stands alone.
    run_after(coded["y"], 2, code="x", label=None)
    reference = rebuilt()
    assert rows(loader) == {("x", "a"), ("z", "c")} == rows(reference)
    # y labelled again: its row, rejected before, now shares x's identity; both are rejected.
    run_after(coded["y"], 3, label="b")
    reference = rebuilt()
    assert rows(loader) == {("z", "c")} == rows(reference)
    assert duplicates(loader) == {str(coded["x"]), str(coded["y"])} == duplicates(reference)
    # z recoded x: it joins the identity two other badges' rows share (none of them in tables/).
    run_after(coded["z"], 4, code="x")
    reference = rebuilt()
    assert rows(loader) == set() == rows(reference)
    assert duplicates(loader) == {str(coded["x"]), str(coded["y"]), str(coded["z"])} == duplicates(reference)


@pytest.mark.parametrize("badges", [LABEL_REQUIRED], indirect=True)
def test_a_transform_stopped_after_its_outputs_is_completed_by_the_next_run(badges, monkeypatch):
    """Stopped between the outputs and the derived rows (a crash), a transform leaves tables/ and
    issues/ ahead of the derived rows and the recorded state: the next run re-derives the same
    units and checks the whole table (tables/ differs from its recorded hash; the previous rows it
    reads still share x with x's row), ending as a rebuild."""
    loader, db, rebuilt = badges
    coded = {doc["code"]: doc["_id"] for doc in db.badges.find()}
    # y recoded x without a label: rejected for the label, x's row stands alone.
    change(db, coded["y"], 2, code="x", label=None)
    loader.loader("run")
    db.badges.delete_one({"_id": coded["y"]})
    loader.loader("extract")

    def stop(self):
        raise RuntimeError("stopped before the derived rows")

    for name, value in loader.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(DerivedRows, "next_delta", stop)
    settings = Settings(_env_file=None, staging_dir=loader.staging)
    config = load_config(settings.config_path)
    with pytest.raises(RuntimeError, match="stopped before the derived rows"):
        runner.transform(settings, Staging(loader.staging), config.ordered())
    monkeypatch.undo()
    loader.loader("run")
    reference = rebuilt()
    assert rows(loader) == {("x", "a"), ("z", "c")} == rows(reference)
