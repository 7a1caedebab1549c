"""What the user sees: progress bars while stages run and summary tables at the end (rich)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable
from rich.text import Text

from loader.load.schema import Difference
from loader.load.writer import LoadResult
from loader.progress import ProgressHook
from loader.staging import FULL, Snapshot, Staging
from loader.transform.runner import TableResult
from loader.verify import TableCheck

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:>10,.0f} {self.unit}/s" if speed else " " * (13 + len(self.unit)), style="cyan")


def progress_bars(unit: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        console=console,
    )


class Bars(ProgressHook):
    """One progress bar per collection or table."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def start(self, name: str, total: int | None) -> None:
        self.tasks[name] = self.progress.add_task(name, total=total or None)

    def advance(self, name: str, n: int) -> None:
        self.progress.advance(self.tasks[name], n)

    def finish(self, name: str) -> None:
        task = self.progress.tasks[self.tasks[name]]
        self.progress.update(self.tasks[name], total=task.completed)


def new_table(title: str, *columns: str) -> RichTable:
    table = RichTable(title=title, title_justify="left", header_style="bold")
    for i, column in enumerate(columns):
        numeric = i > 0 and column not in (
            "reasons", "snapshot", "collection", "strategy", "sync", "parents", "kind", "mode", "load", "transform", "next",
            "since", "watermark", "in view", "reason", "column", "value", "_id", "difference", "fix", "SQL",
            "rejects", "checksum", "status", "keys")
        table.add_column(column, justify="right" if numeric else "left")
    return table


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))


def schema_differences(found: list[Difference], applied: list[Difference] = ()) -> RichTable:
    listing = new_table(f"{len(found)} differences between PostgreSQL and the config", "table", "difference", "fix", "SQL")
    for difference in found:
        fix = "applied" if difference in applied else "additive" if difference.additive else "manual"
        listing.add_row(difference.table, difference.what, fix, Text(difference.fix))
    return listing


def issue_counts(con, log: str) -> RichTable:
    """Issues per table, kind and reason."""
    listing = new_table("Issues per table and reason", "table", "collection", "kind", "reason", "rows")
    for row in con.execute(f'SELECT "table", source_collection, kind, reason, count(*) FROM ({log}) '
                           "GROUP BY ALL ORDER BY kind, \"table\", reason").fetchall():
        listing.add_row(*row[:4], f"{row[4]:,}")
    return listing


def issue_examples(con, log: str, reason: str | None, examples: int) -> RichTable:
    """Up to `examples` issues per table and reason (those whose reason starts with `reason`)."""
    listing = new_table(f"Examples ({examples} per table and reason)", "table", "reason", "collection", "_id", "column", "value")
    for row in con.execute(
        f"SELECT \"table\", reason, source_collection, source_id, \"column\", value FROM ({log}) "
        "WHERE starts_with(reason, ?) QUALIFY row_number() OVER (PARTITION BY \"table\", reason ORDER BY source_id) <= ? "
        "ORDER BY \"table\", reason, source_id", [reason or "", examples]).fetchall():
        listing.add_row(*(Text(str(v)) if v is not None else "" for v in row))
    return listing


def extract_summary(snapshots: list[Snapshot]) -> RichTable:
    table = new_table("Extract", "collection", "kind", "documents", "deleted", "rejected", "seconds", "documents/s", "snapshot")
    for s in snapshots:
        rate = f"{s.documents / s.seconds:,.0f}" if s.seconds and s.documents else "-"
        note = "absent from source" if s.source_missing else s.id if s.kind == FULL or s.documents or s.deleted or s.rejected else "no change"
        note += f" ({s.reason})" if s.reason else ""
        table.add_row(s.collection, s.kind, f"{s.documents:,}", f"{s.deleted:,}", f"{s.rejected:,}", f"{s.seconds:.2f}", rate, note)
    return table


def run_timing(ended: dict[str, float]) -> str:
    """When each stage of `loader run` ended, counted from the start (the stages overlap)."""
    return (f"Run: {ended['total']:.1f} s; from its start, the extract ended at {ended['extract']:.1f} s, "
            f"the transform (alongside the extract) at {ended['transform']:.1f} s, "
            f"the load (alongside the transform once the extract ended) at {ended['load']:.1f} s")


