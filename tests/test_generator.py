"""Tests of the synthetic source data generator (loader.demo.generator)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from bson import ObjectId

from loader.demo.generator import (
    COLLECTIONS,
    LOGBOOK,
    WORKED_EXAMPLE_EMAIL,
    generate,
    insert,
    worked_example_ids,
)

SIZE = 2_000
PARIS = ZoneInfo("Europe/Paris")
_HEX24 = re.compile(r"[0-9a-fA-F]{24}")

# (collection, field, table-specific key of C5, is an array)
REFERENCE_FIELDS: tuple[tuple[str, str, str | None, bool], ...] = (
    ("targets", "category", None, False),
    ("quizzs", "questions", "question", True),
    ("items", "quizzQuestion", None, False),
    ("items", "userQuizzQuestion", None, False),
    ("contents", "viewed_by", "user", True),
    ("events", "company", None, False),
    ("users", "company", None, False),
    ("users", "registered_events", "event", True),
    ("users", "targets", None, True),
    ("users", "specificity_targets", None, True),
    ("users", "health_targets", None, True),
    ("menurecipes", "menu", None, False),
    ("menurecipes", "recipe", None, False),
    ("messages", "sender", None, False),
    ("messages", "receiver", None, False),
    ("coachings", "user", None, False),
    ("coachings", "diet", None, False),
    ("coachings", "offer", None, False),
    ("coachings", "assessment_quizz", None, False),
    ("coachinglogbooks", "user", None, False),
    ("coachinglogbooks", "logbook", None, False),
    ("coachinglogbooks", "coaching", None, False),
    ("userquizzs", "quizz", None, False),
    ("userquizzs", "questions", "question", True),
    ("userquizzquestions", "quizz_question", None, False),
    ("userquizzquestions", "single_enum_answer", None, False),
    ("userquizzquestions", "qcm_answers", None, True),
    ("appointments", "coaching", None, False),
    ("appointments", "appointment_type", None, False),
    ("periods", "coaching", None, False),
    ("days", "period", None, False),
    ("days", "userQuizz", None, False),
    ("days", "contents", "content", True),
    ("days", "main_logbooks", "logbook", True),
)


def ref_id(value: Any, key: str | None = None) -> str | None:
    """C5 normalisation: the referenced id as lower-case hex, or None for a bad reference."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dict):
        for candidate in (key, "_id"):
            if candidate and candidate in value:
                return ref_id(value[candidate], key)
        return None
    if isinstance(value, str) and _HEX24.fullmatch(value):
        return value.lower()
    return None


def ref_values(data: dict[str, list[dict]], collection: str, field: str) -> Iterator[Any]:
    """Every stored reference value (array elements one by one) of a field."""
    for doc in data[collection]:
        value = doc.get(field)
        if isinstance(value, list):
            yield from value
        elif field in doc:
            yield value


def ids(data: dict[str, list[dict]], collection: str) -> set[str]:
    return {str(doc["_id"]) for doc in data[collection]}


def is_paris_midnight(moment: datetime) -> bool:
    local = moment.replace(tzinfo=timezone.utc).astimezone(PARIS)
    return (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0)


def all_strings(data: dict[str, list[dict]]) -> Iterator[str]:
    for docs in data.values():
        for doc in docs:
            for value in doc.values():
                if isinstance(value, str):
                    yield value


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    return generate(SIZE, seed=7)


# ----------------------------------------------------------------------------- shape and size

def test_same_seed_same_output_and_other_seed_differs(data: dict[str, list[dict]]) -> None:
    assert generate(SIZE, seed=7) == data
    other = generate(SIZE, seed=8)
    assert other != data
    assert ids(other, "users").isdisjoint(ids(data, "users"))


@pytest.mark.parametrize("size", [2_000, 10_000])
def test_size_is_roughly_respected(size: int) -> None:
    total = sum(len(docs) for docs in generate(size, seed=3).values())
    assert abs(total - size) <= 0.05 * size


def test_every_collection_is_present_and_non_empty(data: dict[str, list[dict]]) -> None:
    assert tuple(data) == COLLECTIONS
    assert all(len(data[name]) >= 3 for name in COLLECTIONS)
    big = ("coachinglogbooks", "userquizzs", "userquizzquestions", "items", "days")
    assert min(len(data[name]) for name in big) > max(
        len(data[name]) for name in ("companies", "offers", "categories", "menus", "events"))


