"""A mongodump -> staged Parquet snapshots, without a MongoDB server.

Three forms are read, told apart by their first bytes (not their names):
- a dump folder, `<root>/<database>/<collection>.bson` (`.bson.gz` with `mongodump --gzip`); the
  path may be the root (then the folder named MONGODB_DATABASE is read) or the database folder;
- a tar of such a folder, gzipped or not (the folder named MONGODB_DATABASE at any depth);
- a `mongodump --archive` file, gzipped or not (`--archive --gzip` compresses the whole stream).
A tar or an archive is unpacked in one streaming pass into a scratch folder under staging/tmp
(only the collections the mapping needs), read like a dump folder, then removed.

Every collection is staged by mongo.stage_collection, as from a server, as a full snapshot: a dump
is a complete copy without change history (the transform re-derives, the load writes the
differences). A needed collection absent from the dump is staged like one absent from the server.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple
from urllib.parse import quote, unquote

import bson
from bson.errors import InvalidBSON
from bson.raw_bson import RawBSONDocument

from loader.extract import mongo
from loader.progress import ProgressHook
from loader.settings import Settings
from loader.staging import Snapshot, Staging

GZIP_MAGIC = b"\x1f\x8b"
# The archive format follows mongo-tools' common/archive/archive.go (MagicNumber, terminator,
# NamespaceHeader), prelude.go (magic, then one block: the archive header and one metadata
# document per collection), parser.go (a block: a header document, body documents, the
# terminator) and multiplexer.go (per namespace: blocks of documents, interleaved with other
# namespaces', then an EOF header in a block of its own).
ARCHIVE_MAGIC = (0x8199E26D).to_bytes(4, "little")
TERMINATOR = b"\xff\xff\xff\xff"
TAR_MAGIC = (257, b"ustar")  # offset and bytes of the POSIX and GNU tar magic
MIN_DOCUMENT_BYTES = 5  # an empty document
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # MongoDB's limit (mongo-tools' db.MaxBSONSize)
BATCH_MAX_BYTES = 16 * 1024 * 1024  # a batch is bounded like a server's: memory stays bounded
READ_BUFFER = 1024 * 1024
COLLECTION_SUFFIXES = (".bson", ".bson.gz")
ARCHIVE, TAR = "archive", "tar"


class DumpError(mongo.SourceError):
    """A mongodump cannot be read (a one-line message naming the file)."""


class DumpFile(NamedTuple):
    path: Path  # a .bson or .bson.gz file
    origin: str  # what error messages name: the file, or the tar and its member


def extract(settings: Settings, staging: Staging, collections: list[str], dump: Path,
            on_progress: ProgressHook | None = None, on_staged: mongo.StagedHook | None = None) -> list[Snapshot]:
    """Stage each collection of the mongodump at `dump` as a full snapshot."""
    wanted = set(collections)
    with _collection_files_of(Path(dump), settings.mongodb_database, wanted, staging.tmp_dir) as files:
        sources = [DumpSource(name, files.get(name), settings.batch_size) for name in collections]
        return mongo.stage_in_parallel(settings, staging, sources, full=wanted, ranges=1, on_progress=on_progress,
                                       on_staged=on_staged)


@dataclass
class DumpSource:
    """One collection of a dump, read as mongo.Source reads a server's: raw BSON documents in
    batches. Only ever read whole (a dump has no index to serve a filter)."""

    name: str
    file: DumpFile | None  # None: the dump lacks the collection
    batch_size: int
    changes: None = None  # a dump has no change stream: its snapshots are full,
    position: None = None  # and a later extract from a server counts

    @property
    def exists(self) -> bool:
        return self.file is not None

    def read(self, query: dict, projection: dict | None = None) -> Iterator[list[RawBSONDocument]]:
        if query or projection:
            raise DumpError(f"a dump is staged whole: {self.name} cannot be read with {query or projection}")
        if self.file is None:
            return
        with _reading(self.file.origin), _open(self.file.path, self.file.path.suffix == ".gz") as stream:
            yield from _batches(_documents(stream, self.file.origin), self.batch_size)

    def count(self) -> int:
        """Unknown without reading the file: 0 (a full snapshot needs no count)."""
        return 0


# ---------------------------------------------------------------- locating the collections

@contextmanager
def _collection_files_of(path: Path, database: str, wanted: set[str], scratch_root: Path) -> Iterator[dict[str, DumpFile]]:
    """The files of the wanted collections of `database` in the dump at `path`: a folder's own,
    or a tar's or an archive's unpacked into a scratch folder, removed afterwards."""
    if path.is_dir():
        yield _folder_files(path, database, wanted)
        return
    kind, gzipped = _file_kind(path)
    scratch = Path(tempfile.mkdtemp(prefix="dump-", dir=scratch_root))
    try:
        with _reading(str(path)), _open(path, gzipped) as stream:
            unpack = _demultiplex if kind == ARCHIVE else _untar
            files = unpack(stream, str(path), database, wanted, scratch)
        yield files
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _folder_files(root: Path, database: str, wanted: set[str]) -> dict[str, DumpFile]:
    """The database folder is `root/<database>`, else `root` itself if it holds a needed
    collection (a root also holds `oplog.bson` with `mongodump --oplog`)."""
    if (root / database).is_dir():
        return _collection_files(root / database, wanted)
    if files := _collection_files(root, wanted):
        return files
    found = {folder.name for folder in root.iterdir() if folder.is_dir() and any(map(_is_collection_file, folder.iterdir()))}
    raise _no_database(str(root), database, found)


def _collection_files(folder: Path, wanted: set[str]) -> dict[str, DumpFile]:
    return {name: DumpFile(file, str(file)) for file in sorted(folder.iterdir()) if (name := _collection_name(file.name)) in wanted}


def _is_collection_file(path: Path) -> bool:
    return path.is_file() and _collection_name(path.name) is not None


def _collection_name(filename: str) -> str | None:
    """The collection a dump file holds (mongodump escapes names as URL paths: mongo-tools'
    common/util EscapeCollectionName), None for another file (`.metadata.json`, a view's only)."""
    suffix = next((s for s in COLLECTION_SUFFIXES if filename.endswith(s)), None)
    return unquote(filename.removesuffix(suffix)) if suffix else None


def _no_database(origin: str, database: str, found: set[str]) -> DumpError:
    return DumpError(f"{origin}: no database '{database}' (MONGODB_DATABASE) in this dump; "
                     f"databases found: {', '.join(sorted(found)) or 'none'}")


def _file_kind(path: Path) -> tuple[str, bool]:
    """(archive or tar, gzipped?) from the file's first bytes."""
    if not path.exists():
        raise DumpError(f"no mongodump at {path}: no such file or folder")
    with _reading(str(path)):
        with path.open("rb") as stream:
            gzipped = stream.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        with _open(path, gzipped) as stream:
            head = stream.read(TAR_MAGIC[0] + len(TAR_MAGIC[1]))
    if head.startswith(ARCHIVE_MAGIC):
        return ARCHIVE, gzipped
    if head[TAR_MAGIC[0]:] == TAR_MAGIC[1]:
        return TAR, gzipped
    raise DumpError(f"{path} is not a mongodump: neither a dump folder, a tar of one, nor a `mongodump --archive` "
                    f"file, gzipped or not (it starts with {head[:4].hex()}, an archive with {ARCHIVE_MAGIC.hex()})")


# ---------------------------------------------------------------- unpacking a tar or an archive

def _untar(stream: BinaryIO, origin: str, database: str, wanted: set[str], scratch: Path) -> dict[str, DumpFile]:
    """Copy the wanted collection files of the folder named `database` (at any depth) and of the
    tar's top to scratch, in one pass; the folder's are the database's when it exists."""
    copied: dict[str, dict[str, DumpFile]] = {database: {}, "": {}}  # by folder name ("": the top)
    found: set[str] = set()
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            path = PurePosixPath(member.name)
            name = _collection_name(path.name)
            if not member.isfile() or name is None:
                continue
            folder = path.parent.name
            found.add(folder)
            if name in wanted and folder in copied:
                if name in copied[folder]:
                    raise DumpError(f"{origin}: {member.name} holds collection {name} a second time")
                target = scratch / ("database" if folder else "top") / path.name
                target.parent.mkdir(exist_ok=True)
                with tar.extractfile(member) as source, target.open("wb") as copy:
                    shutil.copyfileobj(source, copy, READ_BUFFER)
                copied[folder][name] = DumpFile(target, f"{origin} ({member.name})")
    if database in found:
        return copied[database]
    if copied[""]:
        return copied[""]
    raise _no_database(origin, database, found - {""})


def _demultiplex(stream: BinaryIO, origin: str, database: str, wanted: set[str], scratch: Path) -> dict[str, DumpFile]:
    """Write the documents of the wanted collections of `database` to `<scratch>/<collection>.bson`
    in one pass over the archive. Every namespace begun, and every wanted collection the prelude
    lists, must be ended by its EOF header: else the archive was cut short. (The EOF header's CRC
    is not checked: Python has no CRC-64 but a per-byte one, far too slow for a dump.)"""
    stream.read(len(ARCHIVE_MAGIC))  # checked by _file_kind
    _read_document(stream, origin)  # the archive header: format, server and tool versions
    prelude = [bson.decode(metadata) for metadata in _documents(stream, origin, block=True)]
    if database not in {m["db"] for m in prelude}:
        raise _no_database(origin, database, {m["db"] for m in prelude})
    expected = {(database, m["collection"]) for m in prelude
                if m["db"] == database and m["collection"] in wanted and m.get("type") not in ("view", "timeseries")}
    begun, ended, outputs = set(), set(), {}
    with ExitStack() as files:
        while (header := _read_document(stream, origin)) is not None:
            namespace, at_end = _namespace(header, origin)
            if namespace in ended:
                raise DumpError(f"{origin}: corrupt archive: {'.'.join(namespace)} continues after its end")
            begun.add(namespace)
            if namespace not in outputs and namespace[0] == database and namespace[1] in wanted:
                outputs[namespace] = files.enter_context((scratch / f"{quote(namespace[1], safe='')}.bson").open("wb"))
            for document in _documents(stream, origin, block=True):
                if at_end:
                    raise DumpError(f"{origin}: corrupt archive: documents in the EOF block of {'.'.join(namespace)}")
                if namespace in outputs:
                    outputs[namespace].write(document)
            if at_end:
                ended.add(namespace)
    if unfinished := sorted((begun | expected) - ended):
        raise DumpError(f"{origin}: the archive ends before the end of {', '.join(map('.'.join, unfinished))} (truncated?)")
    return {collection: DumpFile(Path(output.name), origin) for (_, collection), output in outputs.items()}


def _namespace(header: bytes, origin: str) -> tuple[tuple[str, str], bool]:
    """((database, collection), EOF?) of a block's namespace header."""
    fields = bson.decode(header)
    if not fields.get("collection"):
        raise DumpError(f"{origin}: corrupt archive: a block header without a collection")
    return (fields.get("db", ""), fields["collection"]), bool(fields.get("EOF"))


# ---------------------------------------------------------------- reading BSON documents

@contextmanager
def _reading(origin: str) -> Iterator[None]:
    """Failures of I/O, decompression and decoding as one-line DumpErrors naming the file."""
    try:
        yield
    except (OSError, EOFError, zlib.error, tarfile.TarError, InvalidBSON) as exc:
        raise DumpError(f"cannot read {origin}: {exc}") from None


def _open(path: Path, gzipped: bool) -> BinaryIO:
    return gzip.open(path, "rb") if gzipped else path.open("rb", buffering=READ_BUFFER)


def _documents(stream: BinaryIO, origin: str, block: bool = False) -> Iterator[bytes]:
    """The BSON documents up to the end of the stream (a .bson file), or up to the terminator of
    an archive block (`block`)."""
    while (document := _read_document(stream, origin, block)) is not None:
        yield document


def _read_document(stream: BinaryIO, origin: str, block: bool = False) -> bytes | None:
    """The next document's bytes; None at the end of the stream, or of the block with `block`
    (inside a block the stream must not end). A document cut short or of an impossible length
    (not a document: corruption) is a DumpError."""
    document = stream.read(4)
    if document == (TERMINATOR if block else b""):
        return None
    size = int.from_bytes(document, "little")
    if len(document) == 4 and MIN_DOCUMENT_BYTES <= size <= MAX_DOCUMENT_BYTES:
        document += stream.read(size - 4)
        if len(document) == size and document[-1] == 0:
            return document
    raise DumpError(f"{origin}: truncated or corrupt BSON: the document at byte {stream.tell() - len(document)} "
                    f"is cut short or of an impossible length")


def _batches(documents: Iterator[bytes], max_documents: int) -> Iterator[list[RawBSONDocument]]:
    """Documents decoded as a server's batches are (mongo.Source), by `max_documents` or
    BATCH_MAX_BYTES, whichever comes first."""
    batch: list[bytes] = []
    size = 0
    for document in documents:
        batch.append(document)
        size += len(document)
        if len(batch) >= max_documents or size >= BATCH_MAX_BYTES:
            yield bson.decode_all(b"".join(batch), mongo.RAW)
            batch, size = [], 0
    if batch:
        yield bson.decode_all(b"".join(batch), mongo.RAW)
