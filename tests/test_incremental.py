"""Incremental sync (MAPPING.md 4.7 and section 5): `loader run` on a kept staging directory must
converge to a full rebuild, also when the only change is the deletion of a collection's most recent
document, and a load killed in the middle of a table must leave that table as it was.

Each test writes the generated dataset into a MongoDB database of its own (on the session
SecantusDB server), runs `loader run` once into its own PostgreSQL database A with its own staging
directory S, then changes the source with pymongo. The reference is always a full rebuild from
scratch: a fresh staging directory and a fresh PostgreSQL database B loaded by one `loader run` from
the current source. Every one of the 32 tables of A must then equal B as a multiset of rows
(`conftest.comparable_rows`: the generated users_logbook ids are left out).

Changed and inserted documents are stamped later than every timestamp of the generated dataset
(`Clock`), so that an incremental extract (documents whose creation_date or update_date is at or
after the collection's watermark) must select them; only step 5 stamps documents exactly at the
watermark.
"""

from __future__ import annotations

import copy
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.database import Database

from conftest import ROOT, comparable_rows, connect, create_database, run_loader, start_loader
from loader.config import load_config
from loader.demo import generator
from loader.staging import Staging

LOGBOOK = "QUIZZ_TYPE_LOGBOOK"
SHOWN_ROWS = 3             # rows shown per table and direction when A and B differ
LOCK_WAIT_TIMEOUT = 60     # seconds for the killed loader to reach the locked table
BACKEND_EXIT_TIMEOUT = 10  # seconds for PostgreSQL to drop the killed loader's session


# --------------------------------------------------------------------------- source and targets

@dataclass
class Source:
    db: Database
    env: dict[str, str]
    data: dict[str, list[dict]]  # the documents as generated, before any change (read only)


@pytest.fixture
def generated_source(mongo, dataset, request) -> Iterator[Source]:
    """The session's generated dataset, copied into a MongoDB database of this test's own."""
    name = "incremental_" + re.sub(r"\W+", "_", request.node.name.removeprefix("test_")).strip("_")[:40]
    with MongoClient(mongo.url) as client:
        client.drop_database(name)
        generator.insert(client[name], copy.deepcopy(dataset))
        yield Source(client[name], {"MONGODB_URL": mongo.url, "MONGODB_DATABASE": name}, dataset)
        client.drop_database(name)


@dataclass
class Target:
    """A PostgreSQL database and the staging directory the loader keeps for it."""

    env: dict[str, str]  # the loader's settings: source and PostgreSQL
    staging: Path

    @classmethod
    def fresh(cls, source: Source, postgres, staging: Path, prefix: str) -> Target:
        return cls({**source.env, **create_database(postgres, prefix)}, staging)

    def loader(self, command: str = "run", *options: str) -> str:
        """`loader <command> --staging S [--no-progress] [options]`, which must succeed; returns
        its stdout (`transform` draws no progress bars: it has no such flag)."""
        quiet = [] if command == "transform" else ["--no-progress"]
        result = run_loader(command, "--staging", str(self.staging), *quiet, *options, env=self.env)
        assert result.returncode == 0, f"loader {command} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def snapshots(self, collection: str) -> list[dict]:
        """The snapshots of `collection` recorded in S (its history and current view), oldest first."""
        return [asdict(s) for s in Staging(self.staging).snapshots(collection)]

    def query(self, statement: str, *params) -> list[tuple]:
        with connect(self.env) as conn:
            return conn.execute(statement, params).fetchall()

    def ids(self, table: str) -> set[str]:
        return {row[0] for row in self.query(f'SELECT id FROM "{table}"')}


def rebuild(source: Source, postgres, tmp_path: Path) -> Target:
    """The reference: a full `loader run` from the current source into a fresh staging directory
    and a fresh database."""
    staging = tmp_path / f"rebuild_{len(list(tmp_path.glob('rebuild_*')))}"
    reference = Target.fresh(source, postgres, staging, "rebuild")
    reference.loader("run")
    return reference


# --------------------------------------------------------------------------- comparing databases

Row = tuple[tuple[str, object], ...]
MAPPED_TABLES = [table.name for table in load_config(ROOT / "config" / "schemas.yaml").ordered()]


def table_contents(target: Target, tables: list[str] = MAPPED_TABLES) -> dict[str, Counter[Row]]:
    """The tables of the mapping (not the loader's own bookkeeping tables, if any) as multisets of
    comparable rows."""
    with connect(target.env) as conn:
        return {name: Counter(tuple(sorted(row.items())) for row in comparable_rows(conn, name)) for name in tables}


def _format(row: Row, width: int = 300) -> str:
    text = ", ".join(f"{column}={value!r}" for column, value in row)
    return text if len(text) <= width else text[:width] + " ..."


def differences(actual: dict[str, Counter[Row]], expected: dict[str, Counter[Row]]) -> list[str]:
    """Per differing table, its counts and the first rows missing from (-) or extra in (+) `actual`."""
    lines = []
    for table in sorted(set(actual) | set(expected)):
        missing = expected.get(table, Counter()) - actual.get(table, Counter())
        extra = actual.get(table, Counter()) - expected.get(table, Counter())
        if not missing and not extra:
            continue
        lines.append(f"{table}: {sum(missing.values())} row(s) missing, {sum(extra.values())} extra")
        lines += [f"  - {_format(row)}" for row in sorted(missing, key=repr)[:SHOWN_ROWS]]
        lines += [f"  + {_format(row)}" for row in sorted(extra, key=repr)[:SHOWN_ROWS]]
    return lines


