"""The three stages as the CLI and the demo run them: progress bars, then a summary table.

`force` names the tables of a forced re-import (MAPPING.md 5.7; the flag of one run, or the
tables' `force_reimport`): their collections are extracted whole, the tables re-derived whole
and loaded in full. `truncate` names those emptied first (5.8, only together with force).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from loader import duck, report, tunnel, verify
from loader.config import Config, Table
from loader.extract import dump as mongodump
from loader.extract import mongo
from loader.load import schema, writer
from loader.settings import Settings
from loader.staging import Snapshot, Staging
from loader.transform import runner

NOTHING: frozenset[str] = frozenset()
T = TypeVar("T")


def forced_tables(tables: list[Table], force: bool) -> frozenset[str]:
    """The tables the one-run flag forces (the stages add those whose config says force_reimport)."""
    return frozenset(t.name for t in tables) if force else NOTHING


def _full_extracts(config: Config, tables: list[Table], force: frozenset[str]) -> set[str]:
    """Collections read by a forced table: extracted whole."""
    return set(config.collections([t for t in tables if t.is_forced(force)]))


def extract(settings: Settings, config: Config, tables: list[Table], progress: bool = True, summary: bool = True,
            force: frozenset[str] = NOTHING, dump: Path | None = None,
            on_staged: mongo.StagedHook | None = None) -> list[Snapshot]:
    """From MongoDB, or from the mongodump at `dump` (every collection whole); the collections in
    the order the tables need them."""
    staging = Staging(settings.staging_dir)
    full = _full_extracts(config, tables, force)
    collections = list(config.collections(tables))
    with tunnel.opened(settings, mongodb=dump is None, postgres=False) as settings, report.progress_bars("docs") as bars:
        hook = report.Bars(bars) if progress else None
        if dump is None:
            snapshots = mongo.extract(settings, staging, collections, hook, full=full, on_staged=on_staged)
        else:
            snapshots = mongodump.extract(settings, staging, collections, dump, hook, on_staged=on_staged)
    if summary:
        report.console.print(report.extract_summary(snapshots))
    return snapshots


def transform(settings: Settings, config: Config, tables: list[Table], summary: bool = True,
              force: frozenset[str] = NOTHING, staged: Mapping[str, Future] | None = None,
              on_derived: Callable[[str], None] = lambda table: None, abort: Future | None = None) -> list[runner.TableResult]:
    results = runner.transform(settings, Staging(settings.staging_dir), tables, force=force, staged=staged, on_derived=on_derived,
                               abort=abort)
    if summary:
        report.console.print(report.transform_summary(results))
    return results


def load(settings: Settings, config: Config, tables: list[Table], progress: bool = True, summary: bool = True,
         force: frozenset[str] = NOTHING, truncate: frozenset[str] = NOTHING,
         derived: Mapping[str, Future] | None = None) -> list[writer.LoadResult]:
    staging = Staging(settings.staging_dir)
    with tunnel.opened(settings, mongodb=False) as settings, report.progress_bars("rows") as bars:
        results = writer.load(settings, config, staging, tables, report.Bars(bars) if progress else None, force=force,
                              truncate=truncate, derived=derived)
    if summary:
        report.console.print(report.load_summary(results, staging.transform_state()))
    return results


@dataclass
class RunResult:
    loads: list[writer.LoadResult]
    seconds: dict[str, float]  # extract, transform, load: when each ended, from the start; total


def run(settings: Settings, config: Config, tables: list[Table], progress: bool = True,
        force: frozenset[str] = NOTHING, truncate: frozenset[str] = NOTHING, dump: Path | None = None,
        summary: bool = True) -> RunResult:
    """Extract (from MongoDB, or from the mongodump at `dump`), transform and load; the servers
    used are checked first so that none fails late. The stages overlap: a table is derived once
    its collections are staged (and the tables it references derived); once the whole extract has
    succeeded, a table is loaded once it is derived and the tables it references are loaded (a
    table that exists in PostgreSQL waits, before deleting rows, for the tables referencing it to
    be derived). A failing extract loads nothing; a failing transform stops the load from starting
    tables (those committed stay, as when a load fails), and a failing load stops the transform
    from starting tables (those derived stay staged for the next run)."""
    with tunnel.opened(settings, mongodb=dump is None) as settings:
        if dump is None:
            mongo.connect(settings).close()
        writer.connect(settings).close()
        clock, ended = time.perf_counter(), {}
        staged = {collection: Future() for collection in config.collections(tables)}
        derived = {table.name: Future() for table in tables}

        def extract_alongside() -> None:
            extract(settings, config, tables, progress=progress, summary=False, force=force, dump=dump,
                    on_staged=lambda collection: staged[collection].set_result(collection))
            ended["extract"] = time.perf_counter() - clock

        def load_alongside() -> list[writer.LoadResult]:
            extracting.result()
            return load(settings, config, tables, progress=progress, summary=summary, force=force, truncate=truncate,
                        derived=derived)

        extracting = _in_background(extract_alongside, staged, "extract")
        loading = _in_background(load_alongside, {}, "load")
        try:
            transform(settings, config, tables, summary=False, force=force, staged=staged,
                      on_derived=lambda table: derived[table].set_result(table), abort=loading)
        except Exception as exc:
            _fail_pending(derived, exc)
            extracting.exception()  # the extract finishes what it stages (an extract error is the one raised)
            loading.exception()  # the tables being loaded are committed or rolled back
            raise  # a load error that stopped the transform is raised as the transform's
        ended["transform"] = time.perf_counter() - clock
        extracting.result()
        loads = loading.result()
        ended["load"] = ended["total"] = time.perf_counter() - clock
    if summary:
        report.console.print(report.run_timing(ended))
    return RunResult(loads, ended)


def _in_background(work: Callable[[], T], pending: Mapping[str, Future], name: str) -> Future:
    """Run `work` in a daemon thread (on Ctrl-C the run does not join it: only the collections
    being read and the tables being written are finished; an interrupted run leaves the staging
    as it was); if it fails, the `pending` futures not yet completed fail with its error."""
    done: Future = Future()

    def target() -> None:
        try:
            done.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed over to the futures
            _fail_pending({**pending, "": done}, exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return done


def _fail_pending(futures: Mapping[str, Future], exc: BaseException) -> None:
    for future in futures.values():
        if not future.done():
            future.set_exception(exc)


def show_plan(settings: Settings, config: Config, tables: list[Table], force: frozenset[str] = NOTHING,
              dump: Path | None = None) -> None:
    """Print what the next run (from the mongodump at `dump`, if given) would do, reading only the
    staging area and PostgreSQL's sync state."""
    staging = Staging(settings.staging_dir)
    names = sorted(config.collections(tables))
    full = set(names) if dump is not None else _full_extracts(config, tables, force)  # staged whole next
    if dump is None:
        positions = staging.positions()

        def next_extract(name: str) -> str:
            whole, _, what = mongo.next_snapshot(staging, name, name in full, settings.watermark_overlap_seconds)
            return what if whole else f"{what}; deletions: {'change stream' if name in positions else 'document count'}"

        collections = {name: next_extract(name) for name in names}
    else:
        collections = dict.fromkeys(names, f"full (from the dump {dump})")
    try:
        with tunnel.opened(settings, mongodb=False) as settings:
            loads = writer.plan(settings, staging, tables, force)
    except (writer.DestinationError, tunnel.TunnelError):
        loads = None
    for listing in report.plan_listing(collections, runner.plan(settings, staging, tables, force, frozenset(full)), loads):
        report.console.print(listing)


