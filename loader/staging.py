"""The staging area: the only interface between the stages.

    staging/
      manifest.json                               snapshots per collection (written atomically)
      snapshots/<collection>/<snapshot_id>/        one complete extract of a collection
          part-00000.parquet ...                   _id, creation_date, update_date, doc (Extended JSON)
          rejects.parquet                          documents that could not be decoded (if any)
      tables/<table>.parquet                       transform output: the rows to load
      issues/<table>.parquet                       transform rejects, skips and warnings with reasons
      scopes/<table>.parquet                       keys whose rows the load replaces (relationship
                                                   parents, moments candidates)
      transform.json                               per-table counts of the last transform
      tmp/                                         scratch space (DuckDB spill files, COPY streams)

A snapshot is written under a hidden `.tmp-` directory and renamed into place once complete,
then recorded in the manifest: readers only ever see complete snapshots.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Snapshot:
    collection: str
    id: str
    kind: str  # "full"
    documents: int
    rejected: int
    started_at: str
    finished_at: str
    seconds: float
    max_creation_date: str | None
    max_update_date: str | None
    bytes: int
    source_missing: bool  # the collection does not exist in the source


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_snapshot_id(now: datetime | None = None) -> str:
    return (now or utc_now()).strftime("%Y%m%dT%H%M%S_%fZ")


class Staging:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ------------------------------------------------------------ layout
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def tmp_dir(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def snapshot_dir(self, collection: str, snapshot_id: str) -> Path:
        return self.root / "snapshots" / collection / snapshot_id

    def table_file(self, table: str) -> Path:
        return self.root / "tables" / f"{table}.parquet"

    def issues_file(self, table: str) -> Path:
        return self.root / "issues" / f"{table}.parquet"

    def scope_file(self, table: str) -> Path:
        return self.root / "scopes" / f"{table}.parquet"

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

    def commit_snapshot(self, scratch: Path, snapshot: Snapshot) -> None:
        """Make a complete snapshot visible: rename its directory, then record it."""
        final = self.snapshot_dir(snapshot.collection, snapshot.id)
        os.replace(scratch, final)
        manifest = self.read_manifest()
        manifest["collections"].setdefault(snapshot.collection, []).append(asdict(snapshot))
        self._write_manifest(manifest)

    def discard_scratch(self) -> None:
        """Remove leftovers of interrupted extracts (never visible to readers)."""
        for scratch in (self.root / "snapshots").glob("*/.tmp-*"):
            shutil.rmtree(scratch, ignore_errors=True)

    def read_manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"version": MANIFEST_VERSION, "collections": {}}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def _write_manifest(self, manifest: dict) -> None:
        write_json_atomically(self.manifest_path, manifest)

    def snapshots(self, collection: str) -> list[Snapshot]:
        return [Snapshot(**s) for s in self.read_manifest()["collections"].get(collection, [])]

    def latest(self, collection: str) -> Snapshot | None:
        found = self.snapshots(collection)
        return found[-1] if found else None

    def snapshot_parts(self, snapshot: Snapshot) -> list[Path]:
        return sorted(self.snapshot_dir(snapshot.collection, snapshot.id).glob("part-*.parquet"))

    def current_parts(self, collection: str) -> list[Path]:
        """Parquet files holding the current documents of a collection (latest full snapshot)."""
        snapshot = self.latest(collection)
        if snapshot is None:
            raise StagingError(f"collection '{collection}' has no snapshot in {self.root}: run `loader extract` first")
        return self.snapshot_parts(snapshot)

    # ------------------------------------------------------------ transform report
    def write_transform_report(self, report: dict) -> None:
        write_json_atomically(self.transform_report_path, report)

    def read_transform_report(self) -> dict:
        if not self.transform_report_path.exists():
            raise StagingError(f"no transform output in {self.root}: run `loader transform` first")
        return json.loads(self.transform_report_path.read_text(encoding="utf-8"))


class StagingError(Exception):
    """The staging area lacks what a stage needs."""


def write_json_atomically(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(path.suffix + ".tmp")
    scratch.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    os.replace(scratch, path)