def assert_same_tables(incremental: Target, reference: Target, step: str, only: set[str] | None = None) -> None:
    """`incremental` holds exactly the rows of `reference` (all 32 tables, or the `only` ones)."""
    tables = [t for t in MAPPED_TABLES if only is None or t in only]
    expected, actual = table_contents(reference, tables), table_contents(incremental, tables)
    problems = differences(actual, expected)
    assert not problems, (
        f"after {step}: the incrementally loaded database differs from a full rebuild "
        f"(- only in the rebuild, + only in the incremental database):\n" + "\n".join(problems)
    )


# --------------------------------------------------------------------------- source changes

class Clock:
    """Timestamps later than every creation_date and update_date of the generated dataset: its
    maximum plus 1, 2, 3 ... minutes (whole minutes: exact at MongoDB's millisecond precision)."""

    def __init__(self, data: dict[str, list[dict]]):
        self.latest = max(value for documents in data.values() for document in documents
                          for value in (document.get("creation_date"), document.get("update_date"))
                          if isinstance(value, datetime))
        self.ticks = 0

    def __call__(self) -> datetime:
        self.ticks += 1
        return self.latest + timedelta(minutes=self.ticks)


def watermark(db: Database, collection: str) -> datetime:
    """The greatest creation_date or update_date of the collection as it is now in MongoDB (after
    an incremental run, the collection's watermark)."""
    return max(value for document in db[collection].find({}, {"creation_date": 1, "update_date": 1})
               for value in (document.get("creation_date"), document.get("update_date"))
               if isinstance(value, datetime))


def stamp(db: Database, collection: str, document_id: ObjectId, at: datetime, **fields) -> None:
    """Set `fields` on one document and its update_date to `at`, as the application would."""
    result = db[collection].update_one({"_id": document_id}, {"$set": {**fields, "update_date": at}})
    assert result.matched_count == 1, f"{collection} {document_id} not found"


def new_document(at: datetime, **fields) -> dict:
    return {"_id": ObjectId(), "creation_date": at, "update_date": at, **fields}


def event_of(element) -> ObjectId | None:
    """The event of a `registered_events` element: a bare ObjectId or {event, date} (3.16)."""
    if isinstance(element, ObjectId):
        return element
    if isinstance(element, dict) and isinstance(element.get("event"), ObjectId):
        return element["event"]
    return None


class Picker:
    """Chooses the generated documents the steps change: the first ones by _id that match, never
    the same document twice, so that one step cannot hide the effect of another."""

    def __init__(self, data: dict[str, list[dict]]):
        self.data = data
        self.taken: set[ObjectId] = set()

    def take(self, collection: str, where: Callable[[dict], bool], count: int = 1) -> list[dict]:
        found = [d for d in sorted(self.data[collection], key=lambda d: d["_id"])
                 if d["_id"] not in self.taken and where(d)][:count]
        assert len(found) == count, f"the generated data lacks {count} {collection} document(s) for this step"
        self.taken.update(d["_id"] for d in found)
        return found

    def one(self, collection: str, where: Callable[[dict], bool]) -> dict:
        return self.take(collection, where)[0]


class Dataset:
    """Lookups over the generated documents (plain ObjectId references only: the picks avoid the
    quirky C5 shapes, which the other tests cover)."""

    def __init__(self, data: dict[str, list[dict]]):
        self.data = data
        self.questions = {q["_id"]: q for q in data["userquizzquestions"]}
        self.templates = {q["_id"]: q for q in data["quizzquestions"]}
        self.answered_by_item = {i["userQuizzQuestion"] for i in data["items"]
                                 if isinstance(i.get("userQuizzQuestion"), ObjectId)}
        self.logbooks_of_quizz = self.referencing("coachinglogbooks", "logbook")

    def referencing(self, collection: str, *fields: str) -> Counter[ObjectId]:
        """How many documents of `collection` reference each id through `fields` (plain ids)."""
        return Counter(d[f] for d in self.data[collection] for f in fields if isinstance(d.get(f), ObjectId))

    def answered(self, question: dict) -> bool:
        return question["_id"] in self.answered_by_item or any(
            question.get(f) not in (None, "", []) for f in (
                "qcm_answers", "scale_1_10_answer", "single_enum_answer", "boolean_answer", "document_answer",
                "text_answer", "numeric_answer"))

    def question_of_type(self, userquizz: dict, question_type: str) -> dict | None:
        """The user question of `userquizz` whose template has `question_type` (plain links only)."""
        for question_id in userquizz.get("questions", []):
            question = self.questions.get(question_id) if isinstance(question_id, ObjectId) else None
            template = self.templates.get(question.get("quizz_question")) if question else None
            if template and template.get("type") == f"QUIZZ_QUESTION_TYPE_{question_type}":
                return question
        return None

    def unanswered_logbook(self, userquizz: dict, name: str, question_type: str, users: set[str]) -> bool:
        """A logbook userquizz called `name`, nothing answered, one coaching logbook whose user is
        loaded (in `users`): answering its `question_type` question must create a moment."""
        if (userquizz.get("type"), userquizz.get("name")) != (LOGBOOK, name):
            return False
        if self.logbooks_of_quizz[userquizz["_id"]] != 1:
            return False
        questions = [self.questions.get(q) if isinstance(q, ObjectId) else None
                     for q in userquizz.get("questions", [])]
        if not questions or None in questions or any(self.answered(q) for q in questions):
            return False
        logbook = next(cl for cl in self.data["coachinglogbooks"] if cl.get("logbook") == userquizz["_id"])
        owner = logbook.get("user")
        return isinstance(owner, ObjectId) and str(owner) in users and logbook.get("day") is not None \
            and self.question_of_type(userquizz, question_type) is not None