def show_issues(settings: Settings, tables: list[str] | None, reason: str | None, examples: int) -> None:
    """Print the issue counts per table and reason (and examples) from the staging."""
    staging = Staging(settings.staging_dir)
    log = staging.issue_log_sql()
    if log is None:
        report.console.print("No issue recorded (no transform yet, or nothing rejected, skipped or warned).")
        return
    if tables:
        log = f'SELECT * FROM ({log}) WHERE "table" IN ({duck.sql_literals(tables)})'
    con = duck.connect(spill_dir=staging.tmp_dir, memory_limit=settings.duckdb_memory_limit)
    report.console.print(report.issue_counts(con, log))
    if examples:
        report.console.print(report.issue_examples(con, log, reason, examples))


def schema_differences(settings: Settings, config: Config, tables: list[Table], apply: bool = False) -> list[schema.Difference]:
    """Print how the PostgreSQL tables differ from the config, after applying the additive
    differences in one transaction with `apply`; returns the differences left."""
    with tunnel.opened(settings, mongodb=False) as settings, writer.connect(settings) as conn:
        found = schema.differences(conn, config, settings.postgres_schema, tables)
        applied = schema.apply_additive(conn, found) if apply else []
    report.console.print(report.schema_differences(found, applied) if found else "PostgreSQL matches the config.")
    return [d for d in found if d not in applied]


def rebuild(settings: Settings, config: Config, tables: list[Table], progress: bool = True,
            truncate: frozenset[str] = NOTHING) -> list[writer.LoadResult]:
    """Every selected table re-derived from the staged snapshots and loaded in full, without
    reading MongoDB."""
    with tunnel.opened(settings, mongodb=False) as settings:
        writer.connect(settings).close()
        everything = frozenset(t.name for t in tables)
        transform(settings, config, tables, summary=False, force=everything)
        return load(settings, config, tables, progress=progress, force=everything, truncate=truncate)


def reconcile(settings: Settings, config: Config, tables: list[Table], staged: bool = False, examples: int = 5,
              progress: bool = True) -> bool:
    """Compare PostgreSQL with the rows MongoDB (or, `staged`, the staged snapshots) gives, print
    the comparison; True when every table agrees."""
    with tunnel.opened(settings, mongodb=not staged) as settings, writer.connect(settings) as conn, \
            report.progress_bars("docs") as bars:
        checks = verify.verify(settings, config, tables, conn, staged, examples, report.Bars(bars) if progress else None)
    scratch = verify.verify_staging(settings)
    collections = sorted({name for check in checks for name in check.collections})
    report.console.print(report.verify_sources(verify.source_counts(settings, scratch, collections),
                                               "the staged snapshots" if staged else f"MongoDB {settings.mongodb_database}"))
    report.console.print(report.verify_summary(checks))
    if any(c.examples for c in checks):
        report.console.print(report.verify_examples(checks))
    return all(c.ok for c in checks)
