"""Independent test oracle for the entity ("UPSERT-ID") tables.

Plain-Python computation, written from spec/MAPPING.md (conventions C1-C11 and sections 3.1-3.13,
3.15, 3.18, 3.19, 3.22, 3.24-3.26, 3.29), of what the PostgreSQL tables must contain after a full
load of the given MongoDB documents.  It deliberately imports nothing from ``loader``; the only
shared input is the YAML schema (config/schemas.yaml), read here for column names, types,
nullability, foreign keys and ``mongo_field: column`` mappings.

Entry point: :func:`expected_entities`.

Choices made where the specification is silent (also listed in the test module):

* A rejected document has exactly one record (its reject reason) and no warnings: ``warnings``
  only describes rows that are loaded.
* A scalar reference column has no "table-specific key": an embedded document yields its ``_id``
  (see ``REFERENCE_KEYS`` to add one).  A key whose value is null counts as absent.
* Fallback fields (``kind``, ``birthdate``, ``quizzQuestion``, appointment user/order) are used
  when the primary field is missing *or null* (C4); a present but bad primary value is not
  replaced by the fallback.
* ``items.updated_by``: ObjectIds and embedded documents are normalised (C5); any other value is
  ordinary text (a string is kept verbatim, not lower-cased).
* Date -> text is ``YYYY-MM-DDTHH:MM:SS.mmmZ``; Decimal128 -> text is ``str(Decimal)``.
* Integers: booleans are ``type_error``; NaN is ``type_error``; +/-Infinity is ``out_of_range``;
  numeric strings may carry surrounding blanks.
* TIMESTAMP from a BSON date is truncated to milliseconds (what BSON stores); ISO strings keep
  their fractional seconds.
* menus: on a complete tie (same update_date and creation_date) the ``events`` document wins.
* appointments: the rank counts every ``appointments`` document with the same normalised
  ``coaching`` (including rejected ones and ones with a stored ``order``), ordered by the
  ``start_date`` instant (missing/unreadable last) then ``_id`` hex.  The user fallback reads the
  coaching *document* (even if that coaching row is rejected).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import yaml
from bson import Decimal128, ObjectId
from bson.datetime_ms import DatetimeMS
from bson.errors import InvalidBSON

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "config" / "schemas.yaml"

ENTITY_TABLES = (
    "ingredients", "appointment_types", "companies", "offers", "categories", "targets",
    "recipes", "quizzs", "quizzs_questions", "contents", "events", "users", "menus",
    "users_quizzs", "messages", "coachings", "users_quizzs_questions", "appointments",
    "periods", "items", "days",
)

BASE_COLUMNS = (  # C2: (column, sql type, mongo field)
    ("id", "VARCHAR", "_id"),
    ("created_at", "TIMESTAMP", "creation_date"),
    ("updated_at", "TIMESTAMP", "update_date"),
)

INT_RANGES = {"SMALLINT": (-32768, 32767), "INTEGER": (-(2**31), 2**31 - 1)}
BOOL_WORDS = {"true": True, "t": True, "yes": True, "1": True,
              "false": False, "f": False, "no": False, "0": False}

HEX24 = re.compile(r"[0-9a-fA-F]{24}")
SQL_TYPE = re.compile(r"\s*(VARCHAR|TEXT|SMALLINT|INTEGER|BOOLEAN|TIMESTAMP|DATE)\s*(?:\(\s*(\d+)\s*\))?\s*",
                      re.IGNORECASE)
FOREIGN_KEY = re.compile(r"\s*(\w+)\s*\(\s*id\s*\)\s*")
NUMERIC = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
PLAIN_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


# --------------------------------------------------------------------------- result type

@dataclass
class Expected:
    rows: dict[str, dict] = field(default_factory=dict)          # id -> full row
    rejects: dict[str, str] = field(default_factory=dict)        # source _id hex -> reason
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (source _id hex, reason)
    columns: tuple[str, ...] = ()                                # table columns, in order


class Reject(Exception):
    """Raised while building a row: the document is rejected with ``reason``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- schema (YAML)

@dataclass(frozen=True)
class Column:
    name: str
    kind: str                # VARCHAR, TEXT, SMALLINT, INTEGER, BOOLEAN, TIMESTAMP, DATE
    length: int | None       # n of VARCHAR(n)
    nullable: bool
    source: str              # Mongo field read by default (C3)
    parent: str | None       # referenced table of a foreign key


@dataclass(frozen=True)
class TableSpec:
    name: str
    collection: str
    export_order: int
    columns: tuple[Column, ...]

    @property
    def parents(self) -> set[str]:
        return {c.parent for c in self.columns if c.parent}