# --------------------------------------------------------------------------- six rounds of changes

def test_incremental_runs_converge_to_a_full_rebuild(generated_source, postgres, tmp_path):
    """Eight rounds of source changes; after each, `loader run` on the kept staging directory gives
    database A exactly the rows of a full rebuild B of the current source."""
    source, db = generated_source, generated_source.db
    clock, pick, generated = Clock(source.data), Picker(source.data), Dataset(source.data)
    a = Target.fresh(source, postgres, tmp_path / "staging", "incremental")
    a.loader("run")
    assert len(MAPPED_TABLES) == 32, MAPPED_TABLES
    assert [s["kind"] for s in a.snapshots("users")] == ["full"], a.snapshots("users")
    loaded_users, loaded_events, loaded_quizzs = a.ids("users"), a.ids("events"), a.ids("quizzs")

    def loaded(ids: set[str]) -> Callable[[dict], bool]:
        """Documents whose row the first run loaded (changing a rejected one would test nothing)."""
        return lambda document: str(document["_id"]) in ids

    def synchronise(step: str) -> tuple[Target, dict[str, list[dict]]]:
        """(a) incremental run into A, (b) full rebuild B, (c) A == B. Returns B and, per
        collection, the snapshots the incremental run added to S."""
        before = {c: len(a.snapshots(c)) for c in generator.COLLECTIONS}
        a.loader("run")
        added = {c: a.snapshots(c)[before[c]:] for c in generator.COLLECTIONS}
        reference = rebuild(source, postgres, tmp_path)
        assert_same_tables(a, reference, step)
        return reference, added

    # Step 1 - updates and inserts: plain fields of three users and of a menu event (events and
    # menus), a new company and a new user of that company (users, user_events, users_targets).
    renamed = pick.take("users", loaded(loaded_users), 3)
    for user in renamed:
        stamp(db, "users", user["_id"], clock(), firstname=f"{user['firstname']} (modifié)")
    legacy_menus = {m["_id"] for m in source.data["menus"]}
    menu_event = pick.one("events", lambda e: loaded(loaded_events)(e) and e.get("__t") == "menu"
                          and e["_id"] not in legacy_menus)
    stamp(db, "events", menu_event["_id"], clock(), name="Menu de la semaine (nouvelle version)")
    company = new_document(clock(), name="Nouvelle Société", code="C99999", siret="12345678900011")
    db.companies.insert_one(company)
    webinar = next(e for e in source.data["events"] if e.get("__t") == "webinar")
    newcomer = new_document(clock(), firstname="Nouvelle", lastname="Inscrite", email="nouvelle.inscrite@example.org",
                            role="CUSTOMER", company=company["_id"], registered_events=[webinar["_id"]],
                            targets=[source.data["targets"][0]["_id"]])
    db.users.insert_one(newcomer)
    # A question template retitled (every detail answering it shows the new title, 4.7), next to
    # one touched without a title change (its questions need no re-derivation).
    quizz_of = {q: uq["_id"] for uq in source.data["userquizzs"] for q in uq.get("questions", [])
                if isinstance(q, ObjectId)}
    moments = a.ids("users_logbooks_moments")
    detailed = {q["quizz_question"] for q in source.data["userquizzquestions"]
                if isinstance(q.get("quizz_question"), ObjectId) and generated.answered(q)
                and str(quizz_of.get(q["_id"])) in moments}
    retitled = pick.one("quizzquestions", lambda t: t["_id"] in detailed and isinstance(t.get("title"), str))
    stamp(db, "quizzquestions", retitled["_id"], clock(), title=f"{retitled['title']} (reformulé)")
    stamp(db, "quizzquestions", pick.one("quizzquestions", lambda t: t["_id"] in detailed)["_id"], clock())

    reference, added = synchronise("step 1 (updates and inserts)")
    assert reference.query("SELECT 1 FROM users_logbooks_moments_details WHERE question = %s LIMIT 1",
                           f"{retitled['title']} (reformulé)")
    assert str(newcomer["_id"]) in reference.ids("users") and str(company["_id"]) in reference.ids("companies")
    assert added["users"] and added["users"][-1]["kind"] == "delta", (
        f"no incremental extract of users: {added['users']}")
    assert 4 <= added["users"][-1]["documents"] <= 4 + 5, (
        f"3 users changed and 1 inserted, yet the delta holds {added['users'][-1]['documents']} documents")

    # Step 2 - documents deleted: a customer referenced by coachings, messages and coaching
    # logbooks, with registrations; the event most users registered to; and the coaching logbook
    # that is the latest of its (user, day) group and links an emitted moment (its users_logbook row
    # takes earlier timestamps, its moment goes: no_coachinglogbook).
    coached = generated.referencing("coachings", "user")
    logbook_owners = generated.referencing("coachinglogbooks", "user")
    writers = generated.referencing("messages", "sender", "receiver")
    gone_user = pick.one("users", lambda u: loaded(loaded_users)(u) and u.get("registered_events")
                         and coached[u["_id"]] and writers[u["_id"]] and logbook_owners[u["_id"]]
                         and u.get("email") != generator.WORKED_EXAMPLE_EMAIL)
    registrations = Counter(event_of(e) for u in source.data["users"] if u["_id"] != gone_user["_id"]
                            for e in u.get("registered_events") or [])
    most_registered = max((e for e in registrations if str(e) in loaded_events), key=lambda e: (registrations[e], e))
    gone_event = pick.one("events", lambda e: e["_id"] == most_registered)
    moments = a.ids("users_logbooks_moments")

    def same_day(cl: dict) -> list[dict]:
        return [c for c in source.data["coachinglogbooks"]
                if c.get("user") == cl["user"] and c.get("day") == cl.get("day")]

    def latest_of_its_day(cl: dict) -> bool:
        """One of several coaching logbooks of its (user, day), and the most recent one."""
        group = same_day(cl)
        return len(group) >= 2 and max(group, key=lambda c: (c["creation_date"], c["update_date"], c["_id"])) is cl

    gone_logbook = pick.one("coachinglogbooks", lambda cl: isinstance(cl.get("user"), ObjectId)
                            and cl["user"] != gone_user["_id"] and str(cl.get("logbook")) in moments
                            and generated.logbooks_of_quizz[cl["logbook"]] == 1 and latest_of_its_day(cl))
    db.users.delete_one({"_id": gone_user["_id"]})
    db.events.delete_one({"_id": gone_event["_id"]})
    db.coachinglogbooks.delete_one({"_id": gone_logbook["_id"]})

    reference, added = synchronise("step 2 (documents deleted)")
    assert str(gone_user["_id"]) not in reference.ids("users") and str(gone_event["_id"]) not in reference.ids("events")
    assert str(gone_logbook["logbook"]) not in reference.ids("users_logbooks_moments")
    for collection in ("users", "events", "coachinglogbooks"):
        assert sum(s.get("deleted", 0) for s in added[collection]) >= 1, (
            f"the deleted {collection} document left no tombstone in S/manifest.json: {added[collection]}")

    # Step 3 - array elements removed: the first registration of one user, the last question of a
    # quiz template; one user's registered_events and another's targets emptied.
    shrunk = pick.one("users", lambda u: loaded(loaded_users)(u) and len(u.get("registered_events") or []) >= 2
                      and all(str(event_of(e)) in loaded_events for e in u["registered_events"])
                      and event_of(u["registered_events"][0]) != gone_event["_id"])
    stamp(db, "users", shrunk["_id"], clock(), registered_events=shrunk["registered_events"][1:])
    quizz = pick.one("quizzs", lambda q: loaded(loaded_quizzs)(q) and len(q.get("questions", [])) >= 2
                     and all(isinstance(x, ObjectId) for x in q["questions"]))
    stamp(db, "quizzs", quizz["_id"], clock(), questions=quizz["questions"][:-1])
    unregistered = pick.one("users", lambda u: loaded(loaded_users)(u) and bool(u.get("registered_events")))
    stamp(db, "users", unregistered["_id"], clock(), registered_events=[])
    untargeted = pick.one("users", lambda u: loaded(loaded_users)(u) and isinstance(u.get("targets"), list)
                          and bool(u["targets"]))
    stamp(db, "users", untargeted["_id"], clock(), targets=[])

    reference, _ = synchronise("step 3 (array elements removed, arrays emptied)")
    assert (str(shrunk["_id"]), str(event_of(shrunk["registered_events"][0]))) not in set(
        reference.query("SELECT user_id, event_id FROM user_events"))
    assert (str(quizz["_id"]), str(quizz["questions"][-1])) not in set(
        reference.query("SELECT quizz_id, question_id FROM quizzs_links_questions"))
    assert not reference.query("SELECT 1 FROM user_events WHERE user_id = %s", str(unregistered["_id"]))
    assert not reference.query("SELECT 1 FROM users_targets WHERE user_id = %s", str(untargeted["_id"]))

    # Step 4 - answers added to logbook userquizzs nobody had answered, without touching the
    # userquizzs (4.7 rules 2 and 3): a text_answer on a "Dîner" TEXT question, and a new item for
    # a "Petit-déjeuner" TEXT_MULTIPLE question. Each must give a new moment.
    owners = loaded_users - {str(gone_user["_id"])}
    dinner = pick.one("userquizzs", lambda q: generated.unanswered_logbook(q, "Dîner", "TEXT", owners))
    breakfast = pick.one("userquizzs",
                         lambda q: generated.unanswered_logbook(q, "Petit-déjeuner", "TEXT_MULTIPLE", owners))
    dinner_question = generated.question_of_type(dinner, "TEXT")
    stamp(db, "userquizzquestions", dinner_question["_id"], clock(), text_answer="Gratin de courgettes")
    breakfast_question = generated.question_of_type(breakfast, "TEXT_MULTIPLE")
    item = new_document(clock(), text="soupe de légumes", userQuizzQuestion=breakfast_question["_id"])
    db["items"].insert_one(item)

    reference, _ = synchronise("step 4 (answers added to existing logbook userquizzs)")
    assert {str(dinner["_id"]), str(breakfast["_id"])} <= reference.ids("users_logbooks_moments")

    # Step 5 - documents stamped exactly at the watermark (inclusive comparison, 5.2): a user's
    # firstname, and the text answer of a question of an emitted moment, each with update_date equal
    # to the greatest timestamp of its collection.
    at_mark = pick.one("users", loaded(loaded_users))
    stamp(db, "users", at_mark["_id"], watermark(db, "users"), firstname="Exactement au filigrane")
    moments = a.ids("users_logbooks_moments")
    answer = pick.one("userquizzquestions", lambda q: q.get("text_answer") and str(quizz_of.get(q["_id"])) in moments)
    stamp(db, "userquizzquestions", answer["_id"], watermark(db, "userquizzquestions"),
          text_answer="Réponse au filigrane")

    reference, _ = synchronise("step 5 (documents stamped exactly at the watermark)")
    assert reference.query("SELECT firstname FROM users WHERE id = %s",
                           str(at_mark["_id"])) == [("Exactement au filigrane",)]
    assert reference.query("SELECT answer FROM users_logbooks_moments_details WHERE id = %s",
                           str(answer["_id"])) == [("Réponse au filigrane",)]

    # Step 6 - the last answer of a moment removed: step 4's text answer unset (the question gets a
    # new update_date), step 4's item deleted (no timestamp left anywhere: only its tombstone tells).
    # Both moments and their details disappear.
    db.userquizzquestions.update_one({"_id": dinner_question["_id"]},
                                     {"$unset": {"text_answer": ""}, "$set": {"update_date": clock()}})
    db["items"].delete_one({"_id": item["_id"]})

    reference, _ = synchronise("step 6 (last answers of moments removed)")
    assert not {str(dinner["_id"]), str(breakfast["_id"])} & reference.ids("users_logbooks_moments")

    # Steps 7 and 8 - a question added to step 4's "Dîner" userquizz, unanswered (the userquizz
    # changes, no moment yet), then answered (only the question changes, 4.7 rule 2): the moment
    # comes back. Step 8 finds the userquizz listing the question by the references kept since
    # step 7, not by those of the first run.
    added = new_document(clock(), quizz_question=dinner_question["quizz_question"])
    db.userquizzquestions.insert_one(added)
    db.userquizzs.update_one({"_id": dinner["_id"]}, {"$push": {"questions": added["_id"]}, "$set": {"update_date": clock()}})
    synchronise("step 7 (a question added to a logbook userquizz)")
    stamp(db, "userquizzquestions", added["_id"], clock(), text_answer="Soupe au pistou")

    held = dict(a.query("SELECT table_name, state FROM loader_sync_state"))
    reference, _ = synchronise("step 8 (the added question answered)")
    assert reference.query("SELECT answer FROM users_logbooks_moments_details WHERE id = %s",
                           str(added["_id"])) == [("Soupe au pistou",)]
    # The transform handed the load what it changed in the moments, checked by unit (their parent's
    # keys are unchanged): a change file from the state A held to the one it holds now.
    now = dict(a.query("SELECT table_name, state FROM loader_sync_state"))["users_logbooks_moments"]
    changes = [p.name for p in Staging(a.staging).changes_dir("users_logbooks_moments").glob("*.parquet")]
    assert changes == [f"{held['users_logbooks_moments']}-{now}.parquet"], changes
    # The incremental transforms wrote only the units they re-derived, as deltas of the derived rows:
    # the comparisons above read tables whose units several deltas replaced in turn.
    deltas = {t: len(Staging(a.staging).derived_rows(t).deltas()) for t in MAPPED_TABLES}
    assert max(deltas.values()) >= 2, deltas
    # transform.json says where each table's seconds went; the shared work of the moments group
    # (its units, the moments pass) counts for its first table.
    state = Staging(a.staging).transform_state()
    moments, details = state["users_logbooks_moments"], state["users_logbooks_moments_details"]
    assert moments["mode"] == details["mode"] == "incremental", (moments["mode"], details["mode"])
    assert list(moments["phases"]) == ["select", "derive", "compare", "check", "keep"], moments["phases"]
    # The details' parent, the moments, changed: they are checked again, without comparing.
    assert list(details["phases"]) == ["derive", "check", "keep"], details["phases"]
    assert sum(moments["phases"].values()) <= moments["seconds"] + 0.01, moments


