"""Transform stage: DuckDB SQL over the staged snapshots -> one Parquet file per target table.

Per table, in load order:
  1. the units to re-derive: all of them in a full run, else those the strategy's select SQL
     (loader/transform/sql/select_*.sql) picks from the documents changed since the table's
     last transform;
  2. the strategy's SQL file selects the records of those units: one small JSON document per
     future row, or a record without row (`_dropped`: a skip or a warning);
  3. the typing step converts and checks every column (loader/transform/typing.py); typed rows
     and dropped records replace the units' previous ones in staging/derived/<table>/ (a delta
     with the re-derived units, or a new base when re-derived whole);
  4. foreign keys are checked against the parent tables' staged rows (C10: a dangling nullable
     reference is nulled with a warning, a dangling required one rejects the row) and UPSERT-KEY
     rows are merged per key (5.5): over the re-derived units' rows when no other row's outcome
     can change (_Run._finish_units), else over every derived row of the table;
  5. the rows go to staging/tables/<table>.parquet, rejects, skips and warnings with their
     reason to staging/issues/<table>.parquet, counts, the snapshots consumed and the seconds
     of each phase (PHASES) to staging/transform.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from importlib.resources import files
from pathlib import Path

from loader import duck
from loader.config import Column, Table
from loader.duck import sql_identifier as q
from loader.duck import sql_literal
from loader.parallel import in_dependency_order
from loader.reasons import REJECT, SKIP, WARNING, kind_sql
from loader.settings import Settings
from loader.staging import DOCUMENT_COLUMNS, DerivedRows, Staging, utc_now, write_document_part
from loader.transform.typing import TransformError, carried_columns, staged_columns, typed_rows_sql

SQL_DIR = files("loader.transform").joinpath("sql")


# Bump when a change of the SQL or the typing changes derived rows or the kept reference tokens:
# every table is re-derived (and the tokens found again).
DERIVATION_VERSION = 4
FULL, INCREMENTAL, UNCHANGED = "full", "incremental", "unchanged"
# The derived rows of a table are compacted into one base when their deltas hold more rows than
# this share of the base, or number more than MAX_DERIVED_DELTAS.
COMPACT_DELTA_SHARE = 0.25
MAX_DERIVED_DELTAS = 16


@dataclass
class TableResult:
    table: str
    mode: str = FULL  # full | incremental | unchanged (no derived row replaced; re-checked if a parent changed)
    documents: int = 0  # source units (documents, parents, candidates) derived in this run
    rows: int = 0
    rejected: int = 0
    skipped: int = 0
    warnings: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # Where the seconds went (PHASES); the group's shared work (its units, the moments pass)
    # counts for its first table.
    phases: dict[str, float] = field(default_factory=dict)


# select: the changed documents, the units they select and those units' documents; derive: the
# strategy SQL and the typing; compare: the units' new rows against their previous ones (when no
# parent changed); check: foreign keys and identities over the table's rows, writing tables/ and
# issues/; keep: the derived rows' delta or new base.
PHASES = ("select", "derive", "compare", "check", "keep")


def transform(settings: Settings, staging: Staging, tables: list[Table],
              force: frozenset[str] = frozenset(), staged: Mapping[str, Future] | None = None,
              on_derived: Callable[[str], None] = lambda table: None, abort: Future | None = None) -> list[TableResult]:
    """Transform the tables in load order; those named in `force` (or with force_reimport) are
    re-derived whole, the others only for the units their changed documents select. With
    `staged` (collection -> future completed once an extract running alongside has staged it), a
    table starts once its collections are staged; without, they are staged already. `on_derived`
    is called with each table's name once its staged rows and transform state are written. Once
    `abort` (a load running alongside) fails, no further group starts and its error is raised."""
    con = duck.connect(spill_dir=staging.tmp_dir, memory_limit=settings.duckdb_memory_limit)
    run = _Run(con, settings, staging, force)
    return run.groups(_groups(tables), settings.transform_workers, staged or {}, on_derived, abort)


def plan(settings: Settings, staging: Staging, tables: list[Table], force: frozenset[str] = frozenset(),
         restaged: frozenset[str] = frozenset()) -> dict[str, str]:
    """What the next transform would do per table, once the collections `restaged` have a new
    full snapshot: full (and why) or incremental."""
    run = _Run(None, settings, staging, force)

    def reason(table: Table) -> str | None:
        return run.full_reason(table) or next((f"new full snapshot of {c}" for c in table.sources() if c in restaged), None)

    return {t.name: (f"full ({why})" if (why := reason(t)) else INCREMENTAL) for t in tables}


def _staged_name(collection: str) -> tuple[str, str]:
    """The name a group needs for a staged collection (collections and tables share names)."""
    return ("staged", collection)


def _groups(tables: list[Table]) -> list[list[Table]]:
    """Tables in load order; the tables of one shared pass (moments) form one group, at the
    place of the first of them."""
    groups: list[list[Table]] = []
    shared: dict[str, list[Table]] = {}
    for table in tables:
        prepare = table.strategy.prepare
        if prepare in shared:
            shared[prepare].append(table)
        else:
            groups.append([table])
            if prepare:
                shared[prepare] = groups[-1]
    return groups


class _Run:
    def __init__(self, con, settings: Settings, staging: Staging, force: frozenset[str]):
        self.root, self.settings, self.staging, self.force = con, settings, staging, force
        self.state = staging.transform_state()
        self.changed: dict[tuple[str, str], str] = {}  # (collection, consumed snapshot) -> relation
        self.states: dict[str, str | None] = {}  # table -> hash of its staged rows, until rewritten
        self.key_digests: dict[tuple[str, str], str] = {}  # (hash of a table's staged rows, column) -> _key_digest
        self.viewed: set[str] = set()  # collections with a view src_<collection>
        self.full: dict[str, bool] = {}  # group (its first table) -> re-derived whole
        self._thread = threading.local()
        self._lock = threading.Lock()  # the views, the changed relations and the transform report

    @property
    def con(self):
        """This thread's DuckDB connection: its temporary tables are its own."""
        if not hasattr(self._thread, "con"):
            self._thread.con = duck.cursor(self.root)
        return self._thread.con

    # ------------------------------------------------------------ scheduling
    def groups(self, groups: list[list[Table]], workers: int, staged: Mapping[str, Future],
               on_derived: Callable[[str], None], abort: Future | None) -> list[TableResult]:
        """Transform the groups `workers` at a time, each once the groups of the tables it
        references are done and its collections are `staged`; of those ready, the one heading the
        longest chain of dependants by the seconds they last took (`derived_seconds`) first (the
        logbook moments, a third of an incremental transform, before the small tables listed
        ahead of them); the results in load order."""
        def derive(group: list[Table]) -> list[TableResult]:
            results = self.group(group, self.is_full(group))
            for table in group:
                on_derived(table.name)
            return results

        results = in_dependency_order(
            groups, workers, derive, thread_name="transform",
            names=lambda group: {t.name for t in group},
            needs=lambda group: {p for t in group for p in t.parents} | {_staged_name(c) for t in group for c in t.sources()},
            weight=lambda group: sum(self.state.get(t.name, {}).get("derived_seconds", 0.0) for t in group),
            given={_staged_name(c): future for c, future in staged.items()}, abort=abort,
            # A shared pass derived in full (the moments: every logbook question of the source,
            # 2.5M rows at 5M documents) needs DuckDB's memory to itself.
            alone=lambda group: bool(group[0].strategy.prepare) and self.is_full(group))
        return [result for group in results for result in group]

    def is_full(self, group: list[Table]) -> bool:
        """Whether a group is re-derived whole (a table of it has a full_reason); decided once,
        when its collections are staged."""
        with self._lock:
            if group[0].name not in self.full:
                self.full[group[0].name] = any(self.full_reason(t) for t in group)
            return self.full[group[0].name]

    # ------------------------------------------------------------ mode
    def fingerprint(self, table: Table) -> str:
        return text_hash(f"{DERIVATION_VERSION}|{self.settings.source_timezone}|{table!r}")

    def full_reason(self, table: Table) -> str | None:
        """Why the table must be re-derived whole, or None when an incremental run is possible."""
        state = self.state.get(table.name)
        if table.is_forced(self.force):
            return "forced"
        if not state or not self.staging.derived_rows(table.name).exists():
            return "first transform"
        if state.get("fingerprint") != self.fingerprint(table):
            return "mapping or time zone changed"
        for collection in table.sources():
            if self.staging.changes_since(collection, state.get("consumed", {}).get(collection)) is None:
                return f"new full snapshot of {collection}"
        return None

    # ------------------------------------------------------------ one group of tables
    def group(self, tables: list[Table], full: bool) -> list[TableResult]:
        """Transform one group of tables: re-derived whole when `full` (a table of it has a
        full_reason), else only the units its changed documents select."""
        clock = time.perf_counter()
        first = tables[0]
        self._view_sources(tables)
        consumed = {c: self.staging.latest_id(c) for t in tables for c in t.sources()}
        if not full and self._untouched(tables, consumed):
            results = [self._unchanged(t) for t in tables]
            for table, result in zip(tables, results):
                self._record(table, result, consumed)
            return results
        shared: dict[str, float] = {}  # phases of the group's shared work
        with _timed(shared, "select"):
            if full:  # it consumes every snapshot so far: the kept tokens are found again
                units = None
                for collection in first.strategy.references:
                    self._find_references(collection)
            else:
                units = self._select_units(first)
            views, unit_parts = self._source_views(first, units)
        try:
            values = self._placeholders(first, views)
            if first.strategy.prepare and (units is None or self._count(units)):
                with _timed(shared, "derive"):
                    duck.run(self.con, sql_file(first.strategy.prepare, values))
            results = []
            for table in tables:
                result = self._table(table, self._placeholders(table, views), units, shared if table is first else {})
                if table is first:  # the group's shared work counts for its first table
                    result.seconds = round(time.perf_counter() - clock, 3)
                self._record(table, result, consumed)
                results.append(result)
        finally:
            for part in unit_parts:
                part.unlink(missing_ok=True)
            self._drop_temporaries()
        return results

    def _view_sources(self, tables: list[Table]) -> None:
        """Views src_<collection> over the current view of the group's collections (shared by the
        threads), created once the collections are staged."""
        with self._lock:
            for collection in sorted({c for t in tables for c in t.sources()} - self.viewed):
                duck.run(self.con, f"CREATE OR REPLACE VIEW {q('src_' + collection)} AS {self.staging.view_sql(collection)}")
                self.viewed.add(collection)

    def _drop_temporaries(self) -> None:
        """Drop this thread's temporary views and tables: kept until replaced, they would hold
        DuckDB's memory while the next groups run (at 5M documents, the 2.5M-row tables of
        users_quizzs_questions left the moments pass without room)."""
        temporaries = self.con.execute(
            "SELECT 'VIEW', view_name FROM duckdb_views() WHERE temporary AND NOT internal "
            "UNION ALL SELECT 'TABLE', table_name FROM duckdb_tables() WHERE temporary").fetchall()
        for kind, name in temporaries:
            duck.run(self.con, f"DROP {kind} temp.{q(name)}")

    def _table(self, table: Table, values: dict[str, str], units: str | None, phases: dict[str, float]) -> TableResult:
        """Derive one table (`phases`: the seconds of its work, added to those given)."""
        clock = time.perf_counter()
        name = table.name
        rows = self.staging.derived_rows(name)
        replaced = True  # the units' new rows replace their previous ones (kept as a delta)
        stale = self._outputs_stale(table)
        by_unit = False  # only the re-derived units' rows are checked (_finish_units)
        selected = None if units is None else self._count(units)
        documents = 0
        if units is None or selected:
            with _timed(phases, "derive"):
                new = self._derive(table, values)
            documents = selected if units else self._count(f"({table.strategy.units_sql.format(**values)})")
            if units is None:
                derived = new
            else:
                old = rows.current_sql()
                # Comparing reads the units' previous rows: keeping a delta costs less when the
                # outputs are checked again anyway, or when a parent's rows were rewritten since
                # (a change of the source that, as a rule, changed this table's rows too).
                compare = not stale and not self._parents_rewritten(table)
                by_unit = not stale and self._checked_by_unit(table)
                if compare or by_unit:
                    # Every column to compare; the identities and sources alone to check by unit
                    # (the units' rows are spread over the whole file: each column read is decoded whole).
                    columns = "*" if compare else _unit_check_columns(table)
                    with _timed(phases, "compare" if compare else "check"):
                        duck.run(self.con, f"CREATE OR REPLACE TEMP TABLE previous AS SELECT {columns} FROM ({old}) WHERE _unit IN (SELECT _id FROM {units})")
                if compare:
                    with _timed(phases, "compare"):
                        replaced = self._differs(new, "previous")
                derived = f"(SELECT * FROM ({old}) WHERE _unit NOT IN (SELECT _id FROM {units}) UNION ALL BY NAME SELECT * FROM {new})"
        else:
            replaced = False
        mode = FULL if units is None else INCREMENTAL if replaced else UNCHANGED
        if replaced or stale:
            # Outputs first, derived rows last: a crash in between re-derives the same units.
            with _timed(phases, "check"):
                if not (replaced and by_unit and self._finish_units(table, old, new, units)):
                    self._finish(table, derived if replaced else f"({rows.current_sql()})")
            with _timed(phases, "keep"):
                if units is None:
                    self._write_base(rows, f"SELECT * FROM {new}")
                elif replaced:
                    _copy_atomically(self.con, f"SELECT * FROM {new} UNION ALL BY NAME SELECT _id AS _replaces FROM {units}", rows.next_delta())
                    self._compact_if_due(rows)
        result = self._counts(table, mode, documents)
        result.seconds = round(time.perf_counter() - clock, 3)
        result.phases = {phase: phases[phase] for phase in PHASES if phase in phases}
        return result

    def _write_base(self, rows: DerivedRows, query: str) -> None:
        """A new generation of the derived rows, holding every unit."""
        _copy_atomically(self.con, query, rows.next_base())
        rows.remove_older_generations()

    def _compact_if_due(self, rows: DerivedRows) -> None:
        """Rewrite the derived rows as one base once the deltas hold a fair share of its rows (or
        are many): reading them costs each incremental transform more than a rewrite once."""
        base, deltas = rows.rows()
        if deltas > COMPACT_DELTA_SHARE * base or len(rows.deltas()) > MAX_DERIVED_DELTAS:
            self._write_base(rows, rows.current_sql())

    def _untouched(self, tables: list[Table], consumed: dict[str, str]) -> bool:
        """No snapshot since the tables' last transform and no parent rewritten since: their
        outputs stand as they are. (A strategy may read a parent's rows: the moments' selection
        picks the moments whose users_logbook row appeared or went.)"""
        return all(
            self.state[t.name]["consumed"].get(c) == consumed[c] for t in tables for c in t.sources()
        ) and not any(self._outputs_stale(t) or self._parents_rewritten(t) for t in tables)

    def _unchanged(self, table: Table) -> TableResult:
        """The counts of the table's last transform, as an unchanged result."""
        previous = self.state[table.name]
        counts = {f.name: previous[f.name] for f in fields(TableResult) if f.name in previous}
        return TableResult(**counts | {"mode": UNCHANGED, "documents": 0, "seconds": 0.0, "phases": {}})

    # ------------------------------------------------------------ selection
    def _select_units(self, table: Table) -> str:
        """The units to re-derive: the strategy's select SQL over the changed documents, named
        {changed_ids_<collection>} (their _id) and {changed_<collection>} (_id, doc, _current:
        their old and new versions), {changed_ids} and {changed} for the table's own sources,
        {references_<collection>} and {derived} (the table's derived rows)."""
        consumed = self.state[table.name]["consumed"]
        own = [c for c in table.sources() if c not in table.strategy.lookups]
        # The old versions are read from the view as of the last transform (its base read whole):
        # a changed relation is built only for the select SQL that names it.
        values = _LazyValues(self._placeholders(table, {}) | {
            f"references_{c}": self._references(c, consumed[c]) for c in table.strategy.references
        }, {
            **{f"changed_{c}": partial(self._changed, c, consumed[c]) for c in table.sources()},
            **{f"changed_ids_{c}": partial(self._changed_ids, c, consumed[c]) for c in table.sources()},
            "changed": lambda: "(" + " UNION ALL ".join(f"SELECT * FROM {self._changed(c, consumed[c])}" for c in own) + ")",
            "changed_ids": lambda: "(" + " UNION ".join(self._changed_ids(c, consumed[c]) for c in own) + ")",
            "derived": lambda: f"({self.staging.derived_rows(table.name).current_sql()})",
        })
        duck.run(self.con, f"CREATE OR REPLACE TEMP TABLE units AS SELECT DISTINCT _id FROM ({sql_file(table.strategy.select, values)}) WHERE _id IS NOT NULL")
        return "units"

    def _changed(self, collection: str, consumed: str) -> str:
        """A relation of the new and old versions (_id, doc, _current) of the documents changed
        since snapshot `consumed` (an _id without version: created and deleted in between)."""
        key = (collection, consumed)
        with self._lock:  # shared by the tables reading the collection (a table, not temporary)
            if key not in self.changed:
                self.changed[key] = self._changed_relation(collection, consumed, q(f"changed_{len(self.changed)}"))
        return self.changed[key]

    def _changed_relation(self, collection: str, consumed: str, relation: str) -> str:
        duck.run(self.con, f"""
CREATE TABLE {relation} AS
SELECT _id, doc, true AS _current FROM ({self.staging.changed_documents_sql(collection, consumed)})
UNION ALL
SELECT _id, doc, false FROM ({self.staging.view_sql(collection, upto=consumed)})
WHERE _id IN (SELECT _id FROM {self._changed_ids(collection, consumed)})""")
        return relation

    def _changed_ids(self, collection: str, consumed: str) -> str:
        """A relation of the _id of the documents changed or deleted since snapshot `consumed`."""
        return f"({self.staging.changes_since(collection, consumed)})"

    def _references(self, collection: str, consumed: str) -> str:
        """A relation (_unit, ref) of the 24-hex tokens of every current document of the
        collection: those kept, with the documents changed since snapshot `consumed` found again
        first (kept as a delta: written before the outputs, it is what a re-run after a crash
        would write again); found in every document when none are kept."""
        store = self.staging.references(collection)
        if store.exists():
            found = _references_sql(f"({self.staging.changed_documents_sql(collection, consumed)})")
            _copy_atomically(self.con, f"{found} UNION ALL BY NAME SELECT DISTINCT _id AS _replaces FROM {self._changed_ids(collection, consumed)}",
                             store.next_delta())
            self._compact_if_due(store)
        else:
            self._find_references(collection)
        return f"({store.current_sql()})"

    def _find_references(self, collection: str) -> None:
        """Keep the tokens of every current document of the collection, as a new base."""
        self._write_base(self.staging.references(collection), _references_sql(q("src_" + collection)))

    def _source_views(self, table: Table, units: str | None) -> tuple[dict[str, str], list[Path]]:
        """Collection -> relation the strategy SQL reads: the unit documents only, in an
        incremental run, for the table's own sources (written as a document part under
        staging/tmp, read in bounded row groups like the staged ones; returned second, to be
        removed); the whole current view otherwise."""
        views = {c: q(f"src_{c}") for c in table.sources()}
        parts: list[Path] = []
        if units is None:
            return views, parts
        for collection in table.sources():
            if collection not in table.strategy.lookups:
                parts.append(self.staging.tmp_dir / f"units-{table.name}-{collection}.parquet")
                write_document_part(self.con, f"SELECT {DOCUMENT_COLUMNS} FROM ({self._unit_documents(table, collection, units)}) "
                                              f"WHERE _id IN (SELECT _id FROM {units})", parts[-1])
                views[collection] = f"read_parquet({sql_literal(str(parts[-1]))})"
        return views, parts

    def _unit_documents(self, table: Table, collection: str, units: str) -> str:
        """A relation holding the units' documents of the collection: the documents changed since
        the table's last transform (read from the deltas alone) when every unit is one of them,
        as with the default select; else the current view (its base read whole)."""
        consumed = self.state[table.name]["consumed"][collection]
        if self._count(f"(SELECT _id FROM {units} ANTI JOIN {self._changed_ids(collection, consumed)} USING (_id))"):
            return f"SELECT * FROM {q('src_' + collection)}"
        return self.staging.changed_documents_sql(collection, consumed)

    # ------------------------------------------------------------ derive and finish
    def _derive(self, table: Table, values: dict[str, str]) -> str:
        """Records of the strategy SQL -> typed rows and dropped records, with their unit."""
        *setup, records = (statement.query for statement in self.con.extract_statements(sql_file(table.strategy.sql, values)))
        for statement in setup:
            duck.run(self.con, statement)
        names = {row[0] for row in self.con.execute(f"DESCRIBE SELECT * FROM ({records})").fetchall()}
        records = f"SELECT *{'' if '_unit' in names else ', _source_id AS _unit'} FROM ({records})"
        if not table.strategy.streamed:
            duck.run(self.con, f"CREATE OR REPLACE TEMP TABLE materialized_records AS {records}")
            records = "SELECT * FROM materialized_records"
        duck.run(self.con, f"CREATE OR REPLACE TEMP VIEW records AS {records}")
        rows_sql = typed_rows_sql(table, "SELECT * FROM records WHERE _dropped IS NULL", self.settings.source_timezone, table.latest_columns)
        carried = "".join(f", {q(c)}" for c in carried_columns(table))
        duck.run(self.con, f"""
CREATE OR REPLACE TEMP TABLE new_derived AS
SELECT *, CAST(NULL AS VARCHAR) AS _dropped, CAST(NULL AS VARCHAR) AS _dropped_value FROM ({rows_sql})
UNION ALL BY NAME
SELECT _source_id, _source_collection, _unit{carried}, _dropped, left(CAST(d AS VARCHAR), 200) AS _dropped_value
FROM records WHERE _dropped IS NOT NULL""")
        return "new_derived"

    def _differs(self, new: str, old: str) -> bool:
        columns = ", ".join(q(row[0]) for row in self.con.execute(f"DESCRIBE {new}").fetchall())
        return bool(self.con.execute(
            f"SELECT EXISTS ((SELECT {columns} FROM {new} EXCEPT ALL SELECT {columns} FROM ({old})) "
            f"UNION ALL (SELECT {columns} FROM ({old}) EXCEPT ALL SELECT {columns} FROM {new}))"
        ).fetchall()[0][0])

    def _outputs_stale(self, table: Table) -> bool:
        """The outputs were not checked against the parents' current keys (or are missing, or
        were replaced since): a parent rewritten with the same keys leaves every row's checks
        as they were."""
        state = self.state.get(table.name, {})
        return state.get("output") != self._table_state(table.name) or state.get("parent_keys") != self._parent_keys(table)

    def _parents_rewritten(self, table: Table) -> bool:
        return self.state.get(table.name, {}).get("parents") != self._parent_hashes(table)

    def _parent_hashes(self, table: Table) -> dict[str, str | None]:
        return {p: self._table_state(p) for p in sorted(table.parents)}

    def _parent_keys(self, table: Table) -> dict[str, str | None]:
        """Per parent column a foreign key of the table references, a digest of its values."""
        return {f"{c.foreign_key.table}.{c.foreign_key.column}": self._key_digest(c.foreign_key.table, c.foreign_key.column)
                for c in _checked_references(table)}

    def _key_digest(self, parent: str, column: str) -> str | None:
        """An order-free digest of the set of values of a column of a table's staged rows (an
        identity: no value twice), computed once per version of the file in a run."""
        version = (self._table_state(parent), column)
        if version[0] is None:
            return None
        if version not in self.key_digests:
            key = q(column)
            digest = self.con.execute(f"SELECT count({key}), bit_xor(hash({key})), sum(hash({key}) >> 11) "
                                      f"FROM {_read(self.staging.table_file(parent))}").fetchall()[0]
            self.key_digests[version] = text_hash(repr(digest))
        return self.key_digests[version]

    def _table_state(self, name: str) -> str | None:
        """Staging.table_state, hashed once per file version in a run."""
        if name not in self.states:
            self.states[name] = self.staging.table_state(name)
        return self.states[name]

    def _finish(self, table: Table, derived: str) -> None:
        """Foreign keys and UPSERT-KEY merging over every derived row of the table."""
        typed = f"(SELECT * EXCLUDE (_unit, _dropped, _dropped_value) FROM {derived} WHERE _dropped IS NULL)"
        checks = _identity_check_sql(table, _merge_check_sql(table, _foreign_key_sql(table, typed, self.staging)))
        duck.run(self.con, f"CREATE OR REPLACE TEMP TABLE checked AS {checks}")
        self._write_outputs(table, _accepted_rows_sql(table, "checked"), _issues_sql(table, "checked", derived))

    def _write_outputs(self, table: Table, rows: str, issues: str) -> None:
        """The queries' results as the table's staged rows and issues (a change file of the rows
        before is stale then)."""
        _copy_atomically(self.con, rows, self.staging.table_file(table.name))
        self.states.pop(table.name, None)
        _copy_atomically(self.con, issues, self.staging.issues_file(table.name))
        for stale in self.staging.changes_dir(table.name).glob("*.parquet"):
            stale.unlink()

    def _checked_by_unit(self, table: Table) -> bool:
        """Whether an incremental transform can check the re-derived units' rows alone (when the
        parents' keys are unchanged): the table's rows have an identity that no check changes
        (UPSERT-KEY rows are merged per key; a dangling nullable reference is nulled)."""
        nulled = {c.name for c in _checked_references(table) if c.nullable}
        return bool(table.identity) and not table.latest_columns and not nulled & set(table.identity)

    def _finish_units(self, table: Table, old: str, new: str, units: str) -> bool:
        """The outputs of `_finish`, checking only the re-derived units' rows (`new`; `previous`:
        theirs before), when no other row's outcome can change: the parents' keys are those the
        outputs were checked against (a foreign key's outcome depends on the row and those keys),
        and no other unit's row shares an identity (rows sharing one are rejected together) or a
        source document (its issues are listed under it) with the units' rows. tables/ keeps the
        other rows, issues/ the other sources' records. Returns False, having written nothing,
        when another unit's row shares one."""
        keys = ", ".join(q(c) for c in table.identity)
        same_keys = _same_values(table.identity, "o", "m")
        checked_columns = _unit_check_columns(table)
        mine = f"(SELECT {checked_columns} FROM previous UNION ALL BY NAME SELECT {checked_columns} FROM {new})"
        duck.run(self.con, f"CREATE OR REPLACE TEMP TABLE mine AS {mine}")
        # One pass over the other units' rows, comparing hashes: a collision only costs a whole check.
        identity, source = f"hash({keys})", "hash(_source_collection, _source_id)"
        shared = self.con.execute(f"""
SELECT count(*) > 0 FROM (SELECT _unit, {checked_columns} FROM ({old}))
WHERE _unit NOT IN (SELECT _id FROM {units})
  AND ((_dropped IS NULL AND {identity} IN (SELECT {identity} FROM mine WHERE _dropped IS NULL)) OR {source} IN (SELECT {source} FROM mine))""").fetchall()[0][0]
        if shared:
            return False
        typed = f"(SELECT * EXCLUDE (_unit, _dropped, _dropped_value) FROM {new} WHERE _dropped IS NULL)"
        duck.run(self.con, f"CREATE OR REPLACE TEMP TABLE checked AS {_identity_check_sql(table, _foreign_key_sql(table, typed, self.staging))}")
        kept_rows = (f"SELECT {', '.join(map(q, staged_columns(table)))} FROM {_read(self.staging.table_file(table.name))} o "
                     f"ANTI JOIN (SELECT {keys} FROM mine) m ON {same_keys}")
        kept_issues = (f"SELECT * FROM {_read(self.staging.issues_file(table.name))} o ANTI JOIN "
                       f"(SELECT DISTINCT _source_collection AS source_collection, {_issue_text('_source_id')} AS source_id FROM mine) m "
                       f"ON o.source_collection IS NOT DISTINCT FROM m.source_collection AND o.source_id IS NOT DISTINCT FROM m.source_id")
        before = self._table_state(table.name)
        accepted = _accepted_rows_sql(table, "checked")
        self._write_outputs(table, f"{kept_rows} UNION ALL {accepted}", _issues_sql(table, "checked", new, kept_issues))
        if before is not None:
            # The rows written are the others as they were, the units' accepted rows, and no row of
            # an identity the units had or have (`mine`) otherwise: the load merges that instead
            # of comparing the whole file with the rows PostgreSQL holds.
            _copy_atomically(self.con, f"SELECT *, false AS _removed FROM ({accepted}) UNION ALL BY NAME "
                                       f"SELECT {keys}, true AS _removed FROM (SELECT {keys} FROM mine WHERE {_any_not_null(table.identity)} "
                                       f"EXCEPT SELECT {keys} FROM ({accepted}))",
                             self.staging.change_file(table.name, before, self._table_state(table.name)))
        return True

    def _counts(self, table: Table, mode: str, documents: int) -> TableResult:
        issues = _read(self.staging.issues_file(table.name))
        kinds = dict(self.con.execute(f"SELECT kind, count(*) FROM {issues} GROUP BY kind").fetchall())
        reasons = dict(self.con.execute(f"SELECT reason, count(*) FROM {issues} GROUP BY reason ORDER BY reason").fetchall())
        return TableResult(
            table=table.name,
            mode=mode,
            documents=documents,
            rows=self._count(_read(self.staging.table_file(table.name))),
            rejected=kinds.get(REJECT, 0),
            skipped=kinds.get(SKIP, 0),
            warnings=kinds.get(WARNING, 0),
            reasons=reasons,
        )

    def _record(self, table: Table, result: TableResult, consumed: dict[str, str]) -> None:
        state = asdict(result) | {
            # the seconds of the last transform that did any work on the table (one finding it
            # unchanged keeps them): the weight of its chain when the next transform picks a group
            "derived_seconds": result.seconds or self.state.get(table.name, {}).get("derived_seconds", 0.0),
            "fingerprint": self.fingerprint(table),
            "consumed": {c: consumed[c] for c in table.sources()},
            "output": self._table_state(table.name),
            # the parents' staged rows these outputs agree with (the load reads it), and their keys
            "parents": self._parent_hashes(table),
            "parent_keys": self._parent_keys(table),
        }
        with self._lock:
            self.state[table.name] = state
            self.staging.write_transform_report({"finished_at": utc_now().isoformat(), "tables": self.state})

    # ------------------------------------------------------------ helpers
    def _placeholders(self, table: Table, views: dict[str, str]) -> dict[str, str]:
        return placeholders(table, self.staging, views or {c: q(f"src_{c}") for c in table.sources()}, self.settings.source_timezone)

    def _count(self, relation: str) -> int:
        return self.con.execute(f"SELECT count(*) FROM {relation}").fetchall()[0][0]


