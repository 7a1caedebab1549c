"""MongoDB -> staged Parquet snapshots.

Each needed collection is read with one cursor, projected to the fields the config uses, as raw
BSON (no Python dicts): libbson (python-bsonjs) turns each document into relaxed Extended JSON,
which keeps every BSON type recoverable, and DuckDB writes the batches to Parquet with the typed
columns `_id`, `creation_date`, `update_date` next to the document. Typing the document's fields
is the transform's job, so a value of an unexpected type is never lost here (pymongoarrow would
turn it into null or raise).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bsonjs
import pyarrow as pa
import pymongo
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.errors import PyMongoError

from loader import duck
from loader.progress import ProgressHook
from loader.settings import Settings
from loader.staging import Snapshot, Staging, new_snapshot_id, utc_now

RAW = CodecOptions(document_class=RawBSONDocument)
# A part file is flushed at whichever comes first (bounded memory whatever the documents' size).
PART_MAX_DOCUMENTS = 250_000
PART_MAX_BYTES = 128 * 1024 * 1024

_EMPTY_BATCH = pa.table({"doc": pa.array([], pa.large_string())})
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
) -> list[Snapshot]:
    """Stage a full snapshot of each collection (name -> projected fields)."""
    client = connect(settings)
    try:
        db = client[settings.mongodb_database]
        existing = set(db.list_collection_names())
        staging.discard_scratch()
        con = duck.connect(spill_dir=staging.tmp_dir)
        return [
            stage_collection(db, con, staging, name, fields, name in existing, settings.batch_size, on_progress)
            for name, fields in sorted(collections.items())
        ]
    except PyMongoError as exc:
        raise SourceError(f"reading MongoDB failed: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()


def stage_collection(
    db: pymongo.database.Database,
    con,
    staging: Staging,
    name: str,
    fields: set[str],
    exists: bool,
    batch_size: int,
    on_progress: ProgressHook | None = None,
) -> Snapshot:
    hook = on_progress or ProgressHook()
    snapshot_id = new_snapshot_id()
    started, clock = utc_now(), time.perf_counter()
    scratch = staging.begin_snapshot(name, snapshot_id)
    writer = _PartWriter(con, scratch)
    rejects: list[Reject] = []
    if exists:
        collection = db.get_collection(name, codec_options=RAW)
        hook.start(name, collection.estimated_document_count())
        cursor = collection.find({}, projection={f: 1 for f in sorted(fields)}, batch_size=batch_size)
        for chunk in _chunks(cursor, batch_size):
            writer.add_all(_to_extended_json(chunk, rejects))
            hook.advance(name, len(chunk))
    else:
        hook.start(name, 0)
    writer.close()
    hook.finish(name)
    if rejects:
        _write_rejects(con, rejects, scratch / "rejects.parquet")

    documents, max_created, max_updated = con.execute(
        f"SELECT count(*), max(creation_date), max(update_date) FROM {duck.parquet_source(writer.parts)}"
    ).fetchall()[0]
    snapshot = Snapshot(
        collection=name,
        id=snapshot_id,
        kind="full",
        documents=documents,
        rejected=len(rejects),
        started_at=started.isoformat(),
        finished_at=utc_now().isoformat(),
        seconds=round(time.perf_counter() - clock, 3),
        max_creation_date=max_created.isoformat() if max_created else None,
        max_update_date=max_updated.isoformat() if max_updated else None,
        bytes=sum(p.stat().st_size for p in scratch.iterdir()),
        source_missing=not exists,
    )
    staging.commit_snapshot(scratch, snapshot)
    return snapshot


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

    def __init__(self, con, directory: Path):
        self.con = con
        self.directory = directory
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

    def _flush(self) -> None:
        path = self.directory / f"part-{len(self.parts):05d}.parquet"
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
