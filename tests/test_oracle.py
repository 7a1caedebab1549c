"""Checks of the independent oracle (tests/oracle.py) against the examples stated in MAPPING.md."""

from __future__ import annotations

import itertools
from pathlib import Path
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from bson import Decimal128, ObjectId

from oracle import ENTITY_TABLES, expected_entities, load_table_specs, normalize_reference

T0 = datetime(2024, 1, 10, 8, 30, 0)                    # naive = UTC
_counter = itertools.count(1)


def oid() -> ObjectId:
    """Deterministic, increasing ObjectIds (so _id hex order == creation order)."""
    return ObjectId(f"{next(_counter):024x}")


def doc(**fields) -> dict:
    """A document with the three base fields; override or drop (value ...) any of them."""
    base = {"_id": oid(), "creation_date": T0, "update_date": T0 + timedelta(hours=1)}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def hx(document: dict) -> str:
    return str(document["_id"])


def user(**fields) -> dict:
    return doc(**{"firstname": "Ann", "lastname": "Lee", "email": "ann@example.org",
                  "role": "CUSTOMER", **fields})


# --------------------------------------------------------------------------- schema / shape

def test_all_21_tables_with_full_rows():
    company = doc(name="ACME")
    member = user(company=company["_id"])
    result = expected_entities({"companies": [company], "users": [member]})
    assert set(result) == set(ENTITY_TABLES) and len(result) == 21
    row = result["users"].rows[hx(member)]
    assert list(row) == list(result["users"].columns) == [
        "id", "created_at", "updated_at", "firstname", "lastname", "email", "insurer",
        "population", "sso_id", "birthdate", "company_id", "role"]
    assert row["company_id"] == hx(company)
    assert row["insurer"] is None and row["birthdate"] is None


def test_specs_come_from_yaml():
    specs = load_table_specs()
    periods = {c.name: c for c in specs["periods"].columns}
    assert periods["days_numbers"].source == "number_of_days"
    assert periods["order_nb"].kind == "SMALLINT" and not periods["order_nb"].nullable
    assert periods["coaching_id"].parent == "coachings" and periods["coaching_id"].nullable
    assert specs["days"].export_order == 5


SEED_SCHEMA = Path("/work/shared/reference/seed_schemas.yaml")


@pytest.mark.skipif(not SEED_SCHEMA.exists(), reason="seed schema not available")
def test_config_entity_tables_match_the_seed_schema():
    """config/schemas.yaml may carry loader extensions, but not different entity columns."""
    assert load_table_specs() == load_table_specs(SEED_SCHEMA)


# --------------------------------------------------------------------------- C5 references

def test_reference_shapes_direct():
    o = ObjectId("65e8f0a1b2c3d4e5f6a7b8c9")
    assert normalize_reference(o) == (str(o), True)
    assert normalize_reference({"event": o, "date": T0}, key="event") == (str(o), True)
    assert normalize_reference({"_id": o}) == (str(o), True)
    assert normalize_reference({"_id": o, "event": ObjectId()}, key="user") == (str(o), True)
    assert normalize_reference({"event": {"_id": o}}, key="event") == (str(o), True)  # recursive
    assert normalize_reference(str(o).upper()) == (str(o), True)
    assert normalize_reference(None) == (None, True)
    for bad in (12345, {}, [o], "not-an-id", "", str(o) + "0"):
        assert normalize_reference(bad) == (None, False), bad


def test_reference_shapes_through_a_table():
    u1, u2 = user(), user()
    shapes = {
        "oid": doc(content="a", sender=u1["_id"]),
        "embedded": doc(content="b", sender={"_id": u1["_id"], "firstname": "Ann"}),
        "upper": doc(content="c", sender=str(u2["_id"]).upper()),
        "number": doc(content="d", sender=12345, receiver=u2["_id"]),
    }
    result = expected_entities({"users": [u1, u2], "messages": list(shapes.values())})["messages"]
    assert result.rejects == {}
    senders = {k: result.rows[hx(d)]["sender_id"] for k, d in shapes.items()}
    assert senders == {"oid": hx(u1), "embedded": hx(u1), "upper": hx(u2), "number": None}
    assert result.rows[hx(shapes["number"])]["receiver_id"] == hx(u2)
    assert result.warnings == [(hx(shapes["number"]), "bad_reference")]


