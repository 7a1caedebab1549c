"""The extract against SecantusDB: whole documents, parallel `_id` ranges, delta queries."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from datetime import datetime, timedelta

import pytest
from bson import ObjectId
from pymongo import MongoClient

from loader import duck
from loader.extract import mongo
from loader.staging import DELTA, FULL, Staging

T0 = datetime(2024, 3, 1, 12, 0)
_databases = itertools.count()


@pytest.fixture
def db(mongo):
    with MongoClient(mongo.url) as client:
        yield client[f"extract_{next(_databases)}"]


def stage(db, staging: Staging, name: str, ranges: int = 1, force_full: bool = False, stream: bool = False):
    """One snapshot of the collection; with `stream`, as `loader extract` reads a server: with
    what its change stream tells (else deletions are found by counting)."""
    if stream:
        [source] = mongo.server_sources(db, staging, [name], batch_size=100)
    else:
        source = mongo.Source(db, name, name in db.list_collection_names(), batch_size=100)
    return mongo.stage_collection(duck.connect(), staging, source, force_full, overlap_seconds=0, ranges=ranges)


def staged_documents(staging: Staging, name: str) -> dict[str, dict]:
    rows = duck.connect().execute(f"SELECT _id, doc FROM ({staging.view_sql(name)})").fetchall()
    assert len(rows) == len({_id for _id, _ in rows}), "an _id is staged twice"
    return {_id: json.loads(doc) for _id, doc in rows}


def documents(count: int, **fields) -> list[dict]:
    return [{"_id": ObjectId(), "n": i, "creation_date": T0, "update_date": T0, **fields} for i in range(count)]


def test_parallel_ranges_stage_every_document_once(db, tmp_path, monkeypatch):
    db.items.insert_many(documents(1_000))
    monkeypatch.setattr(mongo, "PARALLEL_MIN_DOCUMENTS", 0)
    one, three = Staging(tmp_path / "one"), Staging(tmp_path / "three")
    stage(db, one, "items", ranges=1)
    snapshot = stage(db, three, "items", ranges=3)
    parts = three.document_parts(snapshot)
    assert {p.name.split("-")[1] for p in parts} == {"000", "001", "002"}  # three ranges were read
    assert snapshot.documents == 1_000
    assert staged_documents(three, "items") == staged_documents(one, "items")


def test_ids_that_are_not_all_object_ids_are_read_by_one_cursor(db, tmp_path, monkeypatch):
    db.items.insert_many(documents(50) + [{"_id": f"key-{i}", "n": i} for i in range(50)] + [{"_id": 7, "n": 0}])
    monkeypatch.setattr(mongo, "PARALLEL_MIN_DOCUMENTS", 0)
    staging = Staging(tmp_path)
    snapshot = stage(db, staging, "items", ranges=3)
    assert {p.name.split("-")[1] for p in staging.document_parts(snapshot)} == {"000"}
    assert len(staged_documents(staging, "items")) == 101


def test_whole_documents_are_staged(db, tmp_path):
    db.users.insert_one({"_id": ObjectId(), "creation_date": T0, "not_in_the_mapping": {"deep": [1, 2]}})
    staging = Staging(tmp_path)
    stage(db, staging, "users")
    [document] = staged_documents(staging, "users").values()
    assert document["not_in_the_mapping"] == {"deep": [1, 2]}


def test_large_documents_are_staged_whole(db, tmp_path):
    """pymongo hands a raw document of 4 KB or more over as a view of its batch, not as bytes."""
    large = [{"_id": ObjectId(), "creation_date": T0, "text": "x" * size} for size in (5_000, 3_000_000)]
    db.items.insert_many([*large, *documents(3)])
    staging = Staging(tmp_path)
    stage(db, staging, "items")
    staged = staged_documents(staging, "items")
    assert len(staged) == 5 and all(staged[str(d["_id"])]["text"] == d["text"] for d in large)


def test_a_delta_reads_each_changed_document_once(db, tmp_path):
    earlier = T0 - timedelta(hours=3)
    db.items.insert_many(documents(10, creation_date=earlier, update_date=earlier))
    at_watermark = ObjectId()
    db.items.insert_one({"_id": at_watermark, "creation_date": earlier, "update_date": T0})
    staging = Staging(tmp_path)
    stage(db, staging, "items")
    later = T0 + timedelta(hours=1)
    created, updated, both = ObjectId(), ObjectId(), ObjectId()
    db.items.insert_many([
        {"_id": created, "creation_date": later},  # no update_date
        {"_id": updated, "creation_date": T0 - timedelta(days=1), "update_date": later},
        {"_id": both, "creation_date": later, "update_date": later},
    ])
    delta = stage(db, staging, "items")
    parts = duck.parquet_source(staging.document_parts(delta))
    ids = [i for (i,) in duck.connect().execute(f"SELECT _id FROM {parts}").fetchall()]
    # at_watermark is read again (the watermark is inclusive) but, unchanged, not recorded
    assert sorted(ids) == sorted(str(i) for i in (created, updated, both))


def test_documents_read_again_at_the_watermark_are_recorded_only_when_changed(db, tmp_path):
    db.items.insert_many(documents(3))  # all stamped at what becomes the watermark
    staging = Staging(tmp_path)
    stage(db, staging, "items")
    quiet = stage(db, staging, "items")
    assert quiet.documents == 0 and [s.kind for s in staging.snapshots("items")] == [FULL], "a delta without change"

    changed = db.items.find_one({"n": 1})["_id"]
    db.items.update_one({"_id": changed}, {"$set": {"n": 99}})  # a write that keeps the stamp
    delta = stage(db, staging, "items")
    assert delta.documents == 1 and len(staging.snapshots("items")) == 2
    assert staged_documents(staging, "items")[str(changed)]["n"] == 99


def test_the_documents_changed_since_a_snapshot_are_read_from_the_deltas(db, tmp_path):
    """What an incremental transform reads instead of the current view: the latest version in
    the deltas since of each document still alive, across a compaction, a deletion and a
    document deleted then inserted again."""
    db.items.insert_many(documents(4))
    a, b, c, _ = (d["_id"] for d in db.items.find().sort("n"))
    staging = Staging(tmp_path)
    full = stage(db, staging, "items")
    db.items.update_one({"_id": a}, {"$set": {"n": 100, "update_date": T0 + timedelta(hours=1)}})
    db.items.delete_one({"_id": b})
    stage(db, staging, "items")
    compacted = mongo.compact(duck.connect(), staging, "items")
    db.items.delete_one({"_id": c})
    stage(db, staging, "items")
    con = duck.connect()

    def changed(consumed: str) -> dict[str, int]:
        rows = con.execute(f"SELECT _id, doc FROM ({staging.changed_documents_sql('items', consumed)})").fetchall()
        return {_id: json.loads(doc)["n"] for _id, doc in rows}

    assert changed(compacted.id) == {}  # a tombstone alone since
    db.items.insert_one({"_id": c, "n": 300, "creation_date": T0 + timedelta(hours=2)})
    stage(db, staging, "items")
    assert changed(full.id) == {str(a): 100, str(c): 300}
    assert changed(compacted.id) == {str(c): 300}
    in_view = con.execute(f"SELECT _id FROM ({staging.view_sql('items')}) "
                          f"WHERE _id IN ({staging.changes_since('items', full.id)})").fetchall()
    assert {_id for (_id,) in in_view} == {str(a), str(c)}


def test_a_snapshot_another_process_records_is_seen(db, tmp_path):
    """Staging parses the manifest once per version of the file: a reader that has parsed it
    still sees what another writer (a `loader extract` beside a notebook) records after."""
    db.items.insert_many(documents(3))
    reader, writer = Staging(tmp_path), Staging(tmp_path)
    stage(db, writer, "items")
    assert [s.kind for s in reader.snapshots("items")] == [FULL]
    db.items.update_one({"n": 1}, {"$set": {"n": 10, "update_date": T0 + timedelta(hours=1)}})
    stage(db, writer, "items")
    assert [s.kind for s in reader.snapshots("items")] == [FULL, DELTA]
    assert staged_documents(reader, "items") == staged_documents(writer, "items")


def test_the_manifest_lists_the_current_views_and_the_history_the_earlier_snapshots(db, tmp_path):
    """manifest.json lists each collection's current view (rewritten at every commit, it stays
    small); the snapshots a new base supersedes go to history/<collection>.jsonl, appended, and
    every snapshot is still listed, in order. A manifest of the previous version (every snapshot
    in it) is split at the next write; a history line an interrupted append cut short is skipped."""
    db.items.insert_many(documents(3))
    staging = Staging(tmp_path)

    def change(n: int, hours: int):
        db.items.update_one({"n": n}, {"$set": {"n": n + 10, "update_date": T0 + timedelta(hours=hours)}})
        return stage(db, staging, "items")

    def listed() -> list[str]:
        return [s["id"] for s in json.loads(staging.manifest_path.read_text())["collections"]["items"]]

    full, delta = stage(db, staging, "items"), change(0, 1)
    compacted = mongo.compact(duck.connect(), staging, "items")
    assert listed() == [compacted.id]
    assert [s.id for s in Staging(tmp_path).snapshots("items")] == [full.id, delta.id, compacted.id]
    assert [s.id for s in staging.chain("items", upto=delta.id)] == [full.id, delta.id]

    previous = {"version": 2, "collections": {"items": [asdict(full), asdict(delta), asdict(compacted)]}}
    staging.history_path("items").unlink()
    staging.manifest_path.write_text(json.dumps(previous))
    assert [s.id for s in Staging(tmp_path).snapshots("items")] == [full.id, delta.id, compacted.id]
    second = change(1, 2)
    assert listed() == [compacted.id, second.id]
    with staging.history_path("items").open("a") as out:
        out.write('{"collection": "items", "id": "cut sh')
    recompacted = mongo.compact(duck.connect(), staging, "items")
    assert listed() == [recompacted.id]
    assert [s.id for s in Staging(tmp_path).snapshots("items")] == [full.id, delta.id, compacted.id, second.id, recompacted.id]
    assert staged_numbers(staging, "items") == source_numbers(db, "items")


def source_numbers(db, name: str) -> dict[str, int]:
    return {str(d["_id"]): d["n"] for d in db[name].find()}


def staged_numbers(staging: Staging, name: str) -> dict[str, int]:
    return {_id: document["n"] for _id, document in staged_documents(staging, name).items()}


def test_the_change_stream_tells_deletions_and_changes_without_a_timestamp(db, tmp_path, monkeypatch):
    earlier = T0 - timedelta(hours=3)
    db.items.insert_many(documents(6, creation_date=earlier, update_date=earlier) + documents(1, n=6))  # watermark T0
    staging = Staging(tmp_path)
    stage(db, staging, "items", stream=True)
    assert "items" in staging.positions()
    first, kept_stamp, put_back, *_ = [d["_id"] for d in db.items.find().sort("n")]
    db.items.delete_one({"_id": first})
    db.items.update_one({"_id": kept_stamp}, {"$set": {"n": 99}})
    db.items.delete_one({"_id": put_back})
    db.items.insert_one({"_id": put_back, "n": 42, "creation_date": earlier, "update_date": earlier})
    db.items.insert_one({"n": 7})  # no timestamp at all
    passing = db.items.insert_one({"n": 8}).inserted_id
    db.items.delete_one({"_id": passing})  # never staged: no tombstone
    monkeypatch.setattr(mongo.Source, "count", lambda self: pytest.fail("counted although the change stream tells"))
    delta = stage(db, staging, "items", stream=True)
    assert delta.deleted == 1 and delta.documents == 3, delta
    assert staged_numbers(staging, "items") == source_numbers(db, "items")


def test_a_collection_without_change_stream_event_is_not_queried(db, tmp_path, monkeypatch):
    db.items.insert_many(documents(3))  # all stamped at what becomes the watermark
    staging = Staging(tmp_path)
    stage(db, staging, "items", stream=True)
    db.other.insert_one({"n": 1, "creation_date": T0 + timedelta(hours=1)})  # an event, of another collection
    with monkeypatch.context() as patched:
        patched.setattr(mongo.Source, "read", lambda self, *a: pytest.fail("queried although the change stream told no change"))
        quiet = stage(db, staging, "items", stream=True)
    assert quiet.documents == 0 and quiet.deleted == 0 and len(staging.snapshots("items")) == 1

    changed = db.items.find_one({"n": 1})["_id"]
    db.items.update_one({"_id": changed}, {"$set": {"n": 99}})  # a write that keeps the stamp
    assert stage(db, staging, "items", stream=True).documents == 1
    assert staged_numbers(staging, "items") == source_numbers(db, "items")


def test_the_collection_with_the_most_change_stream_events_is_read_first(db, tmp_path):
    staging = Staging(tmp_path)
    for name in ("parents", "children", "quiet"):
        db[name].insert_many(documents(3))
        stage(db, staging, name, stream=True)
    db.parents.update_one({"n": 0}, {"$set": {"n": 9}})
    db.children.delete_one({"n": 0})
    db.children.update_many({}, {"$set": {"m": 1}})
    order = [source.name for source in mongo.server_sources(db, staging, ["quiet", "parents", "children"], batch_size=100)]
    assert order == ["children", "quiet", "parents"], "the busiest first, then the order asked"


def test_without_a_readable_change_stream_position_deletions_are_counted(db, tmp_path, monkeypatch):
    earlier = T0 - timedelta(hours=3)
    db.items.insert_many(documents(4, creation_date=earlier, update_date=earlier) + documents(1, n=4))
    staging = Staging(tmp_path)
    stage(db, staging, "items", stream=True)
    staging.record_position("items", json.dumps({"_data": "00"}))  # a position this server cannot resume from
    db.items.delete_many({"n": {"$lt": 2}})
    db.items.insert_one({"n": 7})  # no timestamp: the _id set tells it is missing
    counted = []
    monkeypatch.setattr(mongo.Source, "count", lambda self, count=mongo.Source.count: counted.append(1) or count(self))
    delta = stage(db, staging, "items", stream=True)
    assert counted and delta.deleted == 2 and delta.documents == 1, delta
    assert staged_numbers(staging, "items") == source_numbers(db, "items")
    assert staging.positions()["items"] != json.dumps({"_data": "00"}), "the next extract reads the stream again"


def test_a_collection_dropped_since_is_compared_whole(db, tmp_path):
    earlier = T0 - timedelta(hours=3)
    db.items.insert_many(documents(3, creation_date=earlier, update_date=earlier) + documents(1, n=3))
    staging = Staging(tmp_path)
    stage(db, staging, "items", stream=True)
    db.items.drop()
    db.items.insert_many(documents(2, creation_date=earlier, update_date=earlier))  # before the watermark
    delta = stage(db, staging, "items", stream=True)
    assert delta.deleted == 4 and delta.documents == 2, delta
    assert staged_numbers(staging, "items") == source_numbers(db, "items")


def test_a_snapshot_staged_with_a_projection_is_replaced_by_a_full_one(db, tmp_path):
    db.items.insert_many(documents(5))
    staging = Staging(tmp_path)
    stage(db, staging, "items")
    manifest = staging.read_manifest()
    manifest["collections"]["items"][0]["fields"] = ["_id", "n"]  # as an older loader wrote it
    staging.manifest_path.write_text(json.dumps(manifest))
    assert mongo.next_snapshot(staging, "items", False, 0)[2] == "full (staged with a projection)"
    assert stage(db, staging, "items").kind == FULL


def test_snapshots_staged_before_plain_ids_were_counted_may_hold_some(db, tmp_path):
    """A staging area from before `plain_ids` was counted: a delta of ObjectId documents alone
    is still checked for `_id` texts read alike (here an ObjectId and its hex string, which the
    delta would merge), and a compaction counts the documents again."""
    oid, earlier = ObjectId(), T0 - timedelta(hours=3)  # before the watermark: not read again by the delta
    db.items.insert_many([{"_id": i, "creation_date": earlier, "update_date": earlier} for i in (oid, str(oid))]
                         + documents(2))
    staging = Staging(tmp_path)
    stage(db, staging, "items", stream=True)

    def forget_plain_ids() -> None:
        manifest = staging.read_manifest()
        for snapshot in manifest["collections"]["items"]:
            del snapshot["plain_ids"]  # as an older loader wrote it
        staging.manifest_path.write_text(json.dumps(manifest))

    forget_plain_ids()
    db.items.update_one({"_id": oid}, {"$set": {"update_date": T0 + timedelta(hours=1)}})
    restaged = stage(db, staging, "items", stream=True)
    assert restaged.kind == FULL and "shared by two documents" in restaged.reason and restaged.documents == 4, restaged
    forget_plain_ids()
    assert mongo.compact(duck.connect(), staging, "items").plain_ids == 1


def test_a_part_of_large_documents_stays_within_duckdbs_memory(tmp_path):
    # 240 documents of ~170 KB (the 5M-document dataset's `contents`) in one part, under a 250 MB
    # limit: staging their _id and timestamps must not parse each document several times over.
    readers = [{"user": {"$oid": str(ObjectId())}, "date": {"$date": "2024-01-01T00:00:00Z"}} for _ in range(2000)]
    documents = [json.dumps({"_id": {"$oid": str(ObjectId())}, "creation_date": {"$date": "2024-01-0%dT00:00:00Z" % (1 + i % 9)},
                             "update_date": "2024-02-01T10:00:00", "users": readers}) for i in range(240)]
    writer = mongo._PartWriter(duck.connect(memory_limit="250MB"), tmp_path)
    writer.add_all(documents)
    writer.close()
    staged = duck.connect().execute(
        f"SELECT count(*), count(DISTINCT _id), min(creation_date), max(update_date) FROM {duck.parquet_source(writer.parts)}").fetchone()
    assert staged == (240, 240, datetime(2024, 1, 1), datetime(2024, 2, 1, 10))