# --------------------------------------------------------------------------- the kept tokens after a full run

def test_a_forced_run_finds_the_kept_tokens_again(generated_source, postgres, tmp_path):
    """The moments' selection finds the userquizz listing a changed question by the tokens kept
    between runs (Strategy.references). A forced run reads every document again as a new full
    snapshot, without telling what changed: it must find the tokens again too, or the next run
    misses the userquizz a question was added to before it."""
    source, db = generated_source, generated_source.db
    clock, pick, generated = Clock(source.data), Picker(source.data), Dataset(source.data)
    a = Target.fresh(source, postgres, tmp_path / "staging", "tokens")
    a.loader("run")
    owners = a.ids("users")
    # An incremental run of the moments group: the tokens are kept from here on.
    touched = pick.one("userquizzs", lambda q: q.get("type") == LOGBOOK)
    stamp(db, "userquizzs", touched["_id"], clock(), name="Déjeuner")
    a.loader("run")
    assert Staging(a.staging).transform_state()["users_logbooks_moments"]["mode"] == "incremental"

    dinner = pick.one("userquizzs", lambda q: generated.unanswered_logbook(q, "Dîner", "TEXT", owners))
    added = new_document(clock(), quizz_question=generated.question_of_type(dinner, "TEXT")["quizz_question"])
    db.userquizzquestions.insert_one(added)
    db.userquizzs.update_one({"_id": dinner["_id"]}, {"$push": {"questions": added["_id"]}, "$set": {"update_date": clock()}})
    a.loader("run", "--force-reimport")
    stamp(db, "userquizzquestions", added["_id"], clock(), text_answer="Soupe au pistou")
    a.loader("run")

    reference = rebuild(source, postgres, tmp_path)
    assert reference.query("SELECT answer FROM users_logbooks_moments_details WHERE id = %s",
                           str(added["_id"])) == [("Soupe au pistou",)]
    assert_same_tables(a, reference, "the added question answered after a forced run")