def snapshots_listing(staging: Staging) -> RichTable:
    """Every snapshot of the staging area, oldest first, and the current view it makes."""
    table = new_table(f"Snapshots in {staging.root}", "collection", "snapshot", "kind", "documents", "deleted", "MB",
                      "since", "watermark", "in view")
    for collection in staging.collections():
        current = {s.id for s in staging.chain(collection)}
        for s in staging.snapshots(collection):
            table.add_row(collection, s.id, s.kind, f"{s.documents:,}", f"{s.deleted:,}", f"{s.bytes / 1e6:.2f}",
                          _instant(s.since), _instant(s.watermark), "yes" if s.id in current else "")
    return table


def plan_listing(collections: dict[str, str], transform: dict[str, str], load: dict[str, str] | None) -> tuple[RichTable, RichTable]:
    """What the next run would do: per collection the extract, per table the transform and load."""
    sources = new_table("Next extract", "collection", "next")
    for collection, what in collections.items():
        sources.add_row(collection, what)
    tables = new_table("Next transform and load", "table", "transform", "load")
    for name, what in transform.items():
        tables.add_row(name, what, (load or {}).get(name, "PostgreSQL not reachable"))
    return sources, tables


def _instant(value: str | None) -> str:
    return value.replace("+00:00", "Z") if value else "-"


def transform_summary(results: list[TableResult]) -> RichTable:
    table = new_table("Transform", "table", "mode", "source documents", "rows", "rejected", "skipped", "warnings", "reasons")
    for r in results:
        table.add_row(
            r.table, r.mode, f"{r.documents:,}", f"{r.rows:,}", f"{r.rejected:,}", f"{r.skipped:,}", f"{r.warnings:,}", _reasons(r.reasons)
        )
    return table


def load_summary(results: list[LoadResult], transformed: dict[str, dict]) -> RichTable:
    """Per table: the load's mode, the source documents (re)derived by the last transform, rows
    inserted, updated, deleted and unchanged, and the staged rejects, skips and warnings."""
    table = new_table(
        "Summary", "table", "load", "source docs", "inserted", "updated", "deleted", "unchanged",
        "rejected", "skipped", "warnings", "reasons",
    )
    for r in results:
        counts = transformed.get(r.table, {})
        table.add_row(
            r.table,
            r.mode + (f" ({r.note})" if r.note else ""),
            f"{counts.get('documents', 0):,}",
            f"{r.inserted:,}",
            f"{r.updated:,}",
            f"{r.deleted:,}",
            f"{r.unchanged:,}",
            f"{counts.get('rejected', 0):,}",
            f"{counts.get('skipped', 0):,}",
            f"{counts.get('warnings', 0):,}",
            _reasons(counts.get("reasons", {})),
        )
    return table


def verify_sources(counts: list[tuple[str, int, int]], origin: str) -> RichTable:
    listing = new_table(f"Source ({origin})", "collection", "documents", "rejected at extract")
    for name, documents, rejected in counts:
        listing.add_row(name, f"{documents:,}", f"{rejected:,}")
    return listing


def verify_summary(checks: list[TableCheck]) -> RichTable:
    """Per table: the rows the source gives (and those rejected, explained by the rejects), the
    rows PostgreSQL holds, the differences and the checksums."""
    listing = new_table("Verify: PostgreSQL against the source", "table", "expected", "rejected", "PostgreSQL", "missing",
                        "extra", "changed", "rejects", "checksum", "status")
    for c in checks:
        checksum = c.expected_checksum if c.expected_checksum == c.actual_checksum else f"{c.expected_checksum} ≠ {c.actual_checksum}"
        rejects = "recorded" if not c.rejects_unrecorded else f"{c.rejects_unrecorded:,} differ"
        status = "ok" if c.ok else c.problem or "DIFFERENT"
        listing.add_row(c.table, f"{c.expected:,}", f"{c.rejected:,}", f"{c.actual:,}", f"{c.missing:,}", f"{c.extra:,}",
                        f"{c.changed:,}", rejects, checksum, status)
    return listing


def verify_examples(checks: list[TableCheck]) -> RichTable:
    listing = new_table("Differences (examples)", "table", "difference", "keys")
    for c in checks:
        for kind, keys in c.examples.items():
            listing.add_row(c.table, kind, Text(", ".join(keys)))
    return listing