def test_base_fields(data: dict[str, list[dict]]) -> None:
    for name, docs in data.items():
        assert len(ids(data, name)) == len(docs), f"duplicate _id in {name}"
        for doc in docs:
            assert isinstance(doc["_id"], ObjectId)
            assert isinstance(doc["__v"], int)
            for key in ("creation_date", "update_date"):
                assert doc[key].tzinfo is None and doc[key].microsecond % 1000 == 0
            assert doc["update_date"] >= doc["creation_date"], (name, doc["_id"])


# ----------------------------------------------------------------------------- quirks

def test_reference_shapes(data: dict[str, list[dict]]) -> None:
    shapes: Counter[str] = Counter()
    for collection, field, _, _ in REFERENCE_FIELDS:
        for value in ref_values(data, collection, field):
            if isinstance(value, ObjectId):
                shapes["oid"] += 1
            elif isinstance(value, dict):
                shapes["embedded" if value else "bad:empty_document"] += 1
            elif isinstance(value, str):
                shape = "bad:string" if not _HEX24.fullmatch(value) else (
                    "hex" if value == value.lower() else "HEX")
                shapes[shape] += 1
            else:
                shapes[f"bad:{type(value).__name__}"] += 1
    assert {"oid", "embedded", "hex", "HEX", "bad:empty_document", "bad:string",
            "bad:int"} <= set(shapes)
    assert shapes["oid"] > 0.9 * sum(shapes.values())
    assert sum(n for shape, n in shapes.items() if shape.startswith("bad:")) <= 10


@pytest.mark.parametrize("collection, field, key", [
    ("users", "registered_events", "event"),
    ("contents", "viewed_by", "user"),
    ("days", "contents", "content"),
    ("days", "main_logbooks", "logbook"),
    ("quizzs", "questions", "question"),
])
def test_embedded_references_with_table_specific_key(data: dict[str, list[dict]],
                                                      collection: str, field: str,
                                                      key: str) -> None:
    assert any(isinstance(v, dict) and key in v for v in ref_values(data, collection, field))


def test_registered_events_mix_shapes_duplicates_empty_and_missing(
        data: dict[str, list[dict]]) -> None:
    customers = [u for u in data["users"] if u["role"] == "CUSTOMER"]
    elements = [e for u in customers for e in u.get("registered_events", [])]
    assert any(isinstance(e, dict) and {"_id", "event", "date"} <= set(e) for e in elements)
    assert any(isinstance(e, ObjectId) for e in elements)
    assert any(u.get("registered_events") == [] for u in customers)
    assert any("registered_events" not in u for u in customers)
    assert any(len({ref_id(e, "event") for e in u["registered_events"]})
               < len(u["registered_events"]) for u in customers if u.get("registered_events"))


def test_dangling_scalar_references(data: dict[str, list[dict]]) -> None:
    companies, users = ids(data, "companies"), ids(data, "users")
    for collection, field, parents in (("users", "company", companies),
                                       ("coachings", "diet", users),
                                       ("messages", "receiver", users)):
        resolved = {ref_id(v) for v in ref_values(data, collection, field)} - {None}
        assert resolved - parents, f"no dangling {collection}.{field}"


def test_missing_optional_fields(data: dict[str, list[dict]]) -> None:
    users = data["users"]
    assert all("company" not in u for u in users if u["role"] in ("DIET", "ADMIN", "SUPPORT"))
    assert any("diet" not in c and "assessment_quizz" not in c for c in data["coachings"])
    assert any("receiver" not in m for m in data["messages"])
    assert any("company" not in e for e in data["events"])
    assert any("type" not in c for c in data["categories"])
    assert any("lastname" not in u for u in users)
    for field in ("insurer", "population", "sso_id"):
        assert 0 < sum(field in u for u in users) < len(users) / 2