# --------------------------------------------------------------------------- a parent rewritten, its keys kept or not

def test_a_parent_rewritten_with_the_same_keys_leaves_its_children_unchecked(generated_source, postgres, tmp_path):
    """A child table is checked against its parents' keys: a user renamed rewrites the staged users
    but keeps their ids, so messages (no change of its own) keeps its outputs without checking
    them again; a user deleted takes an id away, and messages is checked again. Both runs converge."""
    source, db = generated_source, generated_source.db
    clock, pick = Clock(source.data), Picker(source.data)
    a = Target.fresh(source, postgres, tmp_path / "staging", "parent_keys")
    a.loader("run")
    owners = a.ids("users")
    renamed = pick.one("users", lambda u: str(u["_id"]) in owners)
    stamp(db, "users", renamed["_id"], clock(), firstname="Renamed")
    a.loader("run")
    state = Staging(a.staging).transform_state()
    assert state["users"]["mode"] == "incremental", state["users"]
    assert state["messages"]["mode"] == "unchanged" and "check" not in state["messages"]["phases"], state["messages"]
    assert_same_tables(a, rebuild(source, postgres, tmp_path), "a user renamed")

    senders = Counter(m["sender"] for m in source.data["messages"] if isinstance(m.get("sender"), ObjectId))
    gone = pick.one("users", lambda u: str(u["_id"]) in owners and senders[u["_id"]] > 0)
    db.users.delete_one({"_id": gone["_id"]})
    a.loader("run")
    messages = Staging(a.staging).transform_state()["messages"]
    assert "check" in messages["phases"], messages
    # its messages lost their sender: rejected (or the reference nulled, with a warning)
    issues = ("rejected", "warnings")
    assert sum(map(messages.get, issues)) > sum(map(state["messages"].get, issues)), (messages, state["messages"])
    assert_same_tables(a, rebuild(source, postgres, tmp_path), "a user deleted")