@contextmanager
def _timed(phases: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds the block takes to `phases[phase]`."""
    clock = time.perf_counter()
    try:
        yield
    finally:
        phases[phase] = round(phases.get(phase, 0.0) + time.perf_counter() - clock, 3)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def placeholders(table: Table, staging: Staging, views: dict[str, str], timezone: str) -> dict[str, str]:
    """Values of the placeholders of a strategy's SQL: {src} and {src_<collection>} (the staged
    documents it reads), {collection}, {timezone}, {parent_<table>} (rows of a referenced table)
    and, for relationship strategies, {arrays}, {parent_column}, {element_column}, {element_date}."""
    strategy = table.strategy
    values = {
        "src": views[table.collection],
        "collection": sql_literal(table.collection),
        "timezone": sql_literal(timezone),
        **{f"src_{c}": views[c] for c in table.sources()},
        **{f"parent_{c.foreign_key.table}": _parent_rows(c, staging) for c in table.foreign_keys},
    }
    if strategy.arrays:
        values |= {
            "arrays": ", ".join(
                f"({sql_literal(a.name)}, {sql_literal(a.key)}, CAST({sql_literal(json.dumps(a.constants))} AS JSON))"
                for a in strategy.arrays
            ),
            "parent_column": sql_literal(strategy.parent_column),
            "element_column": sql_literal(strategy.element_column),
            "element_date": "true" if strategy.element_date else "false",
        }
    return values


def sql_file(name: str, values: Mapping[str, str]) -> str:
    return SQL_DIR.joinpath(name).read_text(encoding="utf-8").format_map(values)


class _LazyValues(dict):
    """Placeholder values, some computed only when the SQL names them (`factories`)."""

    def __init__(self, values: dict[str, str], factories: dict[str, Callable[[], str]]):
        super().__init__(values)
        self.factories = factories

    def __missing__(self, key: str) -> str:
        self[key] = value = self.factories[key]()
        return value


def _read(path: Path) -> str:
    return f"read_parquet({sql_literal(str(path))})"


def _references_sql(documents: str) -> str:
    """The 24-hex tokens (an ObjectId or a hex string, C5) of each document: a superset of its
    references, which only costs a few extra candidates."""
    return f"SELECT _id AS _unit, unnest(bson_ref_tokens(doc)) AS ref FROM {documents}"


def _checked_references(table: Table) -> list[Column]:
    """The columns whose foreign key the check phase reads. References to a generated key are
    checked by the strategy (moments: no_users_logbook_match)."""
    return [c for c in table.foreign_keys if c.foreign_key.table != table.name and not c.resolved_at_load]


def _foreign_key_sql(table: Table, typed: str, staging: Staging) -> str:
    """Null dangling nullable references (warning fk_nulled), reject dangling required ones."""
    checks = _checked_references(table)
    if not checks:
        return f"SELECT * FROM {typed}"
    found, oks, replaced, problems, warnings = [], [], [], [], []
    for column in checks:
        # Whether the reference is found, a column of a subquery: named twice (a nullable one is
        # nulled and warned about), the expression would read the parent's keys twice.
        ok = q(f"_fk_ok_{column.name}")
        oks.append(ok)
        found.append(f"({q(column.name)} IS NULL OR {q(column.name)} IN (SELECT {q(column.foreign_key.column)} "
                     f"FROM {_parent_rows(column, staging)})) AS {ok}")

        def issue(reason: str) -> str:
            return f"{{'column': {sql_literal(column.name)}, 'reason': {sql_literal(reason)}, 'value': CAST({q(column.name)} AS VARCHAR)}}"

        if column.nullable:
            replaced.append(f"CASE WHEN {ok} THEN {q(column.name)} END AS {q(column.name)}")
            warnings.append(f"CASE WHEN NOT {ok} THEN {issue('fk_nulled:' + column.name)} END")
        else:
            problems.append(f"CASE WHEN NOT {ok} THEN {issue('fk_missing:' + column.name)} END")
    excluded = ", ".join(["_problem", "_warnings", *oks])
    replace = f" REPLACE ({', '.join(replaced)})" if replaced else ""
    problem = f"coalesce(_problem, {', '.join(problems)})" if problems else "_problem"
    warning = (
        f"list_concat(_warnings, list_filter([{', '.join(warnings)}], lambda x: x IS NOT NULL))" if warnings else "_warnings"
    )
    # Foreign keys are only checked on rows that passed the column checks.
    return f"""