# --------------------------------------------------------------------------- C7 / C8 dates

@pytest.mark.parametrize("tz, expected", [("Europe/Paris", date(2024, 3, 7)), ("UTC", date(2024, 3, 6))])
def test_local_date_paris_vs_utc(tz, expected):
    naive = user(birthday=datetime(2024, 3, 6, 23, 0))
    aware = user(birthday=datetime(2024, 3, 6, 23, 0, tzinfo=timezone.utc))
    text = user(birthday="2024-03-06T23:00:00Z")
    rows = expected_entities({"users": [naive, aware, text]}, tz=tz)["users"].rows
    assert {rows[hx(u)]["birthdate"] for u in (naive, aware, text)} == {expected}


def test_summer_local_midnight_and_plain_date_string():
    summer = user(birthday=datetime(2024, 7, 14, 22, 0))           # 15 July 00:00 in Paris
    plain = user(birthday="1990-05-17")
    rows = expected_entities({"users": [summer, plain]})["users"].rows
    assert rows[hx(summer)]["birthdate"] == date(2024, 7, 15)
    assert rows[hx(plain)]["birthdate"] == date(1990, 5, 17)


def test_timestamps_are_naive_utc_milliseconds():
    paris = ZoneInfo("Europe/Paris")
    ing = doc(name="salt", creation_date=datetime(2024, 3, 7, 0, 0, tzinfo=paris),
              update_date=datetime(2024, 3, 7, 1, 2, 3, 456789))
    row = expected_entities({"ingredients": [ing]})["ingredients"].rows[hx(ing)]
    assert row["created_at"] == datetime(2024, 3, 6, 23, 0) and row["created_at"].tzinfo is None
    assert row["updated_at"] == datetime(2024, 3, 7, 1, 2, 3, 456000)


# --------------------------------------------------------------------------- C6 coercions

def offer(**fields) -> dict:
    return doc(**{"name": "Premium", "duration": 30, "coaching_credit": 4, **fields})


def test_smallint_rounds_half_away_from_zero():
    offers = [offer(duration=12.5, coaching_credit=-12.5),
              offer(duration=2.5, coaching_credit=Decimal128("-2.5")),
              offer(duration="12.5", coaching_credit=12.49)]
    rows = expected_entities({"offers": offers})["offers"].rows
    assert [(rows[hx(o)]["duration"], rows[hx(o)]["coaching_credit"]) for o in offers] == \
        [(13, -13), (3, -3), (13, 12)]


def test_smallint_out_of_range_and_type_error():
    offers = [offer(duration=100000), offer(coaching_credit=-32769), offer(duration=32767),
              offer(duration="many"), offer(duration=True), offer(duration=[1])]
    result = expected_entities({"offers": offers})["offers"]
    assert result.rejects == {hx(offers[0]): "out_of_range", hx(offers[1]): "out_of_range",
                              hx(offers[3]): "type_error", hx(offers[4]): "type_error",
                              hx(offers[5]): "type_error"}
    assert result.rows[hx(offers[2])]["duration"] == 32767


def test_value_too_long_at_256_characters():
    ok, too_long = doc(name="x" * 255), doc(name="x" * 256)
    title = doc(title="y" * 10_000, type="QUIZZ_QUESTION_TYPE_TEXT")      # VARCHAR without length
    result = expected_entities({"ingredients": [ok, too_long], "quizzquestions": [title]})
    assert result["ingredients"].rejects == {hx(too_long): "value_too_long"}
    assert result["ingredients"].rows[hx(ok)]["name"] == "x" * 255
    assert result["quizzs_questions"].rows[hx(title)]["title"] == "y" * 10_000


