"""Independent test oracle for the relationship, UPSERT-KEY and moments tables.

Plain-Python computation, written from spec/MAPPING.md (C5, C10, C11; sections 3.14, 3.16, 3.17,
3.20, 3.21, 3.23, 3.27, 3.28, 3.30-3.32, 4, 5.5, 5.6), of what the PostgreSQL tables must contain
after a FULL load of the given MongoDB documents.  It imports nothing from ``loader``; parents'
accepted rows come from :func:`oracle.expected_entities` (foreign keys are checked against them).

Entry point: :func:`expected_relations`.

Result shape (:class:`RelationExpected`, a subclass of ``oracle.Expected``):

* ``rows``: tables without an ``id`` column are keyed by the tuple of their unique-constraint
  columns (YAML order), e.g. ``("<quizz hex>", "<question hex>")``; ``users_logbook`` by
  ``(user_id, day)`` and its rows carry no ``id`` (generated); ``users_logbooks_moments`` rows carry
  ``user_logbook_key = (user_id, day)`` instead of the generated ``user_logbook_id``; the details
  table is keyed by ``id``.
* ``reject_list``: every rejected row as ``(source document id hex, reason)`` in source order (a
  parent document of a DELETE-INSERT table may have several rejected rows); ``rejects`` keeps the
  first reason per source document (``oracle.Expected`` compatibility).
* ``warnings``: ``(source document id hex, reason)``; ``skips``: source id hex -> skip reason.

Choices made where the specification is silent:

* Row-level checks follow ``oracle.build_row``: every column is computed first (``not_null`` /
  ``type_error`` in column order), foreign keys are checked last, in column order.  So a parent
  document rejected from its entity table for a missing ``creation_date`` gives
  ``not_null:created_at`` on its relationship rows, any other rejected parent gives
  ``fk_missing:<parent column>``.
* DELETE-INSERT element pipeline (5.6 step 1 order): C5 normalisation (NULL -> dropped, warning
  ``bad_reference``), then de-duplication on the normalised id (later copies -> warning
  ``duplicate_in_source``, even if the first copy is later rejected), then row checks.  An array
  field that is missing or null gives no rows; a non-array value gives no rows and one warning
  ``bad_reference``.
* user_events: the element's ``date`` is used when the element is a document whose ``date`` is
  present and not null; an unreadable ``date`` rejects the row (``type_error``).
* users_logbook: documents whose ``user`` is missing/null or does not normalise are skipped
  (``no_user``) without a ``bad_reference`` warning; ``day`` missing -> ``not_null:day``; any
  unreadable ``day``/timestamp -> ``type_error`` (the document is rejected before grouping); a
  group whose greatest timestamp is null -> every document of the group rejected
  ``not_null:created_at`` / ``not_null:updated_at``; unknown user -> every document of the group
  rejected ``fk_missing:user_id``.  menu_recipes follows the same group rules.
* Moments: the skip reasons are evaluated before the row's own checks (``not_null:type`` ...), so a
  nameless candidate without answers is a skip, not a reject.  ``no_questions`` when no element
  of ``questions`` normalises.  A detail row counts as "produced" when an answer was found, even if
  the detail row is then rejected (e.g. ``not_null:created_at`` of an item); details of a rejected
  or skipped moment are not recorded anywhere.  Unusable-shape inline references
  (``single_enum_answer`` not normalising) make that field unusable; an unreadable scale/boolean
  value rejects the detail row (``type_error``).  Bad ``questions[]`` elements are not warned about
  again here (users_quizzs_links_questions already logs them).  A chosen coaching logbook whose
  ``user`` does not normalise counts as ``no_user_or_day``; an unreadable ``day`` as
  ``no_users_logbook_match``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable
from zoneinfo import ZoneInfo

import yaml

from oracle import (
    SCHEMA_PATH,
    Column,
    Expected,
    Reject,
    _instant_or_none,
    coerce,
    document_id,
    expected_entities,
    normalize_reference,
    parse_foreign_key,
    parse_sql_type,
    recency_key,
    to_boolean,
    to_integer,
    to_local_date,
    to_text,
    uqq_quizz_question,
)

LOGBOOK_TYPE = "QUIZZ_TYPE_LOGBOOK"


@dataclass
class RelationExpected(Expected):
    reject_list: list[tuple[str, str]] = field(default_factory=list)  # (source _id hex, reason)
    skips: dict[str, str] = field(default_factory=dict)             # source _id hex -> reason
    key_columns: tuple[str, ...] = ()                               # key of ``rows``

    def reject(self, doc_id: str, reason: str) -> None:
        self.reject_list.append((doc_id, reason))
        self.rejects.setdefault(doc_id, reason)


# --------------------------------------------------------------------------- schema (YAML)

@dataclass(frozen=True)
class RelationSpec:
    name: str
    columns: tuple[Column, ...]
    unique: tuple[str, ...]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def load_relation_specs() -> dict[str, RelationSpec]:
    """Tables declared with an explicit ``columns`` list (no base columns)."""
    raw = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    tables = raw.get("tables", raw)
    specs = {}
    for key, table in tables.items():
        if table.get("include_base") or not table.get("columns"):
            continue
        name = table.get("name", key)
        columns = []
        for c in table["columns"]:
            kind, length = parse_sql_type(c["sql_type"]) if c["sql_type"] != "SERIAL" else ("INTEGER", None)
            columns.append(Column(c["name"], kind, length, c.get("nullable", True), c["name"],
                                  parse_foreign_key(c.get("foreign_key"))))
        unique = tuple((table.get("unique_constraints") or [[]])[0])
        specs[name] = RelationSpec(name, tuple(columns), unique)
    return specs


# --------------------------------------------------------------------------- helpers

def _value(column: Column, raw: Any, tz: ZoneInfo) -> Any:
    value = coerce(raw, column, tz)
    if value is None and not column.nullable:
        raise Reject(f"not_null:{column.name}")
    return value


def _check_fks(spec: RelationSpec, row: dict, entities: dict[str, Expected]) -> None:
    for column in spec.columns:
        if column.parent and column.parent in entities and row[column.name] is not None:
            if row[column.name] not in entities[column.parent].rows:
                raise Reject(f"fk_missing:{column.name}")


# --------------------------------------------------------------------------- DELETE-INSERT (5.6)

@dataclass(frozen=True)
class ArraySource:
    array: str                  # field of the parent document
    ref_key: str | None         # C5 table-specific key
    extra: dict = field(default_factory=dict)  # constant columns (users_targets.type)


@dataclass(frozen=True)
class DeleteInsert:
    table: str
    collection: str
    parent_column: str
    element_column: str
    arrays: tuple[ArraySource, ...]
    element_date: bool = False  # user_events: created_at from the element's ``date``


DELETE_INSERT = (
    DeleteInsert("quizzs_links_questions", "quizzs", "quizz_id", "question_id",
                 (ArraySource("questions", "question"),)),
    DeleteInsert("user_events", "users", "user_id", "event_id",
                 (ArraySource("registered_events", "event"),), element_date=True),
    DeleteInsert("users_targets", "users", "user_id", "target_id",
                 (ArraySource("targets", "_id", {"type": "basic"}),
                  ArraySource("specificity_targets", "_id", {"type": "specificity"}),
                  ArraySource("health_targets", "_id", {"type": "health"}))),
    DeleteInsert("users_quizzs_links_questions", "userquizzs", "user_quizz_id",
                 "user_quizz_question_id", (ArraySource("questions", "question"),)),
    DeleteInsert("users_contents_reads", "contents", "content_id", "user_id",
                 (ArraySource("viewed_by", "user"),)),
    DeleteInsert("days_contents_links", "days", "day_id", "content_id",
                 (ArraySource("contents", "content"),)),
    DeleteInsert("days_logbooks_links", "days", "day_id", "logbook_id",
                 (ArraySource("main_logbooks", "logbook"),)),
)


def delete_insert_table(rule: DeleteInsert, spec: RelationSpec, docs: dict[str, list[dict]],
                        entities: dict[str, Expected], tz: ZoneInfo) -> RelationExpected:
    out = RelationExpected(columns=tuple(c.name for c in spec.columns), key_columns=spec.unique)
    for parent in docs.get(rule.collection, []):
        parent_id = document_id(parent)
        for source in rule.arrays:
            elements = parent.get(source.array)
            if elements is None:
                continue
            if not isinstance(elements, list):
                out.warnings.append((parent_id, "bad_reference"))
                continue
            seen: set[str] = set()
            for element in elements:
                target, _ = normalize_reference(element, source.ref_key)
                if target is None:
                    out.warnings.append((parent_id, "bad_reference"))
                    continue
                if target in seen:
                    out.warnings.append((parent_id, "duplicate_in_source"))
                    continue
                seen.add(target)
                try:
                    row = _relation_row(rule, source, spec, parent, parent_id, element, target, tz)
                    _check_fks(spec, row, entities)
                except Reject as reject:
                    out.reject(parent_id, reject.reason)
                    continue
                out.rows[tuple(row[c] for c in spec.unique)] = row
    return out


def _relation_row(rule: DeleteInsert, source: ArraySource, spec: RelationSpec, parent: Mapping,
                  parent_id: str, element: Any, target: str, tz: ZoneInfo) -> dict:
    raw_created = parent.get("creation_date")
    if rule.element_date and isinstance(element, Mapping) and element.get("date") is not None:
        raw_created = element["date"]
    raw = {rule.parent_column: parent_id, rule.element_column: target, **source.extra,
           "created_at": raw_created}
    row = {}
    for column in spec.columns:
        if column.name == "updated_at":
            value = parent.get("update_date")
            row["updated_at"] = _value(column, value, tz) if value is not None else row["created_at"]
            if row["updated_at"] is None:
                raise Reject("not_null:updated_at")
        else:
            row[column.name] = _value(column, raw[column.name], tz)
    return row


# --------------------------------------------------------------------------- UPSERT-KEY (5.5)

def _group_table(spec: RelationSpec, documents: list[dict], key_of: Callable[[Mapping], tuple],
                 entities: dict[str, Expected], tz: ZoneInfo, out: RelationExpected) -> None:
    """Group documents by key; created_at/updated_at = greatest of the group (nulls ignored)."""
    ts = {c: spec.column(c) for c in ("created_at", "updated_at")}
    groups: dict[tuple, list[tuple[str, datetime | None, datetime | None]]] = defaultdict(list)
    for doc in documents:
        doc_id = document_id(doc)
        try:
            key = key_of(doc)
            if key is None:
                continue
            created = coerce(doc.get("creation_date"), ts["created_at"], tz)
            updated = coerce(doc.get("update_date"), ts["updated_at"], tz)
        except Reject as reject:
            out.reject(doc_id, reject.reason)
            continue
        groups[key].append((doc_id, created, updated))
    for key, members in groups.items():
        row = dict(zip(spec.unique, key))
        row["created_at"] = max((m[1] for m in members if m[1] is not None), default=None)
        row["updated_at"] = max((m[2] for m in members if m[2] is not None), default=None)
        try:
            for name in ("created_at", "updated_at"):
                if row[name] is None:
                    raise Reject(f"not_null:{name}")
            _check_fks(spec, row, entities)
        except Reject as reject:
            for doc_id, _, _ in members:
                out.reject(doc_id, reject.reason)
            continue
        out.rows[key] = row


def users_logbook_table(spec: RelationSpec, docs: dict[str, list[dict]],
                        entities: dict[str, Expected], tz: ZoneInfo) -> RelationExpected:
    out = RelationExpected(columns=tuple(c.name for c in spec.columns if c.name != "id"),
                           key_columns=spec.unique)

    def key_of(doc: Mapping) -> tuple | None:
        user_id, _ = normalize_reference(doc.get("user"))
        if user_id is None:
            out.skips[document_id(doc)] = "no_user"
            return None
        day = _value(spec.column("day"), doc.get("day"), tz)
        return (user_id, day)

    _group_table(spec, docs.get("coachinglogbooks", []), key_of, entities, tz, out)
    return out


def menu_recipe_documents(docs: dict[str, list[dict]]) -> list[dict]:
    """3.21: ``menurecipes`` + ``menu_recipes``, one document per _id (C11 tie-break)."""
    winners: dict[str, dict] = {}
    for doc in [*docs.get("menurecipes", []), *docs.get("menu_recipes", [])]:
        key = document_id(doc)
        if key not in winners or recency_key(doc) > recency_key(winners[key]):
            winners[key] = doc
    return list(winners.values())


def menu_recipes_table(spec: RelationSpec, docs: dict[str, list[dict]],
                       entities: dict[str, Expected], tz: ZoneInfo) -> RelationExpected:
    out = RelationExpected(columns=tuple(c.name for c in spec.columns), key_columns=spec.unique)

    def key_of(doc: Mapping) -> tuple:
        key = []
        for column, fld in (("menu_id", "menu"), ("recipe_id", "recipe")):
            ref, _ = normalize_reference(doc.get(fld))
            if ref is None:
                raise Reject(f"not_null:{column}")
            key.append(ref)
        return tuple(key)

    _group_table(spec, menu_recipe_documents(docs), key_of, entities, tz, out)
    return out


# --------------------------------------------------------------------------- moments (section 4)

MOMENT_COLUMNS = ("id", "created_at", "updated_at", "user_logbook_key", "type")
DETAIL_COLUMNS = ("id", "created_at", "updated_at", "user_logbook_moment_id", "question", "answer")
TS = Column("ts", "TIMESTAMP", None, False, "", None)


class Skip(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _timestamps(doc: Mapping, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """C2: creation_date / update_date, no fallback."""
    out = []
    for column, fld in (("created_at", "creation_date"), ("updated_at", "update_date")):
        value = coerce(doc.get(fld), TS, tz)
        if value is None:
            raise Reject(f"not_null:{column}")
        out.append(value)
    return out[0], out[1]


def _item_text(item_ref: Any, items_by_id: dict[str, dict], warn: Callable[[str], None]) -> str | None:
    item_id, _ = normalize_reference(item_ref)
    if item_id is None:
        return None
    item = items_by_id.get(item_id)
    if item is None:
        warn("answer_item_missing")
        return item_id
    text = item.get("text")
    return None if text is None else to_text(text, None)


def inline_answer(q: Mapping, items_by_id: dict[str, dict], warn: Callable[[str], None]) -> str | None:
    """4.4 step 2: the first usable inline field, rendered; None when none is usable."""
    qcm = q.get("qcm_answers")
    if isinstance(qcm, list) and qcm:
        texts = [_item_text(e, items_by_id, warn) for e in qcm]
        joined = ", ".join(t for t in texts if t)
        if joined:
            return joined
    if q.get("scale_1_10_answer") is not None:
        return str(to_integer(q["scale_1_10_answer"], "INTEGER"))
    if q.get("single_enum_answer") is not None:
        item_id, _ = normalize_reference(q["single_enum_answer"])
        if item_id is not None:
            text = _item_text(item_id, items_by_id, warn)
            return "" if text is None else text
    if q.get("boolean_answer") is not None:
        return "True" if to_boolean(q["boolean_answer"]) else "False"
    for fld in ("document_answer", "text_answer"):
        if q.get(fld) is not None and q[fld] != "":
            return to_text(q[fld], None)
    if q.get("numeric_answer") is not None:
        return to_text(q["numeric_answer"], None)
    return None


def _choose_logbook(logbooks: list[dict]) -> dict:
    """4.5 step 2: documents with both user and day first, then C11 (greatest)."""
    return max(logbooks, key=lambda d: (d.get("user") is not None and d.get("day") is not None,
                                        recency_key(d)))


def moments_tables(docs: dict[str, list[dict]], logbook: RelationExpected,
                   tz: ZoneInfo) -> tuple[RelationExpected, RelationExpected]:
    moments = RelationExpected(columns=MOMENT_COLUMNS, key_columns=("id",))
    details = RelationExpected(columns=DETAIL_COLUMNS, key_columns=("id",))
    uqq_by_id = {document_id(d): d for d in docs.get("userquizzquestions", [])}
    templates = {document_id(d): d for d in docs.get("quizzquestions", [])}
    items_by_id = {document_id(d): d for d in docs.get("items", [])}
    items_by_question: dict[str, list[dict]] = defaultdict(list)
    for item in docs.get("items", []):
        qid, _ = normalize_reference(item.get("userQuizzQuestion"))
        if qid is not None:
            items_by_question[qid].append(item)
    logbooks_by_quiz: dict[str, list[dict]] = defaultdict(list)
    for cl in docs.get("coachinglogbooks", []):
        uq_id, _ = normalize_reference(cl.get("logbook"))
        if uq_id is not None:
            logbooks_by_quiz[uq_id].append(cl)

    for uq in docs.get("userquizzs", []):
        if uq.get("type") != LOGBOOK_TYPE:
            continue
        uq_id = document_id(uq)
        warn = lambda reason, _id=uq_id: moments.warnings.append((_id, reason))  # noqa: E731
        try:
            answers = _answers(uq, uqq_by_id, templates, items_by_id, items_by_question, warn)
            key = _logbook_key(uq_id, logbooks_by_quiz, logbook, tz)
        except Skip as skip:
            moments.skips[uq_id] = skip.reason
            continue
        try:
            created, updated = _timestamps(uq, tz)
            name = coerce(uq.get("name"), Column("type", "VARCHAR", 255, False, "name", None), tz)
            if name is None:
                raise Reject("not_null:type")
        except Reject as reject:
            moments.reject(uq_id, reject.reason)
            continue
        moments.rows[uq_id] = {"id": uq_id, "created_at": created, "updated_at": updated,
                               "user_logbook_key": key, "type": name}
        for source, title, answer in answers:
            source_id = document_id(source)
            try:
                if isinstance(answer, Reject):
                    raise answer
                created, updated = _timestamps(source, tz)
            except Reject as reject:
                details.reject(source_id, reject.reason)
                continue
            if source_id in details.rows:
                details.warnings.append((source_id, "detail_moved"))
            details.rows[source_id] = {"id": source_id, "created_at": created, "updated_at": updated,
                                       "user_logbook_moment_id": uq_id, "question": title,
                                       "answer": answer}
    return moments, details


def _answers(uq: Mapping, uqq_by_id, templates, items_by_id, items_by_question,
             warn) -> list[tuple[dict, str, Any]]:
    """4.3 + 4.4: (source document, question title, answer text or Reject) in order."""
    question_ids: list[str] = []
    elements = uq.get("questions")
    for element in elements if isinstance(elements, list) else []:
        qid, _ = normalize_reference(element, "question")
        if qid is not None and qid not in question_ids:
            question_ids.append(qid)
    if not question_ids:
        raise Skip("no_questions")
    answers = []
    for qid in question_ids:
        q = uqq_by_id.get(qid)
        if q is None:
            warn("question_missing")
            continue
        template_id, _ = normalize_reference(uqq_quizz_question(q, None))
        template = templates.get(template_id) if template_id else None
        if template is None:
            warn("template_missing")
            continue
        try:
            title = to_text(template["title"], None) if template.get("title") is not None else ""
        except Reject:
            title = ""
        items = [i for i in items_by_question.get(qid, [])
                 if i.get("text") is not None and i.get("text") != ""]
        items.sort(key=lambda i: (_instant_or_none(i.get("creation_date")) is None,
                                  _instant_or_none(i.get("creation_date")) or datetime.min,
                                  document_id(i)))
        if items:
            for item in items:
                try:
                    answer: Any = to_text(item["text"], None)
                except Reject as reject:
                    answer = reject
                answers.append((item, title, answer))
            continue
        try:
            answer = inline_answer(q, items_by_id, warn)
        except Reject as reject:
            answer = reject
        if answer is not None:
            answers.append((q, title, answer))
    if not answers:
        raise Skip("no_answers")
    return answers


def _logbook_key(uq_id: str, logbooks_by_quiz, logbook: RelationExpected,
                 tz: ZoneInfo) -> tuple[str, date]:
    """4.5: (user hex, C8 day) of the chosen coaching logbook, present in users_logbook."""
    candidates = logbooks_by_quiz.get(uq_id)
    if not candidates:
        raise Skip("no_coachinglogbook")
    chosen = _choose_logbook(candidates)
    user_id, _ = normalize_reference(chosen.get("user"))
    if user_id is None or chosen.get("day") is None:
        raise Skip("no_user_or_day")
    try:
        key = (user_id, to_local_date(chosen["day"], tz))
    except Reject:
        raise Skip("no_users_logbook_match") from None
    if key not in logbook.rows:
        raise Skip("no_users_logbook_match")
    return key


# --------------------------------------------------------------------------- entry point

def expected_relations(docs: dict[str, list[dict]], tz: str = "Europe/Paris",
                       entities: dict[str, Expected] | None = None) -> dict[str, RelationExpected]:
    """Expected content of the relationship, UPSERT-KEY and moments tables after a full load."""
    zone = ZoneInfo(tz)
    if entities is None:
        entities = expected_entities(docs, tz)
    specs = load_relation_specs()
    result: dict[str, RelationExpected] = {}
    for rule in DELETE_INSERT:
        result[rule.table] = delete_insert_table(rule, specs[rule.table], docs, entities, zone)
    result["users_logbook"] = users_logbook_table(specs["users_logbook"], docs, entities, zone)
    result["menu_recipes"] = menu_recipes_table(specs["menu_recipes"], docs, entities, zone)
    moments, details = moments_tables(docs, result["users_logbook"], zone)
    result["users_logbooks_moments"] = moments
    result["users_logbooks_moments_details"] = details
    return result