def run_with_busiest_moment(source: Source, postgres, tmp_path: Path, prefix: str) -> tuple[Target, dict, int]:
    """A fresh database loaded by one run; the userquizz of the moment with the most details, and
    how many it has."""
    target = Target.fresh(source, postgres, tmp_path / "staging", prefix)
    target.loader("run")
    [(moment, details)] = target.query("SELECT user_logbook_moment_id, count(*) FROM users_logbooks_moments_details "
                                       "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1")
    return target, source.db.userquizzs.find_one({"_id": ObjectId(moment)}), details


def test_a_moment_listing_the_questions_of_another_derives_both_again(generated_source, postgres, tmp_path):
    """A logbook userquizz copied (with its coaching logbook) lists the user questions of the
    original: their details go to the most recently updated moment, the other's are dropped
    (detail_moved). The incremental transform derives the original's moment again with the copy's
    (it checks only the re-derived moments' details), and again when the copy is renamed."""
    source, db = generated_source, generated_source.db
    clock = Clock(source.data)
    a, original, details = run_with_busiest_moment(source, postgres, tmp_path, "shared_identity")
    copy = {**original, **new_document(clock())}
    logbook = db.coachinglogbooks.find_one({"logbook": original["_id"]})
    db.userquizzs.insert_one(copy)
    db.coachinglogbooks.insert_one({**logbook, **new_document(clock()), "logbook": copy["_id"]})
    a.loader("run")
    state = Staging(a.staging).transform_state()["users_logbooks_moments_details"]
    assert state["mode"] == "incremental" and state["reasons"].get("detail_moved") == details, state
    assert a.query("SELECT count(*) FROM users_logbooks_moments_details WHERE user_logbook_moment_id = %s",
                   str(copy["_id"])) == [(details,)]
    assert_same_tables(a, rebuild(source, postgres, tmp_path), "a logbook userquizz copied")

    stamp(db, "userquizzs", copy["_id"], clock(), name=f"{copy.get('name')} (copie)")
    a.loader("run")
    assert_same_tables(a, rebuild(source, postgres, tmp_path), "the copy renamed")