def test_not_null_and_empty_string():
    missing, null, empty, spaced = doc(), doc(name=None), doc(name=""), doc(name="  salt ")
    result = expected_entities({"ingredients": [missing, null, empty, spaced]})["ingredients"]
    assert result.rejects == {hx(missing): "not_null:name", hx(null): "not_null:name"}
    assert result.rows[hx(empty)]["name"] == ""                        # C4: "" is not NULL
    assert result.rows[hx(spaced)]["name"] == "  salt "                 # C6: never trimmed


def test_base_columns_have_no_fallback_and_first_failure_wins():
    no_update = doc(name="a", update_date=...)
    no_creation_no_name = doc(creation_date=...)
    bad_creation = doc(name="x" * 300, creation_date="yesterday")
    result = expected_entities({"ingredients": [no_update, no_creation_no_name, bad_creation]})
    assert result["ingredients"].rejects == {hx(no_update): "not_null:updated_at",
                                             hx(no_creation_no_name): "not_null:created_at",
                                             hx(bad_creation): "type_error"}


def test_text_rendering_of_non_strings():
    q = doc(title="Weight?", type="QUIZZ_QUESTION_TYPE_NUMERIC")
    answers = {"72": 72, "72.5": 72.5, "72.0": 72.0, "1e+20": 1e20}
    uqqs = {k: doc(quizz_question=q["_id"], numeric_answer=v) for k, v in answers.items()}
    flag = doc(quizz_question=q["_id"], text_answer=True, document_answer=T0,
               boolean_answer="YES", comment=["no"])
    result = expected_entities({"quizzquestions": [q], "userquizzquestions": [*uqqs.values(), flag]})
    uqq = result["users_quizzs_questions"]
    assert {k: uqq.rows[hx(d)]["numeric_answer"] for k, d in uqqs.items()} == {k: k for k in answers}
    assert uqq.rejects == {hx(flag): "type_error"}                       # comment is an array
    del flag["comment"]
    row = expected_entities({"quizzquestions": [q], "userquizzquestions": [flag]})[
        "users_quizzs_questions"].rows[hx(flag)]
    assert (row["text_answer"], row["boolean_answer"]) == ("true", True)
    assert row["document_answer"] == "2024-01-10T08:30:00.000Z"


# --------------------------------------------------------------------------- C10 foreign keys

def test_fk_nulled_on_dangling_user_company():
    kept, rejected = doc(name="ACME"), doc(name=None)
    dangling = user(company=oid())
    of_rejected = user(company=rejected["_id"])
    member = user(company=kept["_id"])
    result = expected_entities({"companies": [kept, rejected], "users": [dangling, of_rejected, member]})
    users = result["users"]
    assert users.rejects == {}
    assert users.rows[hx(dangling)]["company_id"] is None
    assert users.rows[hx(of_rejected)]["company_id"] is None
    assert users.rows[hx(member)]["company_id"] == hx(kept)
    assert users.warnings == [(hx(dangling), "fk_nulled:company_id"),
                              (hx(of_rejected), "fk_nulled:company_id")]


def test_fk_missing_on_day_of_rejected_period():
    good = doc(number_of_days=7, order=1, status="active")
    bad = doc(number_of_days=7, order=2)                                 # no status -> rejected
    day_ok = doc(period=good["_id"], is_success=True, date=datetime(2024, 3, 6, 23), userQuizz=oid())
    day_orphan = doc(period=bad["_id"], is_success=False, date=datetime(2024, 3, 7, 23))
    day_no_success = doc(period=good["_id"], date=datetime(2024, 3, 8, 23))
    day_bad_period = doc(period=42, is_success="no", date="2024-03-09")
    result = expected_entities({"periods": [good, bad],
                                "days": [day_ok, day_orphan, day_no_success, day_bad_period]})
    assert result["periods"].rejects == {hx(bad): "not_null:status"}
    days = result["days"]
    assert days.rejects == {hx(day_orphan): "fk_missing:period_id",
                            hx(day_no_success): "not_null:completed",
                            hx(day_bad_period): "not_null:period_id"}
    assert days.rows[hx(day_ok)] == {
        "id": hx(day_ok), "created_at": T0, "updated_at": T0 + timedelta(hours=1),
        "period_id": hx(good), "completed": True, "day": date(2024, 3, 7), "user_quizz_id": None}
    assert days.warnings == [(hx(day_ok), "fk_nulled:user_quizz_id")]