SELECT * EXCLUDE ({excluded}){replace},
       {problem} AS _problem,
       CASE WHEN _problem IS NULL THEN {warning} ELSE _warnings END AS _warnings
FROM (SELECT *, {', '.join(found)} FROM {typed})"""


def _parent_rows(column: Column, staging: Staging) -> str:
    parent = column.foreign_key.table
    path = staging.table_file(parent)
    if not path.exists():
        raise TransformError(f"column '{column.name}' references '{parent}', which has not been transformed yet")
    return _read(path)


def _merge_check_sql(table: Table, checked: str) -> str:
    """UPSERT-KEY (5.5): a key whose merged timestamps are all NULL rejects each of its rows."""
    if not table.latest_columns:
        return checked
    key = ", ".join(q(c) for c in table.natural_key)
    same = _same_values(table.natural_key, "c", "m")
    latest = ", ".join(f"max(CASE WHEN _problem IS NULL THEN {q(c)} END) AS {q('_latest_' + c)}" for c in table.latest_columns)
    problems = ", ".join(
        f"CASE WHEN m.{q('_latest_' + c)} IS NULL "
        f"THEN {{'column': {sql_literal(c)}, 'reason': {sql_literal('not_null:' + c)}, 'value': CAST(NULL AS VARCHAR)}} END"
        for c in table.latest_columns
    )
    # The keys' greatest timestamps by a grouping joined back, as the identity check does: a window
    # over the key sorts every row (0.16 of users_logbook's 0.18 s in an incremental transform).
    return f"""WITH c AS MATERIALIZED ({checked}),
