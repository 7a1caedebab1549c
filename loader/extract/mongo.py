"""MongoDB -> staged Parquet snapshots.

Each needed collection is read with one cursor, projected to the fields the config uses, as raw
BSON (no Python dicts): libbson (python-bsonjs) turns each document into relaxed Extended JSON,
which keeps every BSON type recoverable, and DuckDB writes the batches to Parquet with the typed
columns `_id`, `creation_date`, `update_date` next to the document. Typing the document's fields
is the transform's job, so a value of an unexpected type is never lost here (pymongoarrow would
turn it into null or raise).

The first snapshot of a collection is full; later ones are deltas (documents stamped at or
after the watermark, plus tombstones of deleted documents, MAPPING.md 5.2), see loader/staging.py.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bsonjs
import pyarrow as pa
import pymongo
from bson import json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError

from loader import duck
from loader.progress import ProgressHook
from loader.settings import Settings
from loader.staging import BASES, COMPACTED, DELTA, FULL, Snapshot, Staging, new_snapshot_id, utc_now

RAW = CodecOptions(document_class=RawBSONDocument)
# A part file is flushed at whichever comes first (bounded memory whatever the documents' size).
PART_MAX_DOCUMENTS = 250_000
PART_MAX_BYTES = 128 * 1024 * 1024

_EMPTY_BATCH = pa.table({"doc": pa.array([], pa.large_string())})
# A chain longer than this (a base and its deltas) is compacted into one base after an extract.
MAX_DELTAS = 16
_REJECT_SCHEMA = pa.schema([("_id", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


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
            connectTimeoutMS=timeout_ms,
            appname="loader",
        )
        client.admin.command("ping")
    except PyMongoError as exc:
        raise SourceError(f"cannot reach MongoDB at {settings.mongodb_label()}: {type(exc).__name__}") from None
    return client


def extract(
    settings: Settings,
    staging: Staging,
    collections: dict[str, set[str]],
    on_progress: ProgressHook | None = None,
    full: set[str] = frozenset(),
) -> list[Snapshot]:
    """Stage each collection (name -> projected fields): a delta snapshot of what changed since
    its watermark, or a full snapshot (first extract, projection changed, or named in `full`)."""
    client = connect(settings)
    try:
        db = client[settings.mongodb_database]
        existing = set(db.list_collection_names())
        staging.discard_scratch()
        con = duck.connect(spill_dir=staging.tmp_dir)
        snapshots = []
        for name, fields in sorted(collections.items()):
            source = Source(db, name, tuple(sorted(fields)), name in existing, settings.batch_size)
            snapshots.append(stage_collection(con, staging, source, name in full, settings.watermark_overlap_seconds, on_progress))
        return snapshots
    except PyMongoError as exc:
        raise SourceError(f"reading MongoDB failed: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()


@dataclass
class Source:
    """One collection as the extract reads it: projected raw BSON documents, in batches."""

    db: pymongo.database.Database
    name: str
    fields: tuple[str, ...]
    exists: bool
    batch_size: int

    @property
    def collection(self):
        return self.db.get_collection(self.name, codec_options=RAW)

    def find(self, query: dict, projection: tuple[str, ...] | None = None) -> Iterator[list[RawBSONDocument]]:
        if not self.exists:
            return iter(())
        fields = self.fields if projection is None else projection
        cursor = self.collection.find(query, projection={f: 1 for f in fields}, batch_size=self.batch_size)
        return _chunks(cursor, self.batch_size)

    def count(self) -> int:
        return self.collection.count_documents({}) if self.exists else 0


def stage_collection(
    con, staging: Staging, source: Source, force_full: bool, overlap_seconds: int, on_progress: ProgressHook | None = None
) -> Snapshot:
    """Write one snapshot of a collection; a delta without change is not recorded."""
    hook = on_progress or ProgressHook()
    snapshot_id = new_snapshot_id()
    started, clock = utc_now(), time.perf_counter()
    scratch = staging.begin_snapshot(source.name, snapshot_id)
    full, since, _ = next_snapshot(staging, source.name, source.fields, force_full, overlap_seconds)
    query = {} if since is None else {"$or": [{"creation_date": {"$gte": since}}, {"update_date": {"$gte": since}}]}

    writer = _PartWriter(con, scratch)
    rejects: list[Reject] = []
    hook.start(source.name, source.collection.estimated_document_count() if full and source.exists else 0)
    for chunk in source.find(query):
        writer.add_all(_to_extended_json(chunk, rejects))
        hook.advance(source.name, len(chunk))
    writer.close()
    deleted = 0
    if not full:
        deleted = _detect_deletions(con, staging, source, scratch, writer, rejects, hook)
    hook.finish(source.name)
    if rejects:
        _write_rejects(con, rejects, scratch / "rejects.parquet")

    documents, max_created, max_updated = _part_stats(con, writer.parts)
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
        fields=source.fields,
    )
    if full or documents or deleted or rejects:
        staging.commit_snapshot(scratch, snapshot)
        if not full and len(staging.chain(source.name)) > MAX_DELTAS:
            compact(con, staging, source.name)
    else:
        shutil.rmtree(scratch)
    return snapshot


def next_snapshot(staging: Staging, name: str, fields: tuple[str, ...], force_full: bool,
                  overlap_seconds: int) -> tuple[bool, datetime | None, str]:
    """(full?, start of the delta, why) of the next snapshot of a collection."""
    base = next((s for s in reversed(staging.snapshots(name)) if s.kind in BASES), None)
    reason = "forced" if force_full else "first extract" if base is None else "projection changed" if base.fields != fields else None
    if reason:
        return True, None, f"full ({reason})"
    since = _delta_start(staging.watermark(name), overlap_seconds)
    return False, since, f"delta since {since.isoformat()}" if since else "delta (no timestamp staged yet: every document)"


def _delta_start(watermark: str | None, overlap_seconds: int) -> datetime | None:
    """The watermark (inclusive, MAPPING.md 5.2) minus the optional overlap; None: read all."""
    if watermark is None:
        return None
    return datetime.fromisoformat(watermark).replace(tzinfo=timezone.utc) - timedelta(seconds=overlap_seconds)


def _detect_deletions(con, staging: Staging, source: Source, scratch: Path, writer: _PartWriter,
                      rejects: list[Reject], hook: ProgressHook) -> int:
    """Tombstones for documents gone from the source. Counting is enough when nothing was
    deleted: the source must hold the staged live documents plus the new ones of this delta.
    Otherwise the _id set is read (ids.parquet) and compared; documents the delta missed
    because they carry no timestamp are fetched as well."""
    view = staging.view_sql(source.name)
    staged, new = con.execute(
        f"SELECT (SELECT count(*) FROM ({view})), "
        f"(SELECT count(*) FROM (SELECT _id FROM {duck.parquet_source(writer.parts)} ANTI JOIN ({view}) USING (_id)))"
    ).fetchall()[0]
    if source.count() == staged + new:
        return 0
    ids = _PartWriter(con, scratch, prefix="ids")
    for chunk in source.find({}, projection=("_id",)):
        ids.add_all(_to_extended_json(chunk, rejects))
    ids.close()
    known = f"SELECT _id FROM ({view}) UNION SELECT _id FROM {duck.parquet_source(writer.parts)}"
    unseen = [
        json_util.loads(doc)["_id"]
        for (doc,) in con.execute(
            f"SELECT doc FROM {duck.parquet_source(ids.parts)} WHERE _id NOT IN ({known})"
        ).fetchall()
    ]
    for start in range(0, len(unseen), source.batch_size):
        for chunk in source.find({"_id": {"$in": unseen[start:start + source.batch_size]}}):
            writer.add_all(_to_extended_json(chunk, rejects))
            hook.advance(source.name, len(chunk))
    writer.flush_remaining()
    tombstones = scratch / "tombstones.parquet"
    duck.run(con, f"COPY (SELECT _id FROM ({view}) ANTI JOIN {duck.parquet_source(ids.parts)} USING (_id) ORDER BY _id) "
                  f"TO {duck.sql_literal(str(tombstones))} (FORMAT parquet)")
    deleted = con.execute(f"SELECT count(*) FROM read_parquet({duck.sql_literal(str(tombstones))})").fetchall()[0][0]
    if not deleted:
        tombstones.unlink()
    return deleted


def compact(con, staging: Staging, collection: str) -> Snapshot:
    """Rewrite the current view of a collection as one `compacted` base snapshot (the history
    stays; readers of the view then read one snapshot instead of a base and many deltas)."""
    clock, started = time.perf_counter(), utc_now()
    snapshot_id = new_snapshot_id()
    latest = staging.snapshots(collection)[-1]
    scratch = staging.begin_snapshot(collection, snapshot_id)
    part = scratch / "part-00000.parquet"
    duck.run(con, f"COPY ({staging.view_sql(collection)} ORDER BY _id) TO {duck.sql_literal(str(part))} (FORMAT parquet, COMPRESSION zstd)")
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
    )
    staging.commit_snapshot(scratch, snapshot)
    return snapshot


def _part_stats(con, parts: list[Path]) -> tuple[int, datetime | None, datetime | None]:
    if not parts:
        return 0, None, None
    return con.execute(
        f"SELECT count(*), max(creation_date), max(update_date) FROM {duck.parquet_source(parts)}"
    ).fetchall()[0]


def _chunks(cursor: Iterable[RawBSONDocument], size: int) -> Iterator[list[RawBSONDocument]]:
    chunk: list[RawBSONDocument] = []
    for document in cursor:
        chunk.append(document)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _to_extended_json(documents: list[RawBSONDocument], rejects: list[Reject]) -> list[str]:
    """Relaxed Extended JSON of each document; undecodable ones (invalid UTF-8...) are rejected."""
    out = []
    for document in documents:
        try:
            out.append(bsonjs.dumps(document.raw))
        except ValueError as exc:
            rejects.append(Reject(_raw_id(document), "undecodable_bson", str(exc)))
    return out


def _raw_id(document: RawBSONDocument) -> str:
    try:
        value = document["_id"]
    except Exception:  # the document is broken beyond its _id
        return ""
    return str(value)


def _write_rejects(con, rejects: list[Reject], path: Path) -> None:
    table = pa.Table.from_pylist([r.__dict__ | {"_id": r.source_id} for r in rejects], schema=_REJECT_SCHEMA)
    con.register("extract_rejects", table)
    duck.run(con, f"COPY extract_rejects TO {duck.sql_literal(str(path))} (FORMAT parquet)")
    con.unregister("extract_rejects")


class _PartWriter:
    """Buffers Extended JSON documents and writes them as numbered Parquet parts."""

    def __init__(self, con, directory: Path, prefix: str = "part"):
        self.con = con
        self.directory = directory
        self.prefix = prefix
        self.parts: list[Path] = []
        self._buffer: list[str] = []
        self._bytes = 0

    def add_all(self, documents: list[str]) -> None:
        self._buffer.extend(documents)
        self._bytes += sum(map(len, documents))
        if len(self._buffer) >= PART_MAX_DOCUMENTS or self._bytes >= PART_MAX_BYTES:
            self._flush()

    def close(self) -> None:
        if self._buffer or not self.parts:  # an empty collection still gets one (empty) part
            self._flush()

    def flush_remaining(self) -> None:
        if self._buffer:
            self._flush()

    def _flush(self) -> None:
        path = self.directory / f"{self.prefix}-{len(self.parts):05d}.parquet"
        batch = pa.table({"doc": pa.array(self._buffer, pa.large_string())}) if self._buffer else _EMPTY_BATCH
        self.con.register("batch", batch)
        duck.run(self.con, 
            f"""COPY (
                  SELECT bson_id(j) AS _id,
                         bson_to_timestamp(json_extract(j, '$.creation_date')) AS creation_date,
                         bson_to_timestamp(json_extract(j, '$.update_date')) AS update_date,
                         doc
                  FROM (SELECT doc, CAST(doc AS JSON) AS j FROM batch)
                ) TO {duck.sql_literal(str(path))} (FORMAT parquet, COMPRESSION zstd)"""
        )
        self.con.unregister("batch")
        self.parts.append(path)
        self._buffer, self._bytes = [], 0