def test_cascade_through_coachings():
    patient, offer_ = user(), offer()
    no_lastname = user(lastname=None)
    coaching = doc(user=no_lastname["_id"], diet=patient["_id"], offer=offer_["_id"],
                   status="COACHING_STATUS_STARTED")
    result = expected_entities({"users": [patient, no_lastname], "offers": [offer_],
                                "coachings": [coaching]})
    assert result["users"].rejects == {hx(no_lastname): "not_null:lastname"}
    row = result["coachings"].rows[hx(coaching)]
    assert (row["user_id"], row["diet_id"], row["offer_id"]) == (None, hx(patient), hx(offer_))
    assert result["coachings"].warnings == [(hx(coaching), "fk_nulled:user_id")]


# --------------------------------------------------------------------------- table specifics

def event(**fields) -> dict:
    return doc(**{"name": "E", "start_date": T0, "end_date": T0 + timedelta(days=1), **fields})


def test_events_discriminator_and_kind_fallback():
    by_t = event(__t="webinar", kind="ignored")
    by_kind = event(kind="individualChallenge")
    null_t = event(__t=None, kind="collectiveChallenge")
    plain = event()
    result = expected_entities({"events": [by_t, by_kind, null_t, plain]})["events"]
    assert {hx(e): result.rows[hx(e)]["type"] for e in (by_t, by_kind, null_t)} == {
        hx(by_t): "webinar", hx(by_kind): "individualChallenge", hx(null_t): "collectiveChallenge"}
    assert result.rejects == {hx(plain): "not_null:type"}


def test_users_birthdate_fallback():
    legacy = user(birthdate=datetime(1980, 1, 1, 23))
    both = user(birthday=datetime(1990, 6, 1, 22), birthdate=datetime(1980, 1, 1, 23))
    rows = expected_entities({"users": [legacy, both]})["users"].rows
    assert rows[hx(legacy)]["birthdate"] == date(1980, 1, 2)
    assert rows[hx(both)]["birthdate"] == date(1990, 6, 2)


def test_users_quizzs_questions_question_fallback():
    q = doc(title="Q", type="QUIZZ_QUESTION_TYPE_TEXT")
    app_name = doc(quizz_question=q["_id"], quizzQuestion=oid())
    seed_name = doc(quizzQuestion=q["_id"])
    rows = expected_entities({"quizzquestions": [q], "userquizzquestions": [app_name, seed_name]})[
        "users_quizzs_questions"].rows
    assert rows[hx(app_name)]["quizz_question_id"] == rows[hx(seed_name)]["quizz_question_id"] == hx(q)


def test_menus_union_greater_update_date_wins():
    t1, t2 = datetime(2024, 2, 1), datetime(2024, 2, 2)
    shared_a, shared_b = oid(), oid()
    ev_a = event(_id=shared_a, __t="menu", name="event newer", update_date=t2)
    col_a = doc(_id=shared_a, name="collection older", update_date=t1)
    ev_b = event(_id=shared_b, __t="menu", name="event older", update_date=t1)
    col_b = doc(_id=shared_b, name="collection newer", update_date=t2)
    by_kind = event(kind="menu", name="kind menu")
    webinar = event(__t="webinar", name="not a menu")
    only_col = doc(name="legacy menu")
    result = expected_entities({"events": [ev_a, ev_b, by_kind, webinar],
                                "menus": [col_a, col_b, only_col]})
    menus = result["menus"]
    assert {k: r["name"] for k, r in menus.rows.items()} == {
        str(shared_a): "event newer", str(shared_b): "collection newer",
        hx(by_kind): "kind menu", hx(only_col): "legacy menu"}
    assert menus.rows[str(shared_b)]["updated_at"] == t2
    assert hx(ev_a) in result["events"].rows and hx(webinar) in result["events"].rows


