"""MongoDB -> staged Parquet snapshots.

Each needed collection is read whole (every field: a mapping change that reads another field
is rebuilt from the staging, without MongoDB) as raw BSON batches (no Python dicts): libbson
(python-bsonjs) turns each document into relaxed Extended JSON, which keeps every BSON type
recoverable, and DuckDB writes the batches to Parquet with the typed columns `_id`,
`creation_date`, `update_date` next to the document. Typing the document's fields is the
transform's job, so a value of an unexpected type is never lost here (pymongoarrow would turn it
into null or raise). Collections are staged in parallel (EXTRACT_WORKERS); the full snapshot of a large collection
can be read by parallel cursors over contiguous `_id` ranges (EXTRACT_RANGES), never by
skip/limit.

The first snapshot of a collection is full; later ones are deltas (documents stamped at or
after the watermark, plus tombstones of deleted documents, MAPPING.md 5.2), see loader/staging.py.
Deleted documents are told by the server's change stream where it keeps one
(loader/extract/changes.py), else by counting the documents and, when the count says some are
gone, comparing the `_id` sets.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bson
import bsonjs
import pyarrow as pa
import pyarrow.compute as pc
import pymongo
from bson import ObjectId, json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError

from loader import duck
from loader.extract import changes
from loader.extract.changes import Changes
from loader.progress import ProgressHook
from loader.settings import Settings
from loader.staging import COMPACTED, DELTA, FULL, NO_IDS, REJECTS_FILE, Snapshot, Staging, new_snapshot_id, utc_now, write_document_part

RAW = CodecOptions(document_class=RawBSONDocument)
# A part file is flushed at whichever comes first (bounded memory whatever the documents' size).
PART_MAX_DOCUMENTS = 100_000
PART_MAX_BYTES = 64 * 1024 * 1024

_EMPTY_BATCH = pa.table({"doc": pa.array([], pa.large_string())})
# How a document whose _id is an ObjectId begins, in libbson's Extended JSON and in raw BSON
# ({"_id": ...} keys of the change stream): the first field, of type 0x07.
_OBJECTID_JSON = '{ "_id" : { "$oid" : '
_OBJECTID_KEY = b"\x07_id\x00"
# A chain longer than this (a base and its deltas) is compacted into one base after an extract.
MAX_DELTAS = 16
# A full snapshot is read in parallel _id ranges from this many documents on (below, one cursor).
PARALLEL_MIN_DOCUMENTS = 50_000
# Server batches fetched ahead of the conversion, per cursor.
PREFETCH_BATCHES = 2
# Parquet parts are written in the background while the next ones fill (DuckDB frees the GIL).
_PART_WRITES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="parquet-part")
StagedHook = Callable[[str], None]  # called with a collection's name once it is staged
_REJECT_SCHEMA = pa.schema([("_id", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


# connectTimeoutMS is also the timeout of pymongo's heartbeats, and one missed by a busy server
# drops every connection and cancels the reads in flight (`_OperationCancelled`, seen with
# SecantusDB at 5M documents): it gets far longer than the first contact (CONNECT_TIMEOUT).
HEARTBEAT_TIMEOUT_MS = 60_000


class SourceError(Exception):
    """MongoDB cannot be reached or read."""


@dataclass
class Reject:
    source_id: str
    reason: str
    detail: str


def connect(settings: Settings) -> pymongo.MongoClient:
    """A client that has answered a ping, or a one-line SourceError within the timeout."""
    timeout_ms = settings.connect_timeout * 1000
    try:
        client = pymongo.MongoClient(
            settings.mongodb_url.get_secret_value(),
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=max(timeout_ms, HEARTBEAT_TIMEOUT_MS),
            appname="loader",
        )
        client.admin.command("ping")
    except PyMongoError as exc:
        raise SourceError(f"cannot reach MongoDB at {settings.mongodb_label()}: {type(exc).__name__}") from None
    return client


def extract(
    settings: Settings,
    staging: Staging,
    collections: list[str],
    on_progress: ProgressHook | None = None,
    full: set[str] = frozenset(),
    on_staged: StagedHook | None = None,
) -> list[Snapshot]:
    """Stage each collection: a delta snapshot of what changed since its watermark, or a full
    snapshot (first extract, staged with a projection, or named in `full`)."""
    client = connect(settings)
    try:
        db = client[settings.mongodb_database]
        sources = server_sources(db, staging, collections, settings.batch_size)
        return stage_in_parallel(settings, staging, sources, full, settings.extract_ranges, on_progress, on_staged)
    except PyMongoError as exc:
        raise SourceError(f"reading MongoDB failed: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()


def server_sources(db, staging: Staging, collections: list[str], batch_size: int) -> list[Source]:
    """The collections as the extract reads them, each with what the change stream tells of it,
    in the order given, except that the one with the most events comes first: its tables take
    the longest to derive, and they start while the other deltas are read (1% of the benchmark's
    documents changed: userquizzquestions, half the events, staged 3-4 s earlier)."""
    existing = set(db.list_collection_names())
    feed = changes.read(db, staging.positions(), collections)
    sources = [Source(db, name, name in existing, batch_size, feed.changes.get(name), feed.positions[name]) for name in collections]
    told = [source for source in sources if source.changes is not None and not source.changes.none]
    if told:
        busiest = max(told, key=lambda source: source.changes.events)
        sources = [busiest, *(source for source in sources if source is not busiest)]
    return sources


def stage_in_parallel(settings: Settings, staging: Staging, sources: list[Source], full: set[str], ranges: int,
                      on_progress: ProgressHook | None, on_staged: StagedHook | None = None) -> list[Snapshot]:
    """Stage the sources in the order given (the order in which the transform needs them, see server_sources),
    EXTRACT_WORKERS at a time: those named in `full` as full snapshots (loader/extract/dump.py
    passes its own sources, with the same interface). `on_staged` is called with each collection's
    name once its snapshot is in the staging (or found unchanged)."""
    staging.discard_scratch()
    con = duck.connect(spill_dir=staging.tmp_dir, memory_limit=settings.duckdb_memory_limit)

    def stage(source: Source) -> Snapshot:
        snapshot = stage_collection(duck.cursor(con), staging, source, source.name in full,
                                    settings.watermark_overlap_seconds, ranges, on_progress)
        if on_staged:
            on_staged(source.name)
        return snapshot

    with ThreadPoolExecutor(max_workers=settings.extract_workers) as pool:  # collections in parallel
        return list(pool.map(stage, sources))


@dataclass
class Source:
    """One collection as the extract reads it: raw BSON documents, one list per server batch."""

    db: pymongo.database.Database
    name: str
    exists: bool
    batch_size: int
    changes: Changes | None = None  # since the collection's last extract; None: unknown (count)
    position: str | None = None  # of the change stream, recorded once the collection is staged

    def read(self, query: dict, projection: dict | None = None) -> Iterator[list[RawBSONDocument]]:
        if not self.exists:
            return
        batches = self.db[self.name].find_raw_batches(query, projection, batch_size=self.batch_size)
        for batch in _prefetched(batches, PREFETCH_BATCHES):
            yield bson.decode_all(batch, RAW)

    def count(self) -> int:
        """The collection's document count from its metadata (no scan)."""
        return self.db[self.name].estimated_document_count() if self.exists else 0

    def id_ranges(self, parts: int) -> list[dict]:
        """Filters splitting the collection into `parts` contiguous `_id` ranges, cut evenly
        between the lowest and the highest ObjectId; one unbounded filter when the `_id`s are
        not all ObjectIds (lowest and highest are, so everything between is)."""
        ends = [next(iter(self.db[self.name].find({}, {"_id": 1}).sort("_id", order).limit(1)), None) for order in (1, -1)]
        if not all(end and isinstance(end["_id"], ObjectId) for end in ends):
            return [{}]
        low, high = (int.from_bytes(end["_id"].binary, "big") for end in ends)
        cuts = [ObjectId((low + (high - low) * i // parts).to_bytes(12, "big")) for i in range(1, parts)]
        bounds = [None, *cuts, None]
        return [{"_id": {op: b for op, b in (("$gte", lo), ("$lt", hi)) if b is not None}} for lo, hi in zip(bounds, bounds[1:])]


def _prefetched(items: Iterator[bytes], depth: int) -> Iterator[bytes]:
    """Iterate in a background thread, `depth` items ahead: the server sends the next batches
    while this thread converts the last one (batches are bounded by the server, 16 MB)."""
    with ThreadPoolExecutor(max_workers=1) as pool:  # one thread: next() calls stay in order
        pending = deque(pool.submit(next, items, None) for _ in range(depth))
        while (item := pending.popleft().result()) is not None:
            pending.append(pool.submit(next, items, None))
            yield item


def delta_queries(since: datetime) -> list[dict]:
    """Documents stamped at or after `since` (MAPPING.md 5.2) as two single-field range queries,
    each served by an index on its field (an $or of both is a collection scan on some servers);
    the second leaves out what the first returns."""
    return [
        {"creation_date": {"$gte": since}},
        {"update_date": {"$gte": since}, "creation_date": {"$not": {"$gte": since}}},
    ]


def stage_collection(
    con, staging: Staging, source: Source, force_full: bool, overlap_seconds: int, ranges: int = 1,
    on_progress: ProgressHook | None = None, reason: str | None = None,
) -> Snapshot:
    """Write one snapshot of a collection; a delta without change is not recorded. A delta that
    would merge two documents (`_shared_ids`) is staged whole instead, `reason` saying why."""
    hook = on_progress or ProgressHook()
    snapshot_id = new_snapshot_id()
    started, clock = utc_now(), time.perf_counter()
    scratch = staging.begin_snapshot(source.name, snapshot_id)
    full, since, _ = next_snapshot(staging, source.name, force_full, overlap_seconds)
    # The count serves a full snapshot's range split and progress total, and the deletion check
    # of a delta the change stream does not tell; it is not asked otherwise (some servers scan for it).
    count = source.count() if (ranges > 1 or on_progress if full else source.changes is None) else 0
    if not full:
        # Every write since the recorded position is an event of the stream: without one, the
        # collection has not changed, and its delta queries (a round trip each) would only read
        # again what is stamped at the watermark.
        queries = [] if source.changes is not None and source.changes.none else delta_queries(since) if since else [{}]
    elif ranges > 1 and count >= PARALLEL_MIN_DOCUMENTS:
        queries = source.id_ranges(ranges)
    else:
        queries = [{}]

    hook.start(source.name, count if full else 0)
    writers = [_PartWriter(duck.cursor(con), scratch, prefix=f"part-{i:03d}") for i in range(len(queries))]
    rejects: list[Reject] = []
    with ThreadPoolExecutor(max_workers=max(1, len(queries))) as pool:
        for found in pool.map(lambda task: _stage_documents(source, *task, hook), zip(queries, writers)):
            rejects += found
    if full:
        writers[0].close(keep_empty=True)
    if full:
        deleted, events = 0, None
    elif source.changes is not None:
        deleted, events = _apply_changes(con, staging, source, scratch, writers, rejects, hook)
    else:
        deleted, events = _detect_deletions(con, staging, source, count, scratch, writers, rejects, hook), None
    hook.finish(source.name)
    if not full and (shared := _shared_ids(con, staging, source, writers, events)):
        shutil.rmtree(scratch)
        return stage_collection(con, staging, source, True, overlap_seconds, ranges, on_progress,
                                reason=f"staged whole: {shared:,} _id text(s) shared by two documents (5 and \"5\")")
    parts = [p for w in writers for p in w.parts]
    if not full:
        parts = _without_unchanged(con, staging, source.name, parts)
    if rejects:
        _write_rejects(con, rejects, scratch / REJECTS_FILE)

    documents, max_created, max_updated = _part_stats(con, parts)
    snapshot = Snapshot(
        collection=source.name,
        id=snapshot_id,
        kind=FULL if full else DELTA,
        documents=documents,
        rejected=len(rejects),
        started_at=started.isoformat(),
        finished_at=utc_now().isoformat(),
        seconds=round(time.perf_counter() - clock, 3),
        max_creation_date=max_created.isoformat() if max_created else None,
        max_update_date=max_updated.isoformat() if max_updated else None,
        bytes=sum(p.stat().st_size for p in scratch.iterdir()),
        source_missing=not source.exists,
        deleted=deleted,
        since=since.isoformat() if since else None,
        plain_ids=sum(w.plain_ids for w in writers),
        reason=reason,
    )
    if full or documents or deleted or rejects:
        staging.commit_snapshot(scratch, snapshot, source.position)
        if not full and len(staging.chain(source.name)) > MAX_DELTAS:
            compact(con, staging, source.name)
    else:
        shutil.rmtree(scratch)
        staging.record_position(source.name, source.position)
    return snapshot


def _stage_documents(source: Source, query: dict, writer: _PartWriter, hook: ProgressHook) -> list[Reject]:
    """Read the documents of one query into a part writer; returns the undecodable ones."""
    rejects: list[Reject] = []
    for documents in source.read(query):
        writer.add_all(_to_extended_json(documents, rejects))
        hook.advance(source.name, len(documents))
    writer.close()
    return rejects


def next_snapshot(staging: Staging, name: str, force_full: bool, overlap_seconds: int) -> tuple[bool, datetime | None, str]:
    """(full?, start of the delta, why) of the next snapshot of a collection."""
    base = staging.current_base(name)
    reason = "forced" if force_full else "first extract" if base is None else "staged with a projection" if base.fields else None
    if reason:
        return True, None, f"full ({reason})"
    since = _delta_start(staging.watermark(name), overlap_seconds)
    return False, since, f"delta since {since.isoformat()}" if since else "delta (no timestamp staged yet: every document)"


def _delta_start(watermark: str | None, overlap_seconds: int) -> datetime | None:
    """The watermark (inclusive, MAPPING.md 5.2) minus the optional overlap; None: read all."""
    if watermark is None:
        return None
    return datetime.fromisoformat(watermark).replace(tzinfo=timezone.utc) - timedelta(seconds=overlap_seconds)


def _apply_changes(con, staging: Staging, source: Source, scratch: Path, writers: list[_PartWriter],
                   rejects: list[Reject], hook: ProgressHook) -> tuple[int, str | None]:
    """Tombstones and missed documents from the change stream's events: a document last
    inserted, updated or replaced that the delta did not read is fetched (a change that set no
    timestamp; one gone since is told by the next extract's events); one last deleted is
    tombstoned if it is staged and the delta did not read it again. Returns the tombstones
    written and a query of the deleted events' `_id` and `doc` (None without any)."""
    if source.changes.touched:
        touched = _event_ids(con, "touched", source.changes.touched, rejects)
        missed = [json_util.loads(doc)["_id"] for (doc,) in con.execute(
            f"SELECT doc FROM ({touched}) WHERE _id NOT IN ({_read_ids(writers)})").fetchall()]
        _fetch(source, missed, writers[-1], rejects, hook)
    if not source.changes.deleted:
        return 0, None
    deleted = _event_ids(con, "deleted", source.changes.deleted, rejects)
    return _write_tombstones(con, f"SELECT _id FROM ({staging.view_sql(source.name)}) "
                                  f"WHERE _id IN (SELECT _id FROM ({deleted})) AND _id NOT IN ({_read_ids(writers)})", scratch), deleted


def _shared_ids(con, staging: Staging, source: Source, writers: list[_PartWriter], events: str | None) -> int:
    """The `_id` texts two different `_id` values give (5 and "5"; an ObjectId and its hex
    string, C5) among the staged documents, the delta's and the deleted events' (`events`). A
    delta keys documents by that text, so it would keep one of the two where a full snapshot
    stages both (and the transform rejects both as duplicates, as a rebuild does). Only asked
    when some of these `_id`s may not be ObjectIds (a snapshot staged before they were counted,
    `plain_ids` unknown, may hold some)."""
    events_plain = source.changes is not None and any(key[4:9] != _OBJECTID_KEY for key in source.changes.deleted)
    if not (events_plain or any(w.plain_ids for w in writers) or any(s.plain_ids != 0 for s in staging.chain(source.name))):
        return 0
    parts = [p for w in writers for p in w.parts]
    relations = [staging.view_sql(source.name)]
    relations += [f"SELECT * FROM {duck.parquet_source(parts)}"] if parts else []
    relations += [events] if events else []
    ids, docs = (" UNION ALL ".join(f"SELECT {columns} FROM ({r})" for r in relations) for columns in ("_id", "_id, doc"))
    return con.execute(f"""
        WITH again AS (SELECT _id FROM ({ids}) GROUP BY _id HAVING count(*) > 1)
        SELECT count(*) FROM (SELECT _id FROM ({docs}) WHERE _id IN (SELECT _id FROM again)
                              GROUP BY _id HAVING count(DISTINCT json_extract(doc, '$._id')) > 1)""").fetchall()[0][0]


def _event_ids(con, name: str, keys: list[bytes], rejects: list[Reject]) -> str:
    """A query of the change stream's `_id`s (documents {"_id": value}) as the staging holds them
    (`_id`) and as Extended JSON (`doc`), registered in this thread's DuckDB cursor as `name`."""
    documents = _to_extended_json([RawBSONDocument(key) for key in keys], rejects)
    con.register(name, pa.table({"doc": pa.array(documents, pa.large_string())}))
    # The value's type is a subquery column, not a macro argument pasted at each use: planning
    # the pasted form took most of the query's 25 ms, for a collection's few events (8 ms so).
    return (f"SELECT bson_id_typed(i, ti) AS _id, doc FROM (SELECT *, bson_type(i) AS ti "
            f"FROM (SELECT doc, json_extract(doc, '$._id') AS i FROM {name}))")


def _detect_deletions(con, staging: Staging, source: Source, count: int, scratch: Path, writers: list[_PartWriter],
                      rejects: list[Reject], hook: ProgressHook) -> int:
    """Tombstones for documents gone from the source, without a change stream. Counting is
    enough when nothing was deleted: the source must hold the staged live documents plus the new
    ones of this delta. Otherwise the _id set is read (ids.parquet) and compared; documents the
    delta missed because they carry no timestamp are fetched as well."""
    view = staging.view_sql(source.name)
    read = _read_ids(writers)
    staged, new = con.execute(
        f"SELECT (SELECT count(*) FROM ({view})), (SELECT count(*) FROM ({read}) ANTI JOIN ({view}) USING (_id))"
    ).fetchall()[0]
    if count == staged + new:
        return 0
    ids = _PartWriter(con, scratch, prefix="ids")
    for documents in source.read({}, {"_id": 1}):
        ids.add_all(_to_extended_json(documents, rejects))
    ids.close(keep_empty=True)
    known = f"SELECT _id FROM ({view}) UNION {read}"
    unseen = [
        json_util.loads(doc)["_id"]
        for (doc,) in con.execute(
            f"SELECT doc FROM {duck.parquet_source(ids.parts)} WHERE _id NOT IN ({known})"
        ).fetchall()
    ]
    _fetch(source, unseen, writers[-1], rejects, hook)
    return _write_tombstones(con, f"SELECT _id FROM ({view}) ANTI JOIN {duck.parquet_source(ids.parts)} USING (_id)", scratch)


def _read_ids(writers: list[_PartWriter]) -> str:
    """A query of the _id of the documents the writers hold so far."""
    parts = [p for w in writers for p in w.parts]
    return f"SELECT _id FROM {duck.parquet_source(parts)}" if parts else NO_IDS


def _fetch(source: Source, ids: list, writer: _PartWriter, rejects: list[Reject], hook: ProgressHook) -> None:
    """Read the documents of these _id values (those still in the source) into the writer."""
    for start in range(0, len(ids), source.batch_size):
        for documents in source.read({"_id": {"$in": ids[start:start + source.batch_size]}}):
            writer.add_all(_to_extended_json(documents, rejects))
            hook.advance(source.name, len(documents))
    writer.close()


def _write_tombstones(con, ids: str, scratch: Path) -> int:
    """The _id of the query `ids` as the snapshot's tombstones; returns how many (no file if none)."""
    tombstones = scratch / "tombstones.parquet"
    duck.run(con, f"COPY ({ids} ORDER BY _id) TO {duck.sql_literal(str(tombstones))} ({duck.PARQUET_OPTIONS})")
    deleted = con.execute(f"SELECT count(*) FROM read_parquet({duck.sql_literal(str(tombstones))})").fetchall()[0][0]
    if not deleted:
        tombstones.unlink()
    return deleted


def _without_unchanged(con, staging: Staging, collection: str, parts: list[Path]) -> list[Path]:
    """Drop from a delta's parts the documents identical to their staged version: those stamped
    at or before the watermark, read again by the inclusive query (or the overlap). Returns the
    parts left (a part left empty is removed)."""
    watermark = staging.watermark(collection)
    if not parts or watermark is None:
        return parts
    source = duck.parquet_source(parts)
    stamp = "greatest(coalesce(creation_date, update_date), coalesce(update_date, creation_date))"
    again = [i for (i,) in con.execute(f"SELECT _id FROM {source} WHERE {stamp} <= CAST(? AS TIMESTAMP)",
                                       [watermark]).fetchall()]
    if not again:
        return parts
    # IN lists of literals, pushed down to the Parquet scans: only these documents are read.
    unchanged_ids = [i for (i,) in con.execute(
        f"SELECT d._id FROM {source} d JOIN (SELECT _id, doc FROM ({staging.view_sql(collection)}) "
        f"WHERE _id IN ({duck.sql_literals(again)})) v ON v._id = d._id AND v.doc = d.doc").fetchall()]
    if not unchanged_ids:
        return parts
    unchanged = duck.sql_literals(unchanged_ids)
    kept = []
    for part in parts:
        within = duck.parquet_source([part])
        left, total = con.execute(f"SELECT count(*) FILTER (WHERE _id NOT IN ({unchanged})), count(*) FROM {within}").fetchall()[0]
        if left == total:
            kept.append(part)
            continue
        if left:
            scratch = part.with_name(f".{part.name}")
            duck.run(con, f"COPY (SELECT * FROM {within} WHERE _id NOT IN ({unchanged})) TO {duck.sql_literal(str(scratch))} "
                          f"({duck.PARQUET_OPTIONS})")
            os.replace(scratch, part)
            kept.append(part)
        else:
            part.unlink()
    return kept


def compact(con, staging: Staging, collection: str) -> Snapshot:
    """Rewrite the current view of a collection as one `compacted` base snapshot (the history
    stays; readers of the view then read one snapshot instead of a base and many deltas)."""
    clock, started = time.perf_counter(), utc_now()
    snapshot_id = new_snapshot_id()
    chain = staging.chain(collection)
    latest = chain[-1]
    scratch = staging.begin_snapshot(collection, snapshot_id)
    part = scratch / "part-00000.parquet"
    write_document_part(con, f"{staging.view_sql(collection)} ORDER BY _id", part)
    documents, max_created, max_updated = _part_stats(con, [part])
    snapshot = replace(
        latest,
        id=snapshot_id,
        kind=COMPACTED,
        documents=documents,
        rejected=0,
        deleted=0,
        since=None,
        started_at=started.isoformat(),
        finished_at=utc_now().isoformat(),
        seconds=round(time.perf_counter() - clock, 3),
        max_creation_date=max_created.isoformat() if max_created else None,
        max_update_date=max_updated.isoformat() if max_updated else None,
        bytes=part.stat().st_size,
        plain_ids=_plain_ids(con, part) if any(s.plain_ids is None for s in chain) else sum(s.plain_ids for s in chain),
        reason=None,
    )
    staging.commit_snapshot(scratch, snapshot, staging.positions().get(collection))
    return snapshot


def _plain_ids(con, part: Path) -> int:
    """The documents of a part whose `_id` is not an ObjectId (what _PartWriter counts as it
    writes): for a chain whose counts are not all known (a compaction otherwise adds them up,
    without reading every document again)."""
    return con.execute(f"SELECT count(*) FILTER (WHERE NOT starts_with(doc, ?)) FROM {duck.parquet_source([part])}",
                       [_OBJECTID_JSON]).fetchall()[0][0]


def _part_stats(con, parts: list[Path]) -> tuple[int, datetime | None, datetime | None]:
    if not parts:
        return 0, None, None
    return con.execute(
        f"SELECT count(*), max(creation_date), max(update_date) FROM {duck.parquet_source(parts)}"
    ).fetchall()[0]


def _to_extended_json(documents: list[RawBSONDocument], rejects: list[Reject]) -> list[str]:
    """Relaxed Extended JSON of each document; a document libbson cannot convert (invalid UTF-8)
    is converted field by field; only a corrupt one is rejected whole."""
    out = []
    for document in documents:
        raw = document.raw  # a document of 4 KB or more comes as a memoryview of its batch
        raw = raw if isinstance(raw, bytes) else bytes(raw)
        try:
            out.append(bsonjs.dumps(raw))
        except ValueError:
            try:
                out.append(_tolerant_extended_json(raw))
            except (bson.errors.InvalidBSON, ValueError) as exc:
                rejects.append(Reject(_raw_id(document), "undecodable_bson", str(exc)))
    return out


# Invalid UTF-8 is decoded to lone surrogates (U+DC80..U+DCFF), one per undecodable byte.
_TOLERANT = CodecOptions(unicode_decode_error_handler="surrogateescape", tz_aware=True,
                         datetime_conversion=DatetimeConversion.DATETIME_AUTO)
_RELAXED = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True,
                                 datetime_conversion=DatetimeConversion.DATETIME_AUTO)
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]")


def _tolerant_extended_json(raw: bytes) -> str:
    """Relaxed Extended JSON in which a string holding invalid UTF-8 becomes
    {"$invalidUtf8": text} (each bad byte written \\xNN), so that only the rows reading that
    field are rejected (`invalid_utf8`, loader/sql/bson.sql)."""
    return json_util.dumps(_mark_invalid_utf8(bson.decode(raw, _TOLERANT)), json_options=_RELAXED)


def _mark_invalid_utf8(value):
    if isinstance(value, str):
        return {"$invalidUtf8": _escaped(value)} if _ESCAPED_BYTES.search(value) else value
    if isinstance(value, dict):
        return {_escaped(k): _mark_invalid_utf8(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_invalid_utf8(v) for v in value]
    return value


def _escaped(text: str) -> str:
    return _ESCAPED_BYTES.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def _raw_id(document: RawBSONDocument) -> str:
    try:
        value = document["_id"]
    except Exception:  # the document is broken beyond its _id
        return ""
    return str(value)


def _write_rejects(con, rejects: list[Reject], path: Path) -> None:
    table = pa.Table.from_pylist([r.__dict__ | {"_id": r.source_id} for r in rejects], schema=_REJECT_SCHEMA)
    con.register("extract_rejects", table)
    duck.run(con, f"COPY extract_rejects TO {duck.sql_literal(str(path))} ({duck.PARQUET_OPTIONS})")
    con.unregister("extract_rejects")


class _PartWriter:
    """Buffers Extended JSON documents and writes them as numbered Parquet parts, each while the
    next one fills (at most one part in flight per writer: memory stays bounded)."""

    def __init__(self, con, directory: Path, prefix: str = "part"):
        self.con = con
        self.directory = directory
        self.prefix = prefix
        self.parts: list[Path] = []
        self._buffer: list[str] = []
        self._bytes = 0
        self._pending: Future | None = None
        self.plain_ids = 0  # documents not starting with an ObjectId _id (see _shared_ids)

    def add_all(self, documents: list[str]) -> None:
        self._buffer.extend(documents)
        self._bytes += sum(map(len, documents))
        if len(self._buffer) >= PART_MAX_DOCUMENTS or self._bytes >= PART_MAX_BYTES:
            self._flush()

    def close(self, keep_empty: bool = False) -> None:
        """Write what is buffered and wait for it; with `keep_empty`, an empty part if none was
        written (an empty collection's full snapshot still has a file to read)."""
        if self._buffer or (keep_empty and not self.parts):
            self._flush()
        self._wait()

    def _flush(self) -> None:
        path = self.directory / f"{self.prefix}-{len(self.parts):05d}.parquet"
        batch = pa.table({"doc": pa.array(self._buffer, pa.large_string())}) if self._buffer else _EMPTY_BATCH
        self.plain_ids += batch.num_rows - (pc.sum(pc.starts_with(batch["doc"], _OBJECTID_JSON)).as_py() or 0)
        self._wait()
        self._pending = _PART_WRITES.submit(self._write, batch, path)
        self.parts.append(path)
        self._buffer, self._bytes = [], 0

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _write(self, batch: pa.Table, path: Path) -> None:
        self.con.register("batch", batch)
        # One parse per document for the three fields: every json_extract of a document parses it
        # whole, and a vector of large documents (5M-document dataset: 441 `contents` of 170 KB)
        # parsed several times over exceeded DuckDB's 1 GB. Their types are columns of a subquery:
        # a macro given bson_type(...) pastes it at each use, and DuckDB took 28 ms to plan the
        # query (8 ms so), more than writing a delta's few documents.
        write_document_part(self.con, """
            SELECT bson_id_typed(i, ti) AS _id, bson_to_timestamp_typed(c, tc) AS creation_date,
                   bson_to_timestamp_typed(u, tu) AS update_date, doc
            FROM (SELECT *, bson_type(i) AS ti, bson_type(c) AS tc, bson_type(u) AS tu
                  FROM (SELECT doc, f[1] AS i, f[2] AS c, f[3] AS u
                        FROM (SELECT doc, json_extract(doc, ['$._id', '$.creation_date', '$.update_date']) AS f FROM batch)))""", path)
        self.con.unregister("batch")