def test_event_discriminators(data: dict[str, list[dict]]) -> None:
    events = data["events"]
    kinds = {e.get("__t", e.get("kind")) for e in events}
    assert {"menu", "webinar", "individualChallenge", "collectiveChallenge", None} == kinds
    assert any("kind" in e and "__t" not in e for e in events)
    assert all("company" in e for e in events
               if e.get("__t", e.get("kind")) == "collectiveChallenge")
    menu_events = {str(e["_id"]) for e in events if e.get("__t", e.get("kind")) == "menu"}
    assert {ref_id(v) for v in ref_values(data, "menurecipes", "menu")} <= menu_events


def test_legacy_menus_collections(data: dict[str, list[dict]]) -> None:
    events = {e["_id"]: e for e in data["events"]}
    shared = [m for m in data["menus"] if m["_id"] in events]
    assert len(shared) == 1 and shared[0]["update_date"] != events[shared[0]["_id"]]["update_date"]
    assert 3 <= len(data["menus"]) <= 6 and 3 <= len(data["menu_recipes"]) <= 6
    assert ids(data, "menu_recipes") & ids(data, "menurecipes")


def test_user_arrays_and_birthdays(data: dict[str, list[dict]]) -> None:
    users = data["users"]
    for field in ("targets", "specificity_targets", "health_targets"):
        assert any(u.get(field) for u in users)
    birthdays = [u["birthday"] for u in users if "birthday" in u]
    assert birthdays and all(is_paris_midnight(b) for b in birthdays)
    assert {b.hour for b in birthdays} == {22, 23}  # summer and winter
    assert any("birthdate" in u and "birthday" not in u for u in users)
    assert any("birthdate" not in u and "birthday" not in u for u in users)


def test_local_midnight_days(data: dict[str, list[dict]]) -> None:
    logbook_days = [cl["day"] for cl in data["coachinglogbooks"]]
    assert all(is_paris_midnight(d) for d in logbook_days)
    assert all(is_paris_midnight(d["date"]) for d in data["days"])
    assert datetime(2024, 3, 6, 23) in logbook_days
    assert {d.hour for d in logbook_days} == {22, 23}


def test_coaching_logbooks_without_user(data: dict[str, list[dict]]) -> None:
    missing = sum("user" not in cl for cl in data["coachinglogbooks"])
    assert 1 <= missing <= 0.05 * len(data["coachinglogbooks"])


def test_appointments_mostly_without_stored_fields(data: dict[str, list[dict]]) -> None:
    appointments = data["appointments"]
    stored = [a for a in appointments if {"user", "validated", "order"} <= set(a)]
    assert 1 <= len(stored) < len(appointments) / 2
    assert all({"user", "validated", "order"}.isdisjoint(a) for a in appointments
               if a not in stored)
    assert any(a["start_date"].hour or a["start_date"].minute for a in appointments)
    assert all(a["end_date"] > a["start_date"] for a in appointments)


def test_user_question_template_keys_and_answers(data: dict[str, list[dict]]) -> None:
    questions = data["userquizzquestions"]
    legacy = sum("quizzQuestion" in q for q in questions)
    assert 1 <= legacy < 0.1 * len(questions)
    assert all(("quizz_question" in q) != ("quizzQuestion" in q) for q in questions)
    answer_fields = ("boolean_answer", "scale_1_10_answer", "text_answer", "document_answer",
                     "numeric_answer", "single_enum_answer", "qcm_answers")
    for field in answer_fields:
        assert any(field in q for q in questions), field
    assert all(1 <= q["scale_1_10_answer"] <= 10 and isinstance(q["scale_1_10_answer"], int)
               for q in questions if "scale_1_10_answer" in q)
    numeric = [q["numeric_answer"] for q in questions if "numeric_answer" in q]
    assert any(isinstance(n, int) for n in numeric)
    assert any(isinstance(n, float) and n != int(n) for n in numeric)
    assert any(q.get("document_answer", "").startswith("https://") for q in questions)
    unanswered = [q for q in questions if not any(f in q for f in answer_fields)]
    assert len(unanswered) > len(questions) / 3
    assert any("comment" in q for q in questions)


def test_free_text_items_include_empty_texts(data: dict[str, list[dict]]) -> None:
    answers = [i for i in data["items"] if "userQuizzQuestion" in i]
    options = [i for i in data["items"] if "quizzQuestion" in i]
    assert answers and options and len(answers) + len(options) == len(data["items"])
    assert any(i["text"] == "" for i in answers)


