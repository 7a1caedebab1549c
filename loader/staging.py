"""The staging area: the only interface between the stages.

    staging/
      manifest.json                      per collection the snapshots of its current view (its last
                                         base and the deltas after it), and the source's change-stream
                                         position per collection (atomic writes)
      history/<collection>.jsonl         the collection's earlier snapshots, oldest first, one JSON
                                         object a line (appended, never rewritten)
      snapshots/<collection>/<id>/       one snapshot of a collection:
          part-00000.parquet ...         documents: _id, creation_date, update_date, doc (Extended JSON)
          tombstones.parquet             _id of documents found deleted (delta snapshots)
          rejects.parquet                documents that could not be decoded (if any)
      derived/<table>/                   per source unit (document, parent, candidate): its typed
                                         rows and dropped records, before foreign keys and merging
          base-<gen>.parquet             every unit, as of the generation's last whole write
          delta-<gen>-<seq>.parquet      the units re-derived by one incremental transform
      derived/_references/<collection>/  the same for the 24-hex tokens of every document (the
                                         logbook moments' selection follows references by them)
      tables/<table>.parquet             transform output: every row the table must hold
      issues/<table>.parquet             rejects, skips and warnings of those rows, with reasons
      transform.json                     per table: counts, the snapshots consumed, the output state
      loaded/<table>/<state>.parquet     the rows PostgreSQL holds (its loader_sync_state names
                                         the state), the baseline of the next incremental load
      tmp/                               scratch space (DuckDB spill files, COPY streams, the unit
                                         documents of an incremental transform)

Snapshots are append-only. A `full` snapshot holds a whole collection; a `delta` holds the
documents changed since the previous watermark and the tombstones of deleted ones; a `compacted`
snapshot is the current view rewritten as one base when deltas pile up (it adds no change). The
current view of a collection is its last base (full or compacted) with the later deltas applied:
the latest version of every live document.

A snapshot is written under a hidden `.tmp-` directory and renamed into place once complete,
then recorded in the manifest: readers only ever see complete snapshots.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loader.duck import parquet_source, sql_literal, sql_literals

# 3: the snapshots before a collection's last base moved to history/<collection>.jsonl (2: all
# of them in manifest.json, which a write splits).
MANIFEST_VERSION = 3
_EMPTY_MANIFEST = {"version": MANIFEST_VERSION, "collections": {}}  # shared, never modified
FULL, DELTA, COMPACTED = "full", "delta", "compacted"
BASES = (FULL, COMPACTED)
DOCUMENT_COLUMNS = "_id, creation_date, update_date, doc"
NO_IDS = "SELECT CAST(NULL AS VARCHAR) AS _id WHERE false"  # an empty set of _ids, as a query
NO_DOCUMENTS = ("SELECT CAST(NULL AS VARCHAR) AS _id, CAST(NULL AS TIMESTAMP) AS creation_date, "
                "CAST(NULL AS TIMESTAMP) AS update_date, CAST(NULL AS VARCHAR) AS doc WHERE false")
# The documents of a snapshot the extract could not decode (_id, reason, detail).
REJECTS_FILE = "rejects.parquet"
# Document parts are written so that DuckDB's vectors of their rows (2,048 rows of a row group at a
# time) hold at most VECTOR_MAX_BYTES of Extended JSON: its JSON functions hold several times the
# JSON of a vector while they work on it, and a vector of 441 `contents` of 170 KB (5M-document
# dataset, unnesting their `viewed_by`) needed more than 1 GB. A row group is therefore cut where
# the next document would overflow its current vector; small documents keep whole vectors (row
# groups of DUCKDB_ROW_GROUP_ROWS, DuckDB's own size, read in parallel).
VECTOR_ROWS = 2048
VECTOR_MAX_BYTES = 2 * 1024 * 1024
DUCKDB_ROW_GROUP_ROWS = 60 * VECTOR_ROWS


def write_document_part(con, query: str, path: Path) -> None:
    """The query's documents (DOCUMENT_COLUMNS) as a zstd Parquet part, in row groups whose
    vectors hold at most VECTOR_MAX_BYTES of JSON (or one document)."""
    reader = con.sql(query).to_arrow_reader(VECTOR_ROWS)  # Arrow batches of a vector: bounded whatever the documents
    with pq.ParquetWriter(path, reader.schema, compression="zstd") as out:
        group: list[pa.RecordBatch] = []  # the slices of the row group being filled
        rows = vector_bytes = 0  # its rows, and the JSON bytes of its last vector so far
        for batch in reader:
            start = 0
            for row, length in enumerate(pc.fill_null(pc.binary_length(batch.column("doc")), 0).to_pylist()):
                if rows == DUCKDB_ROW_GROUP_ROWS or (vector_bytes and vector_bytes + length > VECTOR_MAX_BYTES):
                    out.write_table(pa.Table.from_batches([*group, batch.slice(start, row - start)]))
                    group, rows, vector_bytes, start = [], 0, 0, row
                rows += 1
                vector_bytes = 0 if rows % VECTOR_ROWS == 0 else vector_bytes + length
            group.append(batch.slice(start))
        if rows:
            out.write_table(pa.Table.from_batches(group))


@dataclass(frozen=True)
class Snapshot:
    collection: str
    id: str
    kind: str  # full | delta | compacted
    documents: int
    rejected: int
    started_at: str
    finished_at: str
    seconds: float
    max_creation_date: str | None
    max_update_date: str | None
    bytes: int
    source_missing: bool  # the collection does not exist in the source
    deleted: int = 0  # tombstones recorded
    since: str | None = None  # delta: the documents stamped at or after this instant
    fields: tuple[str, ...] = ()  # a projection (older snapshots); empty: whole documents
    # Documents whose _id may not be an ObjectId (None: not counted, older snapshots): only
    # they can share an _id text with another document (5 and "5"), which a delta cannot tell apart.
    plain_ids: int | None = None
    reason: str | None = None  # why a full snapshot was taken where a delta was due

    @property
    def watermark(self) -> str | None:
        stamps = [s for s in (self.max_creation_date, self.max_update_date) if s]
        return max(stamps) if stamps else None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_snapshot_id(now: datetime | None = None) -> str:
    return (now or utc_now()).strftime("%Y%m%dT%H%M%S_%fZ")


class Staging:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._manifest_lock = threading.Lock()
        self._parsed: dict[Path, tuple[tuple[int, int, int], object]] = {}  # file -> its version, parsed (_parsed_once)

    # ------------------------------------------------------------ layout
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def tmp_dir(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def history_path(self, collection: str) -> Path:
        return self.root / "history" / f"{collection}.jsonl"

    def snapshot_dir(self, collection: str, snapshot_id: str) -> Path:
        return self.root / "snapshots" / collection / snapshot_id

    def derived_rows(self, table: str) -> DerivedRows:
        return DerivedRows(self.root / "derived" / table)

    def references(self, collection: str) -> DerivedRows:
        """The 24-hex tokens of every document of a collection (_unit, ref), kept for the select
        SQL of a strategy that names the collection in its `references`."""
        return DerivedRows(self.root / "derived" / "_references" / collection)

    def table_file(self, table: str) -> Path:
        return self.root / "tables" / f"{table}.parquet"

    def issues_file(self, table: str) -> Path:
        return self.issues_dir / f"{table}.parquet"

    @property
    def issues_dir(self) -> Path:
        return self.root / "issues"

    def table_state(self, table: str) -> str | None:
        """The identity of a table's staged rows (a hash of tables/<table>.parquet), None before
        its first transform; PostgreSQL's loader_sync_state records the one it holds."""
        return file_hash(self.table_file(table))

    def loaded_file(self, table: str, state: str) -> Path:
        return self.root / "loaded" / table / f"{state}.parquet"

    def changes_dir(self, table: str) -> Path:
        return self.root / "changes" / table

    def change_file(self, table: str, before: str, after: str) -> Path:
        """What an incremental transform changed in tables/<table>.parquet from state `before` to
        `after`: the re-derived units' rows, and the identities they no longer have (`_removed`)."""
        return self.changes_dir(table) / f"{before}-{after}.parquet"

    @property
    def transform_report_path(self) -> Path:
        return self.root / "transform.json"

    # ------------------------------------------------------------ snapshots
    def begin_snapshot(self, collection: str, snapshot_id: str) -> Path:
        """A fresh scratch directory for a snapshot being written."""
        scratch = self.root / "snapshots" / collection / f".tmp-{snapshot_id}"
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        return scratch

    def commit_snapshot(self, scratch: Path, snapshot: Snapshot, position: str | None) -> None:
        """Make a complete snapshot visible: rename its directory, then record it and the change
        stream's position before its reads (None: none kept) in one manifest write."""
        final = self.snapshot_dir(snapshot.collection, snapshot.id)
        os.replace(scratch, final)
        self._record(snapshot.collection, snapshot, position)

    def positions(self) -> dict[str, str]:
        """Per collection, where the source's change stream stood before its last staged reads
        (loader/extract/changes.py); a collection without one: unknown."""
        return dict(self._current_manifest().get("positions", {}))

    def record_position(self, collection: str, position: str | None) -> None:
        self._record(collection, None, position)

    def _record(self, collection: str, snapshot: Snapshot | None, position: str | None) -> None:
        with self._manifest_lock:  # collections are staged in parallel threads
            manifest = self._current_manifest()
            collections = manifest["collections"]
            positions = dict(manifest.get("positions", {}))
            if snapshot is None and positions.get(collection) == position:
                return  # nothing to write (a dump's collections have none, and keep none)
            if position is None:
                positions.pop(collection, None)
            else:
                positions[collection] = position
            if snapshot is not None:
                collections = collections | {collection: [*collections.get(collection, []), asdict(snapshot)]}
            self._write_manifest(manifest | {"collections": collections, "positions": positions})

    def discard_scratch(self) -> None:
        """Remove leftovers of interrupted extracts (never visible to readers)."""
        for scratch in (self.root / "snapshots").glob("*/.tmp-*"):
            shutil.rmtree(scratch, ignore_errors=True)

    def read_manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"version": MANIFEST_VERSION, "collections": {}}
        manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        return manifest | {"version": MANIFEST_VERSION}

    def _write_manifest(self, manifest: dict) -> None:
        """Write the manifest, each collection's snapshots before its last base appended to its
        history first: the manifest, written once per collection extracted, stays as small as
        the current views (it held every snapshot ever staged before: 9 MB after 19,000 of
        them, a month of hourly runs). A crash between the two writes leaves a snapshot listed
        in both, read once."""
        collections = {}
        for collection, listed in manifest["collections"].items():
            base = max((i for i, s in enumerate(listed) if s["kind"] in BASES), default=0)
            if base:
                self._append_history(collection, listed[:base])
            collections[collection] = listed[base:]
        manifest = manifest | {"version": MANIFEST_VERSION, "collections": collections}
        written = write_json_atomically(self.manifest_path, manifest, indent=None)
        self._parsed[self.manifest_path] = (_file_version(written), manifest)  # what was just written: not parsed again

    def _append_history(self, collection: str, snapshots: list[dict]) -> None:
        path = self.history_path(collection)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            if out.tell() and not _ends_with_newline(path):  # an append a crash cut short
                out.write(b"\n")
            out.write("".join(json.dumps(s, default=str) + "\n" for s in snapshots).encode())

    def _history(self, collection: str) -> list[dict]:
        """The collection's earlier snapshots."""
        def parse(path: Path) -> list[dict]:
            return [entry for line in path.read_text(encoding="utf-8").splitlines() if (entry := _json_line(line))]

        return self._parsed_once(self.history_path(collection), parse, [])

    def _current_manifest(self) -> dict:
        """The manifest (a transform asks for it hundreds of times)."""
        return self._parsed_once(self.manifest_path, lambda path: self.read_manifest(), _EMPTY_MANIFEST)

    def _parsed_once(self, path: Path, parse: Callable[[Path], object], missing: object):
        """`parse(path)`, once per version of the file, told by its inode, modification time and
        size (a write replaces or appends to it); `missing` when there is no file. Shared: never
        modified (a writer writes a new object)."""
        try:
            version = _file_version(path.stat())
        except FileNotFoundError:
            return missing
        parsed = self._parsed.get(path)
        if parsed is None or parsed[0] != version:
            parsed = self._parsed[path] = (version, parse(path))
        return parsed[1]

    def collections(self) -> list[str]:
        return sorted(self._current_manifest()["collections"])

    def snapshots(self, collection: str) -> list[Snapshot]:
        """Every snapshot of the collection, oldest first: its history, then its current view."""
        entries = {s["id"]: s for s in [*self._history(collection), *self._listed(collection)]}
        return [_snapshot(s) for s in entries.values()]

    def _listed(self, collection: str) -> list[dict]:
        """The snapshots the manifest lists for the collection: its current view."""
        return self._current_manifest()["collections"].get(collection, [])

    def _with(self, collection: str, snapshot_id: str | None) -> list[Snapshot]:
        """The collection's snapshots, from its history too only when `snapshot_id` is not one
        of its current view."""
        listed = [_snapshot(s) for s in self._listed(collection)]
        return listed if snapshot_id is None or snapshot_id in {s.id for s in listed} else self.snapshots(collection)

    def chain(self, collection: str, upto: str | None = None) -> list[Snapshot]:
        """The snapshots making the current view (or the view as of snapshot `upto`): the last
        base and the deltas after it."""
        history = self._with(collection, upto)
        if upto is not None:
            history = history[: [s.id for s in history].index(upto) + 1]
        bases = [i for i, s in enumerate(history) if s.kind in BASES]
        if not bases:
            raise StagingError(f"collection '{collection}' has no snapshot in {self.root}: run `loader extract` first")
        return history[bases[-1]:]

    def current_base(self, collection: str) -> Snapshot | None:
        """The base of the collection's current view; None before its first snapshot."""
        return self.chain(collection)[0] if self._listed(collection) else None

    def watermark(self, collection: str) -> str | None:
        """The greatest timestamp staged for the collection (the next delta starts there)."""
        stamps = [s.watermark for s in self.chain(collection) if s.watermark]
        return max(stamps) if stamps else None

    def document_parts(self, snapshot: Snapshot) -> list[Path]:
        return sorted(self.snapshot_dir(snapshot.collection, snapshot.id).glob("part-*.parquet"))

    def tombstone_file(self, snapshot: Snapshot) -> Path:
        return self.snapshot_dir(snapshot.collection, snapshot.id) / "tombstones.parquet"

    def rejects_file(self, snapshot: Snapshot) -> Path:
        """The documents the extract could not decode (_id, reason, detail)."""
        return self.snapshot_dir(snapshot.collection, snapshot.id) / REJECTS_FILE

    def issue_log_sql(self) -> str | None:
        """A query of every recorded issue, in the columns of staging/issues (table, source_collection,
        source_id, kind, reason, column, value): the transform's issue log, and the extract's rejects
        of the snapshots in each collection's current view (table `(extract)`); None if there is none."""
        parts = [f"SELECT * FROM read_parquet({sql_literal(str(self.issues_dir / '*.parquet'))})"] \
            if any(self.issues_dir.glob("*.parquet")) else []
        parts += [
            f"SELECT '(extract)' AS \"table\", {sql_literal(s.collection)} AS source_collection, _id AS source_id, "
            f"'reject' AS kind, reason, NULL AS \"column\", detail AS value FROM read_parquet({sql_literal(str(self.rejects_file(s)))})"
            for collection in self.collections() for s in self.chain(collection) if s.rejected
        ]
        return " UNION ALL BY NAME ".join(parts) or None

    def view_sql(self, collection: str, upto: str | None = None) -> str:
        """A query of the current view (latest version of every live document), or of the view as
        of snapshot `upto`: the base minus every _id a later delta touched, plus the latest
        version of those that are still alive."""
        base, *deltas = self.chain(collection, upto)
        base_rows = f"SELECT {DOCUMENT_COLUMNS} FROM {parquet_source(self.document_parts(base))}"
        latest = self._latest_events_sql(deltas)
        if latest is None:
            return base_rows
        return f"""
WITH latest AS ({latest})
SELECT b.* FROM ({base_rows}) b ANTI JOIN latest USING (_id)
UNION ALL
SELECT {DOCUMENT_COLUMNS} FROM latest WHERE doc IS NOT NULL"""

    def changed_documents_sql(self, collection: str, consumed: str) -> str | None:
        """A query of the current version of the live documents changed after snapshot
        `consumed`, read from the deltas since (the base is not read); None when changes_since
        cannot tell them."""
        later = self._deltas_since(collection, consumed)
        if later is None:
            return None
        if not any(s.documents for s in later):
            return NO_DOCUMENTS
        return f"WITH latest AS ({self._latest_events_sql(later)}) SELECT {DOCUMENT_COLUMNS} FROM latest WHERE doc IS NOT NULL"

    def _latest_events_sql(self, deltas: list[Snapshot]) -> str | None:
        """The last event of each _id the deltas touch (in order): its version, or a tombstone
        (doc NULL); None without any."""
        events = [
            f"SELECT {DOCUMENT_COLUMNS}, {i} AS _seq FROM {parquet_source(self.document_parts(s))}"
            for i, s in enumerate(deltas)
            if s.documents
        ] + [
            f"SELECT _id, NULL AS creation_date, NULL AS update_date, NULL AS doc, {i} AS _seq "
            f"FROM read_parquet({sql_literal(str(self.tombstone_file(s)))})"
            for i, s in enumerate(deltas)
            if s.deleted
        ]
        if not events:
            return None
        return f"SELECT * FROM ({' UNION ALL '.join(events)}) QUALIFY row_number() OVER (PARTITION BY _id ORDER BY _seq DESC) = 1"

    def changes_since(self, collection: str, consumed: str | None) -> str | None:
        """A query of the _id of documents changed or deleted after snapshot `consumed`, or None
        when they cannot be told apart (nothing consumed yet, or a full snapshot since)."""
        later = self._deltas_since(collection, consumed)
        if later is None:
            return None
        touched = [
            f"SELECT _id FROM {parquet_source(self.document_parts(s))}" for s in later if s.documents
        ] + [f"SELECT _id FROM read_parquet({sql_literal(str(self.tombstone_file(s)))})" for s in later if s.deleted]
        return " UNION ".join(touched) if touched else NO_IDS

    def _deltas_since(self, collection: str, consumed: str | None) -> list[Snapshot] | None:
        """The deltas after snapshot `consumed` (a compacted snapshot repeats what they hold);
        None when there is a full snapshot since, or `consumed` is not one of the collection's."""
        history = self._with(collection, consumed)
        ids = [s.id for s in history]
        if consumed not in ids:
            return None
        later = history[ids.index(consumed) + 1:]
        if any(s.kind == FULL for s in later):
            return None
        return [s for s in later if s.kind == DELTA]

    def latest_id(self, collection: str) -> str:
        return self._listed(collection)[-1]["id"]

    # ------------------------------------------------------------ transform report
    def write_transform_report(self, report: dict) -> None:
        write_json_atomically(self.transform_report_path, report)

    def read_transform_report(self) -> dict:
        if not self.transform_report_path.exists():
            raise StagingError(f"no transform output in {self.root}: run `loader transform` first")
        return json.loads(self.transform_report_path.read_text(encoding="utf-8"))

    def transform_state(self) -> dict:
        """Per table, what the last transform consumed and produced ({} before the first)."""
        if not self.transform_report_path.exists():
            return {}
        return json.loads(self.transform_report_path.read_text(encoding="utf-8")).get("tables", {})


