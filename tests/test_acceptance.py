"""Acceptance checks 2, 3, 4, 5, 7 and 8 of MAPPING.md Appendix B, end to end, and the removal
path of moments and details (4.6).

Each test writes its own small handcrafted MongoDB database (named after the test) on the session
SecantusDB server, runs `loader run` into its own empty PostgreSQL database and staging directory,
and compares exact rows and reject-log records with the values stated by the specification.
Dates are naive datetimes meaning UTC, as pymongo returns them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import psycopg
import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.database import Database

from conftest import run_loader
from loader.demo import generator

T0 = datetime(2024, 1, 10, 8, 30)
HOUR = timedelta(hours=1)
PARIS_MIDNIGHT_7_MARCH = datetime(2024, 3, 6, 23, 0)    # winter: UTC+1 (MAPPING.md C8)
PARIS_MIDNIGHT_15_JULY = datetime(2024, 7, 14, 22, 0)   # summer: UTC+2
_numbers = itertools.count(0xACC000)


# --------------------------------------------------------------------------- documents

def oid() -> ObjectId:
    return ObjectId(f"{next(_numbers):024x}")


def hx(value: dict | ObjectId) -> str:
    return str(value["_id"] if isinstance(value, dict) else value)


def doc(created: datetime = T0, updated: datetime = T0 + HOUR, **fields) -> dict:
    return {"_id": oid(), "creation_date": created, "update_date": updated, **fields}


def user(**fields) -> dict:
    return doc(**{"firstname": "Ada", "lastname": "Lovelace", "email": "ada@example.org", "role": "CUSTOMER",
                  **fields})


def event(**fields) -> dict:
    return doc(**{"name": "Webinaire", "__t": "webinar", "start_date": T0 + 48 * HOUR,
                  "end_date": T0 + 49 * HOUR, **fields})


def coaching_logbook(owner: dict | None, day: datetime = PARIS_MIDNIGHT_7_MARCH, **fields) -> dict:
    """A coaching logbook of `owner` (None: without the `user` key)."""
    return doc(**({"user": owner["_id"]} if owner is not None else {}), day=day, **fields)


# --------------------------------------------------------------------------- servers

@dataclass
class Source:
    db: Database
    env: dict[str, str]

    def insert(self, **collections: list[dict]) -> None:
        for name, docs in collections.items():
            self.db[name].insert_many(docs)


@pytest.fixture
def own_source(mongo, request):
    """An empty MongoDB database of its own for this test (`acceptance_<test name>`)."""
    name = "acceptance_" + re.sub(r"\W+", "_", request.node.name.removeprefix("test_")).strip("_")[:50]
    with MongoClient(mongo.url) as client:
        client.drop_database(name)
        yield Source(client[name], {"MONGODB_URL": mongo.url, "MONGODB_DATABASE": name})
        client.drop_database(name)


def load(source: Source, target: dict[str, str], staging: Path, **settings: str) -> None:
    result = run_loader("run", "--staging", str(staging), "--no-progress", env={**source.env, **target, **settings})
    assert result.returncode == 0, f"loader run failed:\n{result.stdout}\n{result.stderr}"


def rows(target: dict[str, str], table: str, columns: str, where: str = "TRUE") -> list[tuple]:
    """`SELECT columns FROM table WHERE ...` in the target database, sorted."""
    with psycopg.connect(host=target["POSTGRES_HOST"], port=target["POSTGRES_PORT"],
                         dbname=target["POSTGRES_DATABASE"], user=target["POSTGRES_USER"]) as conn:
        return sorted(conn.execute(f"SELECT {columns} FROM {table} WHERE {where}").fetchall())


def issues(staging: Path, table: str, kind: str) -> list[tuple]:
    """(source_collection, source_id, reason, column, value) of the reject log of `table`, sorted."""
    path = staging / "issues" / f"{table}.parquet"
    assert path.exists(), f"no reject log {path}"
    return sorted(duckdb.sql(
        f"SELECT source_collection, source_id, reason, \"column\", value FROM read_parquet('{path}') "
        f"WHERE kind = '{kind}' AND \"table\" = '{table}'"
    ).fetchall())


def ids(target: dict[str, str], table: str) -> set[str]:
    return {row[0] for row in rows(target, table, "id")}


# --------------------------------------------------------------------------- check 2 (C8, 3.20)

@pytest.mark.parametrize(("zone", "winter", "summer", "birthdate"), [
    pytest.param(None, date(2024, 3, 7), date(2024, 7, 15), date(1985, 6, 15), id="default_zone"),
    pytest.param("UTC", date(2024, 3, 6), date(2024, 7, 14), date(1985, 6, 14), id="utc"),
])
def test_check2_logbook_day_is_the_calendar_date_in_the_source_zone(own_source, target, tmp_path, zone, winter,
                                                                    summer, birthdate):
    x = user(birthday=datetime(1985, 6, 14, 22, 0))      # local midnight of 15 June 1985 (summer)
    own_source.insert(users=[x], coachinglogbooks=[
        coaching_logbook(x, PARIS_MIDNIGHT_7_MARCH, created=T0, updated=T0 + HOUR),
        coaching_logbook(x, PARIS_MIDNIGHT_15_JULY, created=T0 + 2 * HOUR, updated=T0 + 3 * HOUR),
    ])

    load(own_source, target, tmp_path, **({"SOURCE_TIMEZONE": zone} if zone else {}))

    # users is loaded with the same date rule (C8: one function for every DATE column)
    assert rows(target, "users", "id, birthdate") == [(hx(x), birthdate)]
    assert rows(target, "users_logbook", "user_id, day, created_at, updated_at") == [
        (hx(x), winter, T0, T0 + HOUR),
        (hx(x), summer, T0 + 2 * HOUR, T0 + 3 * HOUR),
    ]


# --------------------------------------------------------------------------- check 3 (3.20, 5.5)

def test_check3_one_users_logbook_row_per_user_day_with_the_latest_timestamps(own_source, target, tmp_path):
    x = user()
    logbooks = [                                          # greatest creation and update in different docs
        coaching_logbook(x, created=T0 + 2 * HOUR, updated=T0 + 3 * HOUR),
        coaching_logbook(x, created=T0, updated=T0 + 5 * HOUR),
        coaching_logbook(x, created=T0 + HOUR, updated=T0 + 4 * HOUR),
    ]
    own_source.insert(users=[x], coachinglogbooks=logbooks)

    load(own_source, target, tmp_path)
    assert ids(target, "users") == {hx(x)}
    first = rows(target, "users_logbook", "id, user_id, day, created_at, updated_at")
    assert [r[1:] for r in first] == [(hx(x), date(2024, 3, 7), T0 + 2 * HOUR, T0 + 5 * HOUR)]

    # the same documents in another order: nothing changes, the generated id included
    own_source.db.coachinglogbooks.delete_many({})
    own_source.db.coachinglogbooks.insert_many([logbooks[2], logbooks[0], logbooks[1]])
    load(own_source, target, tmp_path)
    assert rows(target, "users_logbook", "id, user_id, day, created_at, updated_at") == first

    # a later update of one document refreshes the row in place
    own_source.db.coachinglogbooks.update_one({"_id": logbooks[0]["_id"]}, {"$set": {"update_date": T0 + 10 * HOUR}})
    load(own_source, target, tmp_path)
    assert rows(target, "users_logbook", "id, user_id, day, created_at, updated_at") == [
        (first[0][0], hx(x), date(2024, 3, 7), T0 + 2 * HOUR, T0 + 10 * HOUR)
    ]


# --------------------------------------------------------------------------- check 4 (3.20)

def test_check4_coaching_logbooks_without_user_are_skipped_as_no_user(own_source, target, tmp_path):
    x = user()
    kept = coaching_logbook(x, PARIS_MIDNIGHT_15_JULY)
    missing = coaching_logbook(None)
    null = coaching_logbook(None, user=None)
    own_source.insert(users=[x], coachinglogbooks=[kept, missing, null])

    load(own_source, target, tmp_path)

    assert ids(target, "users") == {hx(x)}
    assert rows(target, "users_logbook", "user_id, day") == [(hx(x), date(2024, 7, 15))]
    assert [(r[1], r[2]) for r in issues(tmp_path, "users_logbook", "skip")] == sorted(
        [(hx(missing), "no_user"), (hx(null), "no_user")]
    )
    assert issues(tmp_path, "users_logbook", "reject") == []


# --------------------------------------------------------------------------- check 5 (4.9)

def worked_example() -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """MAPPING.md 4.9 by hand: user X, CL1..CL3 of 7 March (Paris), UQ-A..UQ-C, Q1..Q5."""
    x = user(firstname="Xavier", lastname="Exemple", email="x@example.org")
    titles = {1: "Qu'avez-vous mangé ?", 2: "Votre faim (1 à 10) ?", 3: "Avez-vous eu faim ?",
              4: "Qu'avez-vous mangé au dîner ?", 5: "Avez-vous grignoté ?", 6: "Une collation ?"}
    kinds = {1: "TEXT_MULTIPLE", 2: "SCALE_1_10", 3: "ENUM_SINGLE", 4: "TEXT", 5: "BOOLEAN", 6: "TEXT"}
    tpl = {n: doc(title=titles[n], type=f"QUIZZ_QUESTION_TYPE_{kinds[n]}") for n in titles}
    oui, non = (doc(text=t, quizzQuestion=tpl[3]["_id"]) for t in ("Oui", "Non"))       # template options
    templates = {name: doc(name=name, type="QUIZZ_TYPE_LOGBOOK", questions=[tpl[n]["_id"] for n in numbers])
                 for name, numbers in (("Petit-déjeuner", (1, 2, 3)), ("Dîner", (4, 5)), ("Collation", (6,)))}

    cloned, answered = T0 + 24 * HOUR, T0 + 32 * HOUR
    q = {n: doc(cloned, cloned, quizz_question=tpl[n]["_id"]) for n in titles}
    q[2].update(scale_1_10_answer=7, update_date=answered)
    q[3].update(single_enum_answer=oui["_id"], update_date=answered + timedelta(seconds=1))
    q[4].update(text_answer="Salade", update_date=answered + timedelta(seconds=2))
    q[5].update(boolean_answer=False, update_date=answered + timedelta(seconds=3))
    pain, cafe, empty = (doc(answered + timedelta(minutes=k), answered + timedelta(minutes=k),
                             text=text, userQuizzQuestion=q[1]["_id"])
                         for k, text in enumerate(("pain", "café", "")))

    def userquizz(name: str, numbers: tuple[int, ...], k: int) -> dict:
        return doc(cloned + timedelta(seconds=k), cloned + timedelta(seconds=k), name=name,
                   type="QUIZZ_TYPE_LOGBOOK", quizz=templates[name]["_id"], questions=[q[n]["_id"] for n in numbers])

    uqa = userquizz("Petit-déjeuner", (1, 2, 3), 1)
    uqb = userquizz("Dîner", (4, 5), 2)
    uqc = userquizz("Collation", (6,), 3)               # nothing answered
    cl1, cl2, cl3 = (coaching_logbook(x, created=cloned + timedelta(seconds=k), updated=cloned + k * HOUR,
                                      logbook=uq["_id"])
                     for k, uq in enumerate((uqa, uqb, uqc), start=1))
    docs = {
        "users": [x], "quizzs": list(templates.values()), "quizzquestions": list(tpl.values()),
        "userquizzs": [uqa, uqb, uqc], "userquizzquestions": list(q.values()),
        "items": [oui, non, pain, cafe, empty], "coachinglogbooks": [cl1, cl2, cl3],
    }
    named = {"X": x, "UQ-A": uqa, "UQ-B": uqb, "UQ-C": uqc, "CL1": cl1, "CL2": cl2, "CL3": cl3,
             "pain": pain, "café": cafe, **{f"Q{n}": q[n] for n in q}, **{f"T{n}": tpl[n] for n in tpl}}
    return docs, named


def test_check5_worked_example_gives_two_moments_and_six_details(own_source, target, tmp_path):
    docs, d = worked_example()
    own_source.insert(**docs)

    load(own_source, target, tmp_path)

    assert ids(target, "users") == {hx(d["X"])}
    assert ids(target, "users_quizzs_questions") == {hx(d[f"Q{n}"]) for n in range(1, 7)}
    cloned = T0 + 24 * HOUR
    logbook = rows(target, "users_logbook", "id, user_id, day, created_at, updated_at")
    # timestamps: the latest of CL1..CL3 (creation from CL3, update from CL3)
    assert [r[1:] for r in logbook] == [
        (hx(d["X"]), date(2024, 3, 7), cloned + timedelta(seconds=3), cloned + 3 * HOUR)
    ]
    day_id = logbook[0][0]

    assert rows(target, "users_logbooks_moments", "id, created_at, updated_at, user_logbook_id, type") == sorted([
        (hx(d["UQ-A"]), cloned + timedelta(seconds=1), cloned + timedelta(seconds=1), day_id, "Petit-déjeuner"),
        (hx(d["UQ-B"]), cloned + timedelta(seconds=2), cloned + timedelta(seconds=2), day_id, "Dîner"),
    ])
    skips = [(r[1], r[2]) for r in issues(tmp_path, "users_logbooks_moments", "skip")]
    assert skips == [(hx(d["UQ-C"]), "no_answers")]

    def title(n: int) -> str:
        return d[f"T{n}"]["title"]

    answered, minute = T0 + 32 * HOUR, timedelta(minutes=1)
    assert rows(target, "users_logbooks_moments_details",
                "id, created_at, updated_at, user_logbook_moment_id, question, answer") == sorted([
        (hx(d["pain"]), answered, answered, hx(d["UQ-A"]), title(1), "pain"),
        (hx(d["café"]), answered + minute, answered + minute, hx(d["UQ-A"]), title(1), "café"),
        (hx(d["Q2"]), cloned, answered, hx(d["UQ-A"]), title(2), "7"),
        (hx(d["Q3"]), cloned, answered + timedelta(seconds=1), hx(d["UQ-A"]), title(3), "Oui"),
        (hx(d["Q4"]), cloned, answered + timedelta(seconds=2), hx(d["UQ-B"]), title(4), "Salade"),
        (hx(d["Q5"]), cloned, answered + timedelta(seconds=3), hx(d["UQ-B"]), title(5), "False"),
    ])


def test_removed_answers_remove_their_details_and_then_their_moment(own_source, target, tmp_path):
    """4.6 (and the second half of Appendix B check 6, here with full runs): details are replaced
    per moment; a candidate that no longer qualifies loses its moment and details."""
    docs, d = worked_example()
    own_source.insert(**docs)
    load(own_source, target, tmp_path)
    before_a = rows(target, "users_logbooks_moments_details", "*", f"user_logbook_moment_id = '{hx(d['UQ-A'])}'")

    later = T0 + 48 * HOUR
    questions = own_source.db.userquizzquestions
    questions.update_one({"_id": d["Q4"]["_id"]}, {"$unset": {"text_answer": ""}, "$set": {"update_date": later}})
    load(own_source, target, tmp_path)
    assert rows(target, "users_logbooks_moments_details", "id", f"user_logbook_moment_id = '{hx(d['UQ-B'])}'") == [
        (hx(d["Q5"]),)
    ]

    questions.update_one({"_id": d["Q5"]["_id"]}, {"$unset": {"boolean_answer": ""}, "$set": {"update_date": later}})
    load(own_source, target, tmp_path)
    assert ids(target, "users_logbooks_moments") == {hx(d["UQ-A"])}
    assert rows(target, "users_logbooks_moments_details", "id", f"user_logbook_moment_id = '{hx(d['UQ-B'])}'") == []
    assert rows(target, "users_logbooks_moments_details", "*", f"user_logbook_moment_id = '{hx(d['UQ-A'])}'") == before_a
    skips = {(r[1], r[2]) for r in issues(tmp_path, "users_logbooks_moments", "skip")}
    assert skips == {(hx(d["UQ-B"]), "no_answers"), (hx(d["UQ-C"]), "no_answers")}


def test_check5_worked_example_in_the_generated_dataset(own_source, target, tmp_path):
    data = generator.generate(size=300, seed=5)
    e = generator.worked_example_ids(data)
    by_id = {document["_id"]: document for documents in data.values() for document in documents}
    generator.insert(own_source.db, data)

    load(own_source, target, tmp_path)

    assert hx(e["user"]) in ids(target, "users")
    logbook = rows(target, "users_logbook", "id", f"user_id = '{hx(e['user'])}' AND day = DATE '2024-03-07'")
    assert len(logbook) == 1, logbook
    moments = rows(target, "users_logbooks_moments", "id, user_logbook_id, type",
                   f"id IN ('{hx(e['UQ-A'])}', '{hx(e['UQ-B'])}', '{hx(e['UQ-C'])}')")
    assert moments == sorted([
        (hx(e["UQ-A"]), logbook[0][0], "Petit-déjeuner"),
        (hx(e["UQ-B"]), logbook[0][0], "Dîner"),
    ])
    skips = [(r[1], r[2]) for r in issues(tmp_path, "users_logbooks_moments", "skip") if r[1] == hx(e["UQ-C"])]
    assert skips == [(hx(e["UQ-C"]), "no_answers")]

    def title(question: str) -> str:
        return by_id[by_id[e[question]]["quizz_question"]]["title"]

    details = rows(target, "users_logbooks_moments_details", "id, user_logbook_moment_id, question, answer",
                   f"user_logbook_moment_id IN ('{hx(e['UQ-A'])}', '{hx(e['UQ-B'])}')")
    assert details == sorted([
        (hx(e["item:pain"]), hx(e["UQ-A"]), title("Q1"), "pain"),
        (hx(e["item:café"]), hx(e["UQ-A"]), title("Q1"), "café"),
        (hx(e["Q2"]), hx(e["UQ-A"]), title("Q2"), "7"),
        (hx(e["Q3"]), hx(e["UQ-A"]), title("Q3"), "Oui"),
        (hx(e["Q4"]), hx(e["UQ-B"]), title("Q4"), "Salade"),
        (hx(e["Q5"]), hx(e["UQ-B"]), title("Q5"), "False"),
    ])


# --------------------------------------------------------------------------- check 7 (3.16, 5.6)

def test_check7_user_events_mirror_registered_events(own_source, target, tmp_path):
    e1, e2 = event(), event(name="Atelier")
    registered = T0 - 72 * HOUR
    u = user(registered_events=[e1["_id"], {"_id": oid(), "event": e2["_id"], "date": registered}])
    other = user(email="other@example.org", registered_events=[e1["_id"]], created=T0 + HOUR, updated=T0 + 2 * HOUR)
    own_source.insert(users=[u, other], events=[e1, e2])

    load(own_source, target, tmp_path)
    assert ids(target, "users") == {hx(u), hx(other)}
    assert ids(target, "events") == {hx(e1), hx(e2)}
    columns = "user_id, event_id, created_at, updated_at"
    assert rows(target, "user_events", columns) == sorted([
        (hx(u), hx(e1), T0, T0 + HOUR),                  # bare ObjectId: the user's creation_date
        (hx(u), hx(e2), registered, T0 + HOUR),          # {event, date}: the element's date
        (hx(other), hx(e1), T0 + HOUR, T0 + 2 * HOUR),
    ])

    own_source.db.users.update_one({"_id": u["_id"]}, {"$set": {"registered_events": [], "update_date": T0 + 5 * HOUR}})
    load(own_source, target, tmp_path)

    assert rows(target, "users", "id, updated_at", f"id = '{hx(u)}'") == [(hx(u), T0 + 5 * HOUR)]
    assert rows(target, "user_events", columns) == [(hx(other), hx(e1), T0 + HOUR, T0 + 2 * HOUR)]


# --------------------------------------------------------------------------- check 8 (C10)

def test_check8_dangling_references_are_nulled_or_rejected(own_source, target, tmp_path):
    company = doc(name="ACME")
    gone_company, gone_event = oid(), oid()
    e1 = event()
    orphan = user(company=gone_company)
    member = user(email="member@example.org", company=company["_id"], registered_events=[gone_event, e1["_id"]])
    own_source.insert(companies=[company], users=[orphan, member], events=[e1])

    load(own_source, target, tmp_path)

    assert rows(target, "users", "id, company_id") == sorted([(hx(orphan), None), (hx(member), hx(company))])
    assert issues(tmp_path, "users", "warning") == [
        ("users", hx(orphan), "fk_nulled:company_id", "company_id", hx(gone_company))
    ]
    assert issues(tmp_path, "users", "reject") == []

    assert rows(target, "user_events", "user_id, event_id") == [(hx(member), hx(e1))]
    assert issues(tmp_path, "user_events", "reject") == [
        ("users", hx(member), "fk_missing:event_id", "event_id", hx(gone_event))
    ]