def test_a_question_listed_as_upper_case_hex_derives_its_moment_again(generated_source, postgres, tmp_path):
    """A userquizz may list a question as an upper-case hex string (a reference all the same, C5):
    the tokens the incremental selection keeps are lower-cased like the references, so deleting
    such a question derives its moment again (question_missing), as a rebuild does."""
    source, db = generated_source, generated_source.db
    clock = Clock(source.data)
    a, quiz, _ = run_with_busiest_moment(source, postgres, tmp_path, "upper_hex")
    question = next(e for e in quiz["questions"] if isinstance(e, ObjectId))
    listed = [str(e).upper() if e == question else e for e in quiz["questions"]]
    stamp(db, "userquizzs", quiz["_id"], clock(), questions=listed)
    a.loader("run")
    db.userquizzquestions.delete_one({"_id": question})
    a.loader("run")
    assert Staging(a.staging).transform_state()["users_logbooks_moments"]["mode"] == "incremental"
    assert_same_tables(a, rebuild(source, postgres, tmp_path), "a question listed as upper-case hex deleted")


# --------------------------------------------------------------------------- _ids that read alike

def test_documents_whose_ids_read_alike_are_staged_whole(generated_source, postgres, tmp_path):
    """An ObjectId and its hex string, or 5 and "5", give one `_id` text (C5), the key of a delta:
    it would keep one of the two documents. The extract stages such a collection whole instead,
    and each run converges: both rejected as duplicates, then the one left loaded; once no
    `_id` is shared, deltas resume."""
    source, db = generated_source, generated_source.db
    clock = Clock(source.data)
    a = Target.fresh(source, postgres, tmp_path / "staging", "alike")
    a.loader("run")
    company = source.data["companies"][0]
    hex_id = str(company["_id"])
    assert hex_id in a.ids("companies")

    def insert(*ids) -> None:
        at = clock()
        db.companies.insert_many([{**company, "_id": i, "creation_date": at, "update_date": at} for i in ids])

    def run(step: str, kind: str, loaded: set[str], rejected: set[str]) -> None:
        a.loader("run")
        newest = a.snapshots("companies")[-1]
        assert newest["kind"] == kind, newest
        assert ("shared by two documents" in (newest["reason"] or "")) == (kind == "full"), newest
        assert loaded <= a.ids("companies") and not rejected & a.ids("companies"), step
        assert_same_tables(a, rebuild(source, postgres, tmp_path), step)

    insert(hex_id)
    run("the hex string of an ObjectId inserted", "full", set(), {hex_id})
    db.companies.delete_one({"_id": hex_id})
    run("the hex string deleted", "full", {hex_id}, set())
    insert(5, "5")
    run("5 and \"5\" inserted", "full", {hex_id}, {"5"})
    db.companies.delete_one({"_id": "5"})
    run("\"5\" deleted", "full", {"5"}, set())
    insert("5")
    db.companies.delete_one({"_id": "5"})  # only the deletion event tells of it: 5 stays
    run("\"5\" inserted and deleted between two runs", "full", {"5"}, set())
    stamp(db, "companies", company["_id"], clock(), name="Renamed")
    run("a company renamed", "delta", {hex_id, "5"}, set())


# --------------------------------------------------------------------------- a delta of tombstones only

def test_deleting_the_most_recent_document_of_a_collection(generated_source, postgres, tmp_path):
    """The only change is the deletion of the document stamped at a collection's watermark: the
    incremental extract finds no document at or after the watermark, only a tombstone, and the
    next run must still succeed and converge."""
    source, db = generated_source, generated_source.db
    a = Target.fresh(source, postgres, tmp_path / "staging", "latest_deleted")
    a.loader("run")

    def stamped(message: dict) -> datetime:
        return max(message["creation_date"], message["update_date"])

    latest = max(source.data["messages"], key=stamped)
    assert [m for m in source.data["messages"] if stamped(m) == stamped(latest)] == [latest]
    assert str(latest["_id"]) in a.ids("messages")
    db.messages.delete_one({"_id": latest["_id"]})

    a.loader("run")
    newest = a.snapshots("messages")[-1]
    assert newest["kind"] == "delta" and newest.get("deleted") == 1, newest
    assert_same_tables(a, rebuild(source, postgres, tmp_path), "deleting the most recent message")


# --------------------------------------------------------------------------- a killed load

def waiting_backend(monitor: psycopg.Connection, loader: subprocess.Popen, own: list[int],
                    log: Path) -> tuple[int, str, str | None]:
    """Poll pg_stat_activity (bounded) until a session of this database other than ours waits on a
    lock; returns its pid, application_name and the relation it waits for. The loader sets
    application_name 'loader'; any other client session would do too."""
    deadline = time.monotonic() + LOCK_WAIT_TIMEOUT
    while time.monotonic() < deadline:
        assert loader.poll() is None, (
            f"the loader ended before it blocked (exit {loader.returncode}):\n{log.read_text()}")
        found = monitor.execute(
            """SELECT a.pid, a.application_name, l.relation::regclass::text
               FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted
               WHERE a.datname = current_database() AND a.wait_event_type = 'Lock' AND a.pid <> ALL(%s)
               ORDER BY a.application_name = 'loader' DESC, a.pid""", [own]).fetchone()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"the loader did not wait on a lock within {LOCK_WAIT_TIMEOUT} s:\n{log.read_text()}")