def parse_sql_type(sql_type: str) -> tuple[str, int | None]:
    m = SQL_TYPE.fullmatch(sql_type)
    if not m:
        raise ValueError(f"unsupported sql_type {sql_type!r}")
    return m.group(1).upper(), int(m.group(2)) if m.group(2) else None


def parse_foreign_key(fk: str | None) -> str | None:
    if not fk:
        return None
    m = FOREIGN_KEY.fullmatch(fk)
    if not m:
        raise ValueError(f"unsupported foreign_key {fk!r}")
    return m.group(1)


def load_table_specs(path: Path = SCHEMA_PATH) -> dict[str, TableSpec]:
    """Column lists of the entity tables: base columns (C2) then additional_columns (C3)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    tables = raw.get("tables", raw)
    specs: dict[str, TableSpec] = {}
    for key, table in tables.items():
        name = table.get("name", key)
        if name not in ENTITY_TABLES:
            continue
        assert table.get("include_base"), f"{name} is expected to be an entity table"
        column_to_field = {col: fld for fld, col in (table.get("additional_mappings") or {}).items()}
        columns = [Column(col, *parse_sql_type(typ), False, fld, None) for col, typ, fld in BASE_COLUMNS]
        for c in table.get("additional_columns") or []:
            kind, length = parse_sql_type(c["sql_type"])
            columns.append(Column(
                name=c["name"],
                kind=kind,
                length=length,
                nullable=c.get("nullable", True),
                source=column_to_field.get(c["name"], c["name"]),
                parent=parse_foreign_key(c.get("foreign_key")),
            ))
        specs[name] = TableSpec(name, table.get("mongo_collection", name),
                                int(table.get("export_order", 0)), tuple(columns))
    missing = set(ENTITY_TABLES) - specs.keys()
    assert not missing, f"tables missing from {path}: {sorted(missing)}"
    return specs


# --------------------------------------------------------------------------- C1 / C5 references

def document_id(doc: Mapping) -> str:
    """Key of a source document in rejects/warnings: ObjectId -> hex (C1)."""
    value = doc.get("_id")
    return str(value) if value is not None else ""


def normalize_reference(value: Any, key: str | None = None) -> tuple[str | None, bool]:
    """C5: returns (referenced id or None, shape_ok). shape_ok is False -> warning bad_reference."""
    if value is None:
        return None, True
    if isinstance(value, ObjectId):
        return str(value), True
    if isinstance(value, Mapping):
        for k in (key, "_id"):
            if k is not None and value.get(k) is not None:
                return normalize_reference(value[k], key)
        return None, False
    if isinstance(value, str) and HEX24.fullmatch(value):
        return value.lower(), True
    return None, False


def looks_like_reference(value: Any) -> bool:
    return isinstance(value, (ObjectId, Mapping))


# --------------------------------------------------------------------------- C6 / C7 / C8 coercions

def to_text(value: Any, length: int | None) -> str:
    if isinstance(value, str):
        text = value                                   # never trimmed
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, ObjectId):
        text = str(value)
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)                             # shortest round-trip: 72.5, 72.0
    elif isinstance(value, Decimal128):
        text = str(value.to_decimal())
    elif isinstance(value, (datetime, DatetimeMS)):
        text = to_timestamp(value).isoformat(timespec="milliseconds") + "Z"
    else:
        raise Reject("type_error")                     # arrays, documents, other BSON types
    if length is not None and len(text) > length:
        raise Reject("value_too_long")
    return text


def round_half_away(number: Decimal) -> int:
    if number.is_nan():
        raise Reject("type_error")
    if number.is_infinite() or number.adjusted() > 30:
        raise Reject("out_of_range")
    return int(number.to_integral_value(rounding=ROUND_HALF_UP))  # HALF_UP = ties away from zero


def to_integer(value: Any, kind: str) -> int:
    if isinstance(value, bool):
        raise Reject("type_error")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = round_half_away(Decimal(value))      # exact binary value, then round
    elif isinstance(value, Decimal128):
        number = round_half_away(value.to_decimal())
    elif isinstance(value, str) and NUMERIC.fullmatch(value):
        number = round_half_away(Decimal(value.strip()))
    else:
        raise Reject("type_error")
    low, high = INT_RANGES[kind]
    if not low <= number <= high:
        raise Reject("out_of_range")
    return number


def to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float, Decimal128)):
        number = value.to_decimal() if isinstance(value, Decimal128) else value
        try:
            if number == 0:
                return False
            if number == 1:
                return True
        except InvalidOperation:
            pass
        raise Reject("type_error")
    if isinstance(value, str) and value.lower() in BOOL_WORDS:
        return BOOL_WORDS[value.lower()]
    raise Reject("type_error")


def to_timestamp(value: Any) -> datetime:
    """C7: naive UTC wall clock."""
    if isinstance(value, DatetimeMS):
        try:
            value = value.as_datetime()
        except (OverflowError, ValueError, OSError, InvalidBSON) as exc:   # outside year 1..9999
            raise Reject("type_error") from exc
    if isinstance(value, datetime):
        value = value.replace(microsecond=value.microsecond // 1000 * 1000)  # BSON dates are ms
    elif isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise Reject("type_error") from exc
    else:
        raise Reject("type_error")
    if value.tzinfo is not None:
        try:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        except (OverflowError, ValueError) as exc:
            raise Reject("type_error") from exc
    return value


def to_local_date(value: Any, tz: ZoneInfo) -> date:
    """C8: calendar date of the instant in the source time zone; 'YYYY-MM-DD' is taken as is."""
    if isinstance(value, str) and PLAIN_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise Reject("type_error") from exc
    instant = to_timestamp(value).replace(tzinfo=timezone.utc)
    try:
        return instant.astimezone(tz).date()
    except (OverflowError, ValueError) as exc:
        raise Reject("type_error") from exc


def coerce(value: Any, column: Column, tz: ZoneInfo) -> Any:
    """C4 + C6: None stays None; otherwise convert to the column type or raise Reject."""
    if value is None:
        return None
    if column.kind in ("VARCHAR", "TEXT"):
        return to_text(value, column.length)
    if column.kind in INT_RANGES:
        return to_integer(value, column.kind)
    if column.kind == "BOOLEAN":
        return to_boolean(value)
    if column.kind == "TIMESTAMP":
        return to_timestamp(value)
    if column.kind == "DATE":
        return to_local_date(value, tz)
    raise AssertionError(column.kind)


# --------------------------------------------------------------------------- table specifics

def first_present(doc: Mapping, *fields: str) -> Any:
    """First field that is present and not null (C4: missing == null)."""
    for name in fields:
        if doc.get(name) is not None:
            return doc[name]
    return None


def event_discriminator(doc: Mapping) -> Any:
    """C9: ``__t``, else ``kind``."""
    return first_present(doc, "__t", "kind")


def users_birthdate(doc: Mapping, ctx: Any) -> Any:
    """3.12: ``birthday`` (application), else ``birthdate`` (R1/R2)."""
    return first_present(doc, "birthday", "birthdate")


def events_type(doc: Mapping, ctx: Any) -> Any:
    return event_discriminator(doc)


def uqq_quizz_question(doc: Mapping, ctx: Any) -> Any:
    """3.22: ``quizz_question``, else ``quizzQuestion``."""
    return first_present(doc, "quizz_question", "quizzQuestion")


@dataclass
class AppointmentContext:
    coaching_users: dict[str, Any]   # coaching id -> raw ``user`` of the coaching document
    ranks: dict[str, int]            # appointment id -> 1-based rank inside its coaching


def appointments_context(docs: dict[str, list[dict]]) -> AppointmentContext:
    coaching_users = {document_id(c): c.get("user") for c in docs.get("coachings", [])}
    by_coaching: dict[str, list[dict]] = defaultdict(list)
    for appointment in docs.get("appointments", []):
        coaching_id, _ = normalize_reference(appointment.get("coaching"))
        if coaching_id is not None:
            by_coaching[coaching_id].append(appointment)
    ranks = {}
    for appointments in by_coaching.values():
        appointments.sort(key=start_date_order)
        for rank, appointment in enumerate(appointments, start=1):
            ranks[document_id(appointment)] = rank
    return AppointmentContext(coaching_users, ranks)


def start_date_order(appointment: Mapping) -> tuple:
    """Ascending start_date instant (missing or unreadable last), then _id hex."""
    start = _instant_or_none(appointment.get("start_date"))
    return (start is None, start or datetime.min, document_id(appointment))


def appointments_user(doc: Mapping, ctx: AppointmentContext) -> Any:
    """3.24: ``user``, else the ``user`` of the referenced coaching document."""
    if doc.get("user") is not None:
        return doc["user"]
    coaching_id, _ = normalize_reference(doc.get("coaching"))
    return ctx.coaching_users.get(coaching_id) if coaching_id else None


def appointments_order(doc: Mapping, ctx: AppointmentContext) -> Any:
    """3.24: ``order``, else the rank by start_date then _id among the coaching's appointments."""
    if doc.get("order") is not None:
        return doc["order"]
    return ctx.ranks.get(document_id(doc))