m AS (SELECT {key}, {latest} FROM c GROUP BY ALL)
SELECT c.* REPLACE (coalesce(c._problem, {problems}) AS _problem)
FROM c JOIN m ON {same}"""


def _identity_check_sql(table: Table, checked: str) -> str:
    """Documents whose rows would share an identity (`_id` 5 and "5" both become id '5') are all
    rejected (`duplicate_key`): none is more right than the others. UPSERT-KEY rows are merged per
    key instead (5.5)."""
    if table.latest_columns or not table.identity:
        return checked
    key = ", ".join(q(c) for c in table.identity)
    same = _same_values(table.identity, "c", "d")
    value = " || ' | ' || ".join(f"CAST(c.{q(c)} AS VARCHAR)" for c in table.identity)
    # The shared identities found by a grouping joined back: a window over the identity sorts
    # every row (a third of the checks' time on the largest tables).
    return f"""WITH c AS MATERIALIZED ({checked}),
d AS (SELECT {key}, true AS _shared FROM c WHERE _problem IS NULL GROUP BY ALL HAVING count(*) > 1)
SELECT c.* REPLACE (coalesce(c._problem, CASE WHEN c._problem IS NULL AND d._shared
              THEN {{'column': {sql_literal(table.identity[0])}, 'reason': 'duplicate_key', 'value': {value}}} END) AS _problem)