@dataclass(frozen=True)
class DerivedRows:
    """A table's derived rows, kept as a base plus deltas (like the snapshots) so that an
    incremental transform writes only the units it re-derived. A delta holds those units' rows
    and one marker row per unit (`_replaces`: the unit, every other column NULL), as a unit may
    have no rows left. The current rows: the base's units that no delta replaces, plus each other
    unit's rows in the latest delta replacing it. A new base starts a new generation (atomically:
    the base file is renamed into place); the files of older generations no longer count."""
    directory: Path

    def exists(self) -> bool:
        return self._generation() is not None

    def base(self) -> Path:
        return self.directory / f"base-{self._generation():06d}.parquet"

    def deltas(self) -> list[Path]:
        return sorted(self.directory.glob(f"delta-{self._generation():06d}-*.parquet"))

    def next_base(self) -> Path:
        return self.directory / f"base-{(self._generation() or 0) + 1:06d}.parquet"

    def next_delta(self) -> Path:
        return self.directory / f"delta-{self._generation():06d}-{len(self.deltas()) + 1:06d}.parquet"

    def current_sql(self) -> str:
        base = f"SELECT * FROM {parquet_source([self.base()])}"
        deltas = self.deltas()
        if not deltas:
            return base
        return f"""
WITH deltas AS (SELECT * FROM read_parquet([{sql_literals(map(str, deltas))}], filename = true, union_by_name = true)),
latest AS (SELECT _replaces AS _unit, max(filename) AS filename FROM deltas WHERE _replaces IS NOT NULL GROUP BY ALL)
SELECT b.* FROM ({base}) b ANTI JOIN latest USING (_unit)
UNION ALL BY NAME
SELECT d.* EXCLUDE (_replaces, filename) FROM deltas d SEMI JOIN latest USING (_unit, filename)"""

    def rows(self) -> tuple[int, int]:
        """Rows of the base, and of the deltas (markers included)."""
        return _parquet_rows([self.base()]), _parquet_rows(self.deltas())

    def _generation(self) -> int | None:
        bases = [int(path.stem.removeprefix("base-")) for path in self.directory.glob("base-*.parquet")]
        return max(bases, default=None)

    def remove_older_generations(self) -> None:
        current = {self.base(), *self.deltas()}
        for path in self.directory.glob("*.parquet"):
            if path not in current:
                path.unlink(missing_ok=True)
        # The single file of staging areas written before derived/<table>/ (read by nothing now).
        self.directory.with_name(f"{self.directory.name}.parquet").unlink(missing_ok=True)


def _parquet_rows(paths: list[Path]) -> int:
    return sum(pq.ParquetFile(path).metadata.num_rows for path in paths)


class StagingError(Exception):
    """The staging area lacks what a stage needs."""


def file_hash(path: Path) -> str | None:
    """Identity of a file's content (None: no file)."""
    if not path.exists():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:24]


def _snapshot(entry: dict) -> Snapshot:
    return Snapshot(**(entry | {"fields": tuple(entry.get("fields", ()))}))


def _json_line(line: str) -> dict | None:
    """A line of a history file; None for a line an interrupted append left incomplete."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as stream:
        stream.seek(-1, os.SEEK_END)
        return stream.read(1) == b"\n"


def _file_version(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells one version of a file from another that replaced it."""
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def write_json_atomically(path: Path, document: dict, indent: int | None = 2) -> os.stat_result:
    """Write the document to a scratch file renamed into place; returns the file's status as
    written (a rename keeps its inode and modification time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(path.suffix + ".tmp")
    scratch.write_text(json.dumps(document, indent=indent, default=str), encoding="utf-8")
    written = scratch.stat()
    os.replace(scratch, path)
    return written