def sessions(monitor: psycopg.Connection, own: list[int]) -> list[tuple]:
    """Client sessions of this database other than ours: (pid, application_name, state)."""
    return monitor.execute(
        "SELECT pid, application_name, state FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> ALL(%s)", [own]).fetchall()


def wait_until_gone(monitor: psycopg.Connection, pid: int, timeout: float) -> bool:
    """Bounded polling until the session `pid` has ended; False if it is still there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not monitor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            return True
        time.sleep(0.05)
    return False


def test_a_load_killed_in_the_middle_leaves_the_blocked_table_untouched(generated_source, postgres, tmp_path):
    """SIGKILL while the loader waits for users_logbook (locked by the test): users_logbook keeps
    its old rows, the tables committed before it (events, menus) keep their new ones, the session
    goes away, and the next `loader run` converges to a full rebuild."""
    source, db = generated_source, generated_source.db
    clock, pick = Clock(source.data), Picker(source.data)
    a = Target.fresh(source, postgres, tmp_path / "staging", "killed")
    a.loader("run")
    loaded_users, loaded_events = a.ids("users"), a.ids("events")

    # Changes for tables written before users_logbook (events, order 11; menus, 13: a menu event and
    # a webinar renamed) and for users_logbook itself (order 20: two coaching logbooks of loaded users
    # with later update_dates, hence later updated_at). The earlier tables are deliberately not
    # ancestors of users_logbook (users, companies): writing a table may also delete or null the rows
    # of its child tables that referenced removed rows, so a changed `users` could make the loader
    # wait for our lock while still in the transaction of `users`.
    renamed = [pick.one("events", lambda e, kind=kind: str(e["_id"]) in loaded_events and e.get("__t") == kind
                        and e["_id"] not in {m["_id"] for m in source.data["menus"]})
               for kind in ("menu", "webinar")]
    for event in renamed:
        stamp(db, "events", event["_id"], clock(), name=f"{event['name']} (renommé)")
    first = pick.one("coachinglogbooks", lambda cl: str(cl.get("user")) in loaded_users and cl.get("day"))
    logbooks = [first, pick.one("coachinglogbooks", lambda cl: str(cl.get("user")) in loaded_users and cl.get("day")
                                and (cl["user"], cl["day"]) != (first["user"], first["day"]))]
    for logbook in logbooks:
        stamp(db, "coachinglogbooks", logbook["_id"], clock())
    a.loader("extract")
    a.loader("transform")
    logbook_rows = sorted(a.query("SELECT * FROM users_logbook"))

    # Hold users_logbook, start `loader load`, and kill it once it waits for that table.
    log = tmp_path / "killed-load.log"
    with connect(a.env) as locker, connect(a.env, autocommit=True) as monitor:
        own = [locker.info.backend_pid, monitor.info.backend_pid]
        locker.execute("LOCK TABLE users_logbook IN ACCESS EXCLUSIVE MODE")
        loader = start_loader("load", "--staging", str(a.staging), "--no-progress", env=a.env, output=log)
        try:
            pid, application, relation = waiting_backend(monitor, loader, own, log)
        finally:
            loader.send_signal(signal.SIGKILL)
            loader.wait(timeout=30)
        assert relation == "users_logbook", f"the loader (session {pid}, {application!r}) waits for {relation}"
        assert loader.returncode == -signal.SIGKILL
        locker.rollback()
        # The session of a killed client only notices the closed socket when it next uses it: here
        # once it gets the lock we just released, answers, and reads EOF; PostgreSQL then aborts its
        # transaction. Should it linger anyway (e.g. still blocked), it is terminated, which also
        # aborts the transaction: either way nothing of it may be committed.
        if not wait_until_gone(monitor, pid, BACKEND_EXIT_TIMEOUT):
            print(f"killed loader's session {pid} lingered {BACKEND_EXIT_TIMEOUT} s: pg_terminate_backend")
            monitor.execute("SELECT pg_terminate_backend(%s)", [pid])
            assert wait_until_gone(monitor, pid, BACKEND_EXIT_TIMEOUT), f"session {pid} survived pg_terminate_backend"
        assert sessions(monitor, own) == [], "sessions of the killed loader remain"

    assert sorted(a.query("SELECT * FROM users_logbook")) == logbook_rows, "users_logbook was partly written"
    reference = rebuild(source, postgres, tmp_path)
    assert table_contents(a, ["users_logbook"]) != table_contents(reference, ["users_logbook"]), (
        "users_logbook had nothing to write: the kill proves nothing")
    assert_same_tables(a, reference, "the killed load (tables written before users_logbook)", only={"events", "menus"})
    names = a.query("SELECT name FROM events WHERE id = ANY(%s)", [str(e["_id"]) for e in renamed])
    assert sorted(names) == sorted((f"{e['name']} (renommé)",) for e in renamed)

    a.loader("run")
    assert_same_tables(a, reference, "the run after the killed load")