FROM c LEFT JOIN d ON {same}"""


def _accepted_rows_sql(table: Table, checked: str) -> str:
    """The rows to load; UPSERT-KEY rows merged per key with the greatest timestamps (5.5)."""
    columns = staged_columns(table)
    if not table.latest_columns:
        return f"SELECT {', '.join(map(q, columns))} FROM {checked} WHERE _problem IS NULL"
    latest = table.latest_columns
    order = f"row({', '.join(q(c) for c in latest)}, _source_id)"
    merged = [
        q(c) if c in table.natural_key else f"max({q(c)}) AS {q(c)}" if c in latest else f"arg_max({q(c)}, {order}) AS {q(c)}"
        for c in columns
    ]
    return f"SELECT {', '.join(merged)} FROM {checked} WHERE _problem IS NULL GROUP BY {', '.join(q(c) for c in table.natural_key)}"


def _issues_sql(table: Table, checked: str, derived: str, kept: str | None = None) -> str:
    """One record per reject (`_problem`), per warning of an accepted row, and per record the
    strategy dropped (a skip or a warning, C10, 4.8), with the records `kept` (written before).
    A NUL in an `_id` or a value is written `\\x00` (the log goes to PostgreSQL's
    loader_rejects, whose text cannot hold it)."""
    name = sql_literal(table.name)
    return f"""