def test_offer_numbers(data: dict[str, list[dict]]) -> None:
    offers = data["offers"]
    values = [o["duration"] for o in offers] + [o["coaching_credit"] for o in offers]
    assert any(isinstance(v, float) and v.is_integer() for v in values)
    assert 12.5 in values and 100_000 in values and "12" in values


def test_unicode_and_odd_strings(data: dict[str, list[dict]]) -> None:
    strings = list(all_strings(data))
    assert any("Dîner" == s for s in strings) and any("Petit-déjeuner" == s for s in strings)
    assert any(re.search(r"[\u3040-\u9fff]", s) for s in strings)  # CJK
    assert any(re.search(r"[\U0001F300-\U0001FAFF]", s) for s in strings)  # emoji
    assert any(s != s.strip() for s in strings)
    assert sum(len(s) > 255 for s in strings) == 1


# ----------------------------------------------------------------------------- relations

def test_coaching_references(data: dict[str, list[dict]]) -> None:
    roles = {str(u["_id"]): u["role"] for u in data["users"]}
    quizz_types = {str(q["_id"]): q["type"] for q in data["userquizzs"]}
    offers = ids(data, "offers")
    for coaching in data["coachings"]:
        assert roles[ref_id(coaching["user"])] == "CUSTOMER"
        assert ref_id(coaching["offer"]) in offers
        diet = ref_id(coaching.get("diet"))
        assert diet is None or diet not in roles or roles[diet] == "DIET"
        if "assessment_quizz" in coaching:
            assert quizz_types[ref_id(coaching["assessment_quizz"])] == "QUIZZ_TYPE_ASSESSMENT"


def test_coaching_logbooks_reference_logbook_quizzes(data: dict[str, list[dict]]) -> None:
    quizzes = {str(q["_id"]): q for q in data["userquizzs"]}
    coachings = {str(c["_id"]): c for c in data["coachings"]}
    users = {str(u["_id"]) for u in data["users"]}
    per_logbook = Counter(ref_id(cl["logbook"]) for cl in data["coachinglogbooks"])
    for cl in data["coachinglogbooks"]:
        assert quizzes[ref_id(cl["logbook"])]["type"] == LOGBOOK
        coaching = coachings[ref_id(cl["coaching"])]
        if "user" in cl and ref_id(cl["user"]) in users:  # else the quirk "unknown_user"
            assert ref_id(cl["user"]) == ref_id(coaching["user"])
    unknown = [cl for cl in data["coachinglogbooks"] if "user" in cl and ref_id(cl["user"]) not in users]
    assert 1 <= len(unknown) <= 5 + 0.001 * len(data["coachinglogbooks"])
    logbook_quizzes = {i for i, q in quizzes.items() if q["type"] == LOGBOOK}
    abnormal = len(logbook_quizzes) - Counter(per_logbook.values())[1]
    assert abnormal <= 5 + 0.01 * len(logbook_quizzes)  # one coaching logbook per quiz, normally
    per_user_day = Counter((ref_id(cl.get("user")), cl["day"]) for cl in data["coachinglogbooks"])
    assert max(per_user_day.values()) >= 3  # one logbook per expected template and day


def test_user_quizzes_clone_templates(data: dict[str, list[dict]]) -> None:
    templates = {str(t["_id"]): t for t in data["quizzs"]}
    template_questions = ids(data, "quizzquestions")
    user_questions = {str(q["_id"]): q for q in data["userquizzquestions"]}
    deleted = Counter()  # the quirks question_deleted / template_deleted of logbooks
    for quizz in data["userquizzs"]:
        template = templates[ref_id(quizz["quizz"])]
        assert (quizz["name"], quizz["type"]) == (template["name"], template["type"])
        for element in quizz["questions"]:
            question = user_questions.get(ref_id(element, "question"))
            if question is None:
                deleted["question", quizz["type"]] += 1
                continue
            template_ref = question.get("quizz_question", question.get("quizzQuestion"))
            if ref_id(template_ref) not in template_questions:
                deleted["template", quizz["type"]] += 1
    assert set(deleted) == {("question", LOGBOOK), ("template", LOGBOOK)}
    assert max(deleted.values()) <= 5 + 0.001 * len(data["userquizzquestions"])
    for template in data["quizzs"]:
        assert {ref_id(q, "question") for q in template["questions"]} <= template_questions


