"""What `loader run` waits for when it overlaps its stages: the transform starts, of the tables
ready, the one heading the longest chain by the seconds of the last transform; the load of a
table that exists waits for the tables referencing it to be derived only before deleting rows."""

from __future__ import annotations

import json
import textwrap
from concurrent.futures import Future
from datetime import datetime, timezone

import pytest
from bson import ObjectId
from pymongo import MongoClient

from loader.config import load_config
from loader.load import writer
from loader.settings import load_settings
from loader.staging import Staging
from loader.transform import runner
from test_incremental import Target

MAPPING = textwrap.dedent("""\
    tables:
      notes:
        include_base: true
        mongo_collection: notes
        export_order: 1
      readings:
        include_base: true
        mongo_collection: readings
        export_order: 2
      prices:
        include_base: true
        mongo_collection: prices
        export_order: 3
        additional_columns:
          - {name: reading_id, sql_type: VARCHAR, nullable: false, foreign_key: readings(id)}
    """)
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=timezone.utc)
T1 = datetime(2024, 3, 2, 8, 0, tzinfo=timezone.utc)


class Watched(Future):
    """A completed future that records who asked for its result (the scheduler only checks
    whether it is done)."""

    def __init__(self, name: str, asked: list[str]):
        super().__init__()
        self.name, self.asked = name, asked
        self.set_result(name)

    def result(self, timeout=None):
        self.asked.append(self.name)
        return super().result(timeout)


@pytest.fixture
def loaded(mongo, target, tmp_path):
    """notes, readings and prices (each price references a reading), loaded by one `loader run`."""
    reading = {"_id": ObjectId(), "creation_date": T0, "update_date": T0}
    spare = {"_id": ObjectId(), "creation_date": T0, "update_date": T0}
    rejected = {"_id": ObjectId(), "creation_date": "not a date", "update_date": T0}  # type_error: never loaded
    price = {"_id": ObjectId(), "creation_date": T0, "update_date": T0, "reading_id": reading["_id"]}
    mapping = tmp_path / "scheduling.yaml"
    mapping.write_text(MAPPING)
    with MongoClient(mongo.url) as client:
        client.drop_database("scheduling")
        db = client["scheduling"]
        db.notes.insert_one({"_id": ObjectId(), "creation_date": T0, "update_date": T0})
        db.readings.insert_many([reading, spare, rejected])
        db.prices.insert_one(price)
        loader = Target({"MONGODB_URL": mongo.url, "MONGODB_DATABASE": "scheduling", **target, "LOADER_CONFIG": str(mapping)},
                        tmp_path / "staging")
        loader.loader("run")
        yield loader, db, reading, spare, rejected
        client.drop_database("scheduling")


def settings_of(loader: Target, **overrides):
    return load_settings(None, **{k.lower(): v for k, v in loader.env.items() if k.startswith(("MONGODB_", "POSTGRES_"))},
                         staging_dir=loader.staging, config_path=loader.env["LOADER_CONFIG"], **overrides)


def test_the_transform_starts_the_longest_chain_of_the_last_transform_first(loaded):
    loader, *_ = loaded
    settings = settings_of(loader, transform_workers=1)
    config = load_config(settings.config_path)
    staging = Staging(settings.staging_dir)
    def derived_order(seconds: dict[str, float]) -> list[str]:
        """The order in which one transform worker derives the tables after a transform that took
        these seconds per table."""
        report = json.loads(staging.transform_report_path.read_text())
        for table, taken in seconds.items():
            report["tables"][table]["derived_seconds"] = taken
        staging.write_transform_report(report)
        order: list[str] = []
        results = runner.transform(settings, staging, config.ordered(), on_derived=order.append)
        assert {r.mode for r in results} == {runner.UNCHANGED}
        kept = {t: s["derived_seconds"] for t, s in json.loads(staging.transform_report_path.read_text())["tables"].items()}
        assert kept == seconds  # a transform finding the tables unchanged keeps their weights
        return order

    assert derived_order({"notes": 5.0, "readings": 1.0, "prices": 1.0}) == ["notes", "readings", "prices"]
    assert derived_order({"notes": 5.0, "readings": 1.0, "prices": 10.0}) == ["readings", "prices", "notes"]
    assert derived_order({"notes": 0.0, "readings": 0.0, "prices": 0.0}) == ["notes", "readings", "prices"]  # load order


@pytest.mark.parametrize("change", ["update", "update a rejected document", "delete"])
def test_a_table_waits_for_the_tables_referencing_it_only_before_deleting_rows(loaded, change):
    """Only deleting a row PostgreSQL holds waits for prices (a rejected document's identity, gone
    from the rows before as after, deletes nothing)."""
    loader, db, reading, spare, rejected = loaded
    if change == "delete":
        db.readings.delete_one({"_id": spare["_id"]})
    else:
        db.readings.update_one({"_id": (rejected if "rejected" in change else spare)["_id"]}, {"$set": {"update_date": T1}})
    loader.loader("extract")
    loader.loader("transform")
    settings = settings_of(loader)
    config = load_config(settings.config_path)
    asked: list[str] = []
    derived = {t.name: Watched(t.name, asked) for t in config.ordered()}
    results = writer.load(settings, config, Staging(settings.staging_dir), config.ordered(), derived=derived)
    deleting = change == "delete"
    assert {r.table: (r.mode, r.deleted) for r in results}["readings"] == ("incremental", 1 if deleting else 0)
    assert asked == (["prices"] if deleting else [])
    assert loader.ids("readings") == ({str(reading["_id"])} if deleting else {str(reading["_id"]), str(spare["_id"])})