SELECT * FROM (
SELECT * REPLACE ({_issue_text('source_id')} AS source_id, {_issue_text('value')} AS value) FROM (
SELECT {name} AS "table", _source_collection AS source_collection, _source_id AS source_id,
       'reject' AS kind, _problem.reason AS reason, _problem."column" AS "column", _problem.value AS value
FROM {checked} WHERE _problem IS NOT NULL
UNION ALL
SELECT {name}, _source_collection, _source_id, 'warning', w.reason, w."column", w.value
FROM (SELECT _source_collection, _source_id, unnest(_warnings) AS w FROM {checked} WHERE _problem IS NULL)
UNION ALL
SELECT {name}, _source_collection, _source_id, {kind_sql("_dropped")}, _dropped, NULL, _dropped_value
FROM {derived} WHERE _dropped IS NOT NULL){f" UNION ALL SELECT * FROM ({kept})" if kept else ""})
ORDER BY 4, 5, 3"""


def _unit_check_columns(table: Table) -> str:
    """What the check by unit reads of a row (_Run._finish_units): its identity, whether it was
    dropped, and its source document."""
    return ", ".join([*map(q, table.identity), "_dropped", "_source_collection", "_source_id"])


def _same_values(columns: tuple[str, ...], left: str, right: str) -> str:
    """A join condition: the `columns` of relations `left` and `right` equal, NULL equal to NULL."""
    return " AND ".join(f"{left}.{q(c)} IS NOT DISTINCT FROM {right}.{q(c)}" for c in columns)


def _any_not_null(columns: tuple[str, ...]) -> str:
    return " OR ".join(f"{q(c)} IS NOT NULL" for c in columns)


def _issue_text(column: str) -> str:
    """A text as the issue log writes it: a NUL as `\\x00`."""
    return f"replace({column}, chr(0), '\\x00')"


def _copy_atomically(con, query: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    duck.run(con, f"COPY ({query}) TO {sql_literal(str(scratch))} ({duck.PARQUET_OPTIONS})")
    os.replace(scratch, path)