def test_items_and_answers_point_to_existing_questions(data: dict[str, list[dict]]) -> None:
    template_questions, user_questions = ids(data, "quizzquestions"), ids(data, "userquizzquestions")
    items = {str(i["_id"]): i for i in data["items"]}
    for item in data["items"]:
        if "quizzQuestion" in item:
            assert ref_id(item["quizzQuestion"]) in template_questions
        else:
            assert ref_id(item["userQuizzQuestion"]) in user_questions
    deleted_options = 0  # the quirk answer_option_deleted
    for question in data["userquizzquestions"]:
        chosen = list(question.get("qcm_answers", []))
        if "single_enum_answer" in question:
            chosen.append(question["single_enum_answer"])
        deleted_options += sum(ref_id(c) not in items for c in chosen)
        assert all("quizzQuestion" in items[ref_id(c)] for c in chosen if ref_id(c) in items)  # template options
    assert 1 <= deleted_options <= 5 + 0.001 * len(data["userquizzquestions"])


def test_days_periods_and_appointments(data: dict[str, list[dict]]) -> None:
    periods, coachings = ids(data, "periods"), ids(data, "coachings")
    contents = ids(data, "contents")
    logbooks = {str(q["_id"]) for q in data["userquizzs"] if q["type"] == LOGBOOK}
    for day in data["days"]:
        assert ref_id(day["period"]) in periods
        assert {ref_id(c, "content") for c in day["contents"]} <= contents
        assert {ref_id(q, "logbook") for q in day["main_logbooks"]} - {None} <= logbooks
    assert {ref_id(p["coaching"]) for p in data["periods"]} <= coachings
    assert {ref_id(a["coaching"]) for a in data["appointments"]} <= coachings
    assert {ref_id(v) for v in ref_values(data, "appointments", "appointment_type")} \
        <= ids(data, "appointmenttypes")


def test_worked_example(data: dict[str, list[dict]]) -> None:
    example = worked_example_ids(data)
    by_id = {doc["_id"]: doc for docs in data.values() for doc in docs}
    assert by_id[example["user"]]["email"] == WORKED_EXAMPLE_EMAIL
    logbooks = [by_id[example[f"CL{k}"]] for k in (1, 2, 3)]
    assert all(cl["day"] == datetime(2024, 3, 6, 23) for cl in logbooks)
    assert [by_id[example[k]]["name"] for k in ("UQ-A", "UQ-B", "UQ-C")] \
        == ["Petit-déjeuner", "Dîner", "Collation"]
    assert [by_id[example[k]]["text"] for k in ("item:pain", "item:café", "item:empty",
                                                "item:Oui")] == ["pain", "café", "", "Oui"]
    assert by_id[example["Q2"]]["scale_1_10_answer"] == 7
    assert by_id[example["Q3"]]["single_enum_answer"] == example["item:Oui"]
    assert by_id[example["Q4"]]["text_answer"] == "Salade"
    assert by_id[example["Q5"]]["boolean_answer"] is False
    user_logbooks = [cl for cl in data["coachinglogbooks"] if cl.get("user") == example["user"]]
    assert len(user_logbooks) == 3
    uq_c = by_id[example["UQ-C"]]
    assert all(set(by_id[q]) <= {"_id", "creation_date", "update_date", "__v", "quizz_question"}
               for q in uq_c["questions"])


# ----------------------------------------------------------------------------- MongoDB

def test_insert_round_trip(data: dict[str, list[dict]]) -> None:
    secantus = pytest.importorskip("secantus")
    pymongo = pytest.importorskip("pymongo")
    server = secantus.SecantusDBServer(storage_path=":memory:")
    server.start()
    try:
        with pymongo.MongoClient(server.uri) as client:
            db = client["smartdiet"]
            inserted = insert(db, data, batch_size=500)
            expected = {name: len(docs) for name, docs in data.items()}
            assert inserted == expected
            assert {name: db[name].count_documents({}) for name in COLLECTIONS} == expected
            logbook = data["coachinglogbooks"][0]
            assert db["coachinglogbooks"].find_one({"_id": logbook["_id"]}) == logbook
    finally:
        server.stop()