def _instant_or_none(value: Any) -> datetime | None:
    try:
        return to_timestamp(value) if value is not None else None
    except Reject:
        return None


def recency_key(doc: Mapping) -> tuple:
    """C11: greatest update_date, then creation_date, then _id hex (nulls lowest)."""
    return (_instant_or_none(doc.get("update_date")) or datetime.min,
            _instant_or_none(doc.get("creation_date")) or datetime.min,
            document_id(doc))


def menus_documents(docs: dict[str, list[dict]]) -> list[dict]:
    """3.13: menu events plus the ``menus`` collection; one per _id, most recent wins."""
    candidates = [d for d in docs.get("events", []) if event_discriminator(d) == "menu"]
    candidates += list(docs.get("menus", []))
    winners: dict[str, dict] = {}
    for doc in candidates:
        key = document_id(doc)
        if key not in winners or recency_key(doc) > recency_key(winners[key]):
            winners[key] = doc
    return list(winners.values())


# Column sources that are not the plain C3 field: (table, column) -> fn(doc, ctx) -> raw value.
SPECIAL_SOURCES: dict[tuple[str, str], Callable[[Mapping, Any], Any]] = {
    ("events", "type"): events_type,
    ("users", "birthdate"): users_birthdate,
    ("users_quizzs_questions", "quizz_question_id"): uqq_quizz_question,
    ("appointments", "user_id"): appointments_user,
    ("appointments", "order_nb"): appointments_order,
}