def test_menus_winner_may_be_rejected():
    shared = oid()
    newer_without_name = doc(_id=shared, name=None, update_date=datetime(2024, 5, 1))
    older = event(_id=shared, __t="menu", update_date=datetime(2024, 4, 1))
    menus = expected_entities({"events": [older], "menus": [newer_without_name]})["menus"]
    assert menus.rows == {} and menus.rejects == {str(shared): "not_null:name"}


def test_appointments_user_and_order_fallbacks():
    patient, other = user(), user()
    atype = doc(title="Follow-up")
    coaching = doc(user=patient["_id"], status="COACHING_STATUS_STARTED")
    paris_midnight = datetime(2024, 3, 6, 23, 0)

    def appt(start, **fields):
        return doc(**{"coaching": coaching["_id"], "appointment_type": atype["_id"],
                      "start_date": start, "end_date": start + timedelta(minutes=45), **fields})

    late = appt(datetime(2024, 3, 20, 9))
    early = appt(paris_midnight)
    tie_a, tie_b = appt(datetime(2024, 3, 10, 9)), appt(datetime(2024, 3, 10, 9))  # rank by _id
    stored = appt(datetime(2024, 3, 1, 9), order=7.5, user=other["_id"], validated=1)
    orphan = doc(appointment_type=atype["_id"], start_date=T0, end_date=T0)
    orphan_with_order = doc(start_date=T0, end_date=T0, order="2")
    result = expected_entities({
        "users": [patient, other], "appointmenttypes": [atype], "coachings": [coaching],
        "appointments": [late, early, tie_a, tie_b, stored, orphan, orphan_with_order]})
    appts = result["appointments"]
    assert appts.rejects == {hx(orphan): "not_null:order_nb"}
    order = {hx(a): appts.rows[hx(a)]["order_nb"] for a in (stored, early, tie_a, tie_b, late)}
    assert order == {hx(stored): 8, hx(early): 2, hx(tie_a): 3, hx(tie_b): 4, hx(late): 5}
    assert appts.rows[hx(early)]["user_id"] == hx(patient)          # from the coaching
    assert appts.rows[hx(stored)]["user_id"] == hx(other)           # stored value first
    assert appts.rows[hx(stored)]["validated"] is True
    assert appts.rows[hx(early)]["start_date"] == date(2024, 3, 7)  # C8 local date
    assert appts.rows[hx(early)]["validated"] is None
    no_coaching = appts.rows[hx(orphan_with_order)]
    assert (no_coaching["order_nb"], no_coaching["user_id"], no_coaching["coaching_id"]) == (2, None, None)
    utc = expected_entities({"coachings": [], "appointments": [early]}, tz="UTC")["appointments"]
    assert utc.rows[hx(early)]["start_date"] == date(2024, 3, 6)
    assert utc.rows[hx(early)]["order_nb"] == 1
    assert utc.warnings == [(hx(early), "fk_nulled:coaching_id"), (hx(early), "fk_nulled:type_id")]


def test_items_keep_empty_text_and_soft_updated_by():
    q = doc(title="Q", type="QUIZZ_QUESTION_TYPE_ENUM_SINGLE")
    editor = oid()
    option = doc(text="", quizzQuestion=q["_id"], updated_by=editor)
    named = doc(text="B", quizzQuestion={"_id": q["_id"]}, updated_by="Some Admin")
    no_text = doc(quizzQuestion=q["_id"])
    items = expected_entities({"quizzquestions": [q], "items": [option, named, no_text]})["items"]
    assert items.rows[hx(option)]["text"] == ""
    assert items.rows[hx(option)]["updated_by"] == str(editor)
    assert items.rows[hx(named)]["updated_by"] == "Some Admin"
    assert items.rows[hx(named)]["quizz_question_id"] == hx(q)
    assert items.rejects == {hx(no_text): "not_null:text"}
    assert items.warnings == []