# Per-table preparation (documents of other collections needed by SPECIAL_SOURCES).
TABLE_CONTEXTS: dict[str, Callable[[dict[str, list[dict]]], Any]] = {
    "appointments": appointments_context,
}

# Per-table source documents when not simply docs[mongo_collection].
SOURCE_DOCUMENTS: dict[str, Callable[[dict[str, list[dict]]], list[dict]]] = {
    "menus": menus_documents,
}

# Reference columns without a foreign key. "strict": always C5; "soft": C5 only for ObjectIds
# and embedded documents, other values are plain text.
EXTRA_REFERENCES = {
    ("users_quizzs_questions", "single_enum_answer"): "strict",
    ("items", "updated_by"): "soft",
}

# Table-specific embedded-document key of scalar reference columns (none is specified).
REFERENCE_KEYS: dict[tuple[str, str], str] = {}


# --------------------------------------------------------------------------- row building (C10)

def reference_mode(table: str, column: Column) -> str | None:
    if column.parent:
        return "strict"
    return EXTRA_REFERENCES.get((table, column.name))


def column_value(table: str, column: Column, raw: Any, tz: ZoneInfo,
                 warn: Callable[[str], None]) -> Any:
    mode = reference_mode(table, column)
    if mode == "strict" or (mode == "soft" and looks_like_reference(raw)):
        raw, shape_ok = normalize_reference(raw, REFERENCE_KEYS.get((table, column.name)))
        if not shape_ok:
            warn("bad_reference")
    value = coerce(raw, column, tz)
    if value is None and not column.nullable:
        raise Reject(f"not_null:{column.name}")
    return value


def build_row(spec: TableSpec, doc: Mapping, ctx: Any, parent_ids: dict[str, Any],
              tz: ZoneInfo) -> tuple[dict, list[tuple[str, str]]]:
    """One row, or Reject with the first failure in column order (foreign keys last)."""
    doc_id = document_id(doc)
    warnings: list[tuple[str, str]] = []
    warn = lambda reason: warnings.append((doc_id, reason))  # noqa: E731
    row = {}
    for column in spec.columns:
        special = SPECIAL_SOURCES.get((spec.name, column.name))
        raw = special(doc, ctx) if special else doc.get(column.source)
        row[column.name] = column_value(spec.name, column, raw, tz, warn)
    for column in spec.columns:
        value = row[column.name]
        if column.parent and value is not None and value not in parent_ids[column.parent]:
            if not column.nullable:
                raise Reject(f"fk_missing:{column.name}")
            row[column.name] = None
            warn(f"fk_nulled:{column.name}")
    return row, warnings


def expected_entities(docs: dict[str, list[dict]], tz: str = "Europe/Paris") -> dict[str, Expected]:
    """Expected content of the 21 entity tables after a full load of ``docs``."""
    zone = ZoneInfo(tz)
    specs = load_table_specs()
    result: dict[str, Expected] = {}
    for spec in sorted(specs.values(), key=lambda s: s.export_order):   # parents first
        missing = spec.parents - result.keys()
        assert not missing, f"{spec.name}: parents {missing} not computed yet"
        parent_ids = {p: result[p].rows.keys() for p in spec.parents}
        ctx = TABLE_CONTEXTS[spec.name](docs) if spec.name in TABLE_CONTEXTS else None
        source = SOURCE_DOCUMENTS.get(spec.name, lambda d: d.get(spec.collection, []))(docs)
        expected = Expected(columns=tuple(c.name for c in spec.columns))
        for doc in source:
            try:
                row, warnings = build_row(spec, doc, ctx, parent_ids, zone)
            except Reject as reject:
                expected.rejects[document_id(doc)] = reject.reason
                continue
            expected.rows[row["id"]] = row
            expected.warnings.extend(warnings)
        result[spec.name] = expected
    return result
