"""Nothing lost: a source holding every kind of bad input (issue 5). The run completes, every good
row lands with its value converted losslessly, every bad row is rejected alone with its reason
(and its dependants by cascade, in DuckDB), and `loader verify` passes."""

from __future__ import annotations

import struct
from datetime import datetime, timezone
from pathlib import Path

import bson
import pytest
from bson import Decimal128, Int64, ObjectId
from bson.datetime_ms import DatetimeMS
from pymongo import MongoClient

from conftest import run_loader
from test_incremental import Target

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=timezone.utc)
LARGE = 3_000_000  # characters of the large documents' text


def stamped(**fields) -> dict:
    return {"_id": ObjectId(), "creation_date": T0, "update_date": T0, **fields}


def user(**fields) -> dict:
    return stamped(**{"firstname": "Ann", "lastname": "Lee", "email": "ann@example.org", "role": "customer", **fields})


def offer(**fields) -> dict:
    return stamped(**{"name": "Offer", "duration": 30, "coaching_credit": 2, **fields})


class Case:
    """The source documents, each named, with what must become of them."""

    def __init__(self):
        self.company = stamped(name="Acme")
        self.numeric_name = stamped(name=42)  # a number where a string is expected: "42"
        # two documents whose _id is the same text: neither is more right, both are rejected
        self.same_id = [{**stamped(name="Int"), "_id": 5}, {**stamped(name="Text"), "_id": "5"}]
        self.event = stamped(name="Webinar", __t="webinar", start_date=T0, end_date=T0)
        event = [self.event["_id"]]
        self.users = {
            "good": user(company=self.company["_id"], registered_events=event, birthday=datetime(1990, 5, 17, 22, 0)),
            "date_string": user(birthday="1990-05-17"),
            "decimal_text": user(insurer=Decimal128("12.50")),
            "dangling_company": user(company=ObjectId()),
            "large": user(notes="x" * LARGE),
            "too_long": user(lastname="L" * 256, registered_events=event),
            "nul": user(firstname="An\x00n"),
            "bad_date_string": user(birthday="not a date"),
            "array_for_scalar": user(email=["a@example.org", "b@example.org"]),
            "missing_lastname": {k: v for k, v in user().items() if k != "lastname"},
        }
        self.offers = {
            "good": offer(),
            "numeric_string": offer(duration="45"),
            "decimal": offer(duration=Decimal128("60"), coaching_credit=Decimal128("2.5")),
            "smallint_range": offer(duration=40_000),
            "infinity": offer(duration=float("inf")),
            "nan": offer(duration=float("nan")),
            "int64": offer(coaching_credit=Int64(2**40)),
        }
        self.messages = {
            "large": stamped(content="y" * LARGE, sender=self.users["good"]["_id"]),
            "nul": stamped(content="a\x00b"),
            "from_rejected_user": stamped(content="hi", sender=self.users["nul"]["_id"]),
        }

        # users_logbook merges a user's logbooks of one day (UPSERT-KEY, 5.5): a day none of whose
        # logbooks has an update_date rejects them all; one that has it is enough.
        good = self.users["good"]["_id"]
        self.logbooks = {
            "undated": stamped(user=good, day="2024-03-07", update_date=None),
            "undated_twin": stamped(user=good, day="2024-03-07", update_date=None),
            "undated_merged": stamped(user=good, day="2024-03-08", update_date=None),
            "dated_merged": stamped(user=good, day="2024-03-08"),
        }

    def collections(self) -> dict[str, list[dict]]:
        return {"companies": [self.company, self.numeric_name, *self.same_id], "events": [self.event],
                "users": list(self.users.values()), "offers": list(self.offers.values()),
                "messages": list(self.messages.values()), "coachinglogbooks": list(self.logbooks.values())}


# table -> {document name: (reason, column)}: the rejects the run must record, and only those
REJECTED_USERS = {"too_long": ("value_too_long", "lastname"), "nul": ("nul_character", "firstname"),
                  "bad_date_string": ("type_error", "birthdate"),
                  "array_for_scalar": ("type_error", "email"), "missing_lastname": ("not_null:lastname", "lastname")}
REJECTED_OFFERS = {"smallint_range": ("out_of_range", "duration"), "infinity": ("out_of_range", "duration"),
                   "nan": ("type_error", "duration"), "int64": ("out_of_range", "coaching_credit")}
REJECTED_MESSAGES = {"nul": ("nul_character", "content")}


def hexid(document: dict) -> str:
    return str(document["_id"])


def rejects(target: Target, table: str) -> dict[str, tuple[str, str]]:
    return {source_id: (reason, column) for source_id, reason, column in target.query(
        'SELECT source_id, reason, "column" FROM loader_rejects WHERE "table" = %s AND kind = \'reject\'', table)}


def rows(target: Target, table: str, *columns: str) -> dict[str, tuple]:
    selected = "".join(f', "{c}"' for c in columns)
    return {row[0]: row[1:] for row in target.query(f'SELECT id{selected} FROM "{table}"')}


@pytest.fixture
def bad_source(mongo, request):
    case = Case()
    name = "bad_input_" + request.node.name[-20:].strip("_").replace("[", "_").replace("]", "")
    with MongoClient(mongo.url) as client:
        client.drop_database(name)
        for collection, documents in case.collections().items():
            client[name][collection].insert_many(documents)
        yield case, {"MONGODB_URL": mongo.url, "MONGODB_DATABASE": name}
        client.drop_database(name)


def assert_every_case_handled(case: Case, loader: Target) -> None:
    users, offers = case.users, case.offers
    assert rejects(loader, "users") == {hexid(users[n]): r for n, r in REJECTED_USERS.items()}
    assert rejects(loader, "offers") == {hexid(offers[n]): r for n, r in REJECTED_OFFERS.items()}
    assert rejects(loader, "messages") == {hexid(case.messages[n]): r for n, r in REJECTED_MESSAGES.items()}
    assert sorted(loader.query("SELECT source_id, reason FROM loader_rejects WHERE \"table\" = 'companies'")) == [
        ("5", "duplicate_key"), ("5", "duplicate_key")]
    # a rejected user's dependants are rejected in DuckDB, before the load: not by PostgreSQL mid-COPY
    assert rejects(loader, "user_events") == {hexid(users["too_long"]): ("fk_missing:user_id", "user_id")}
    assert loader.query('SELECT user_id, event_id FROM user_events') == [(hexid(users["good"]), hexid(case.event))]
    landed = rows(loader, "messages", "sender_id", "content")
    assert landed[hexid(case.messages["from_rejected_user"])] == (None, "hi")  # optional reference nulled
    assert landed[hexid(case.messages["large"])] == (hexid(users["good"]), "y" * LARGE)

    good_users = {n: d for n, d in users.items() if n not in REJECTED_USERS}
    assert rows(loader, "users", "company_id", "insurer", "birthdate") == {
        hexid(users["good"]): (hexid(case.company), None, datetime(1990, 5, 18).date()),  # Paris day of the instant
        hexid(users["date_string"]): (None, None, datetime(1990, 5, 17).date()),
        hexid(users["decimal_text"]): (None, "12.50", None),
        hexid(users["dangling_company"]): (None, None, None),
        hexid(users["large"]): (None, None, None),
    }
    assert set(rows(loader, "users")) == {hexid(d) for d in good_users.values()}
    warnings = loader.query("SELECT source_id, reason FROM loader_rejects WHERE \"table\" = 'users' AND kind = 'warning'")
    assert (hexid(users["dangling_company"]), "fk_nulled:company_id") in warnings
    assert rows(loader, "offers", "duration", "coaching_credit") == {
        hexid(offers["good"]): (30, 2), hexid(offers["numeric_string"]): (45, 2), hexid(offers["decimal"]): (60, 3)}
    assert rows(loader, "companies", "name") == {hexid(case.company): ("Acme",), hexid(case.numeric_name): ("42",)}
    assert rejects(loader, "users_logbook") == {hexid(case.logbooks[n]): ("not_null:updated_at", "updated_at")
                                                for n in ("undated", "undated_twin")}
    assert loader.query("SELECT user_id, day, updated_at FROM users_logbook") == [
        (hexid(users["good"]), datetime(2024, 3, 8).date(), T0.replace(tzinfo=None))]


def test_every_bad_input_is_rejected_alone_and_verify_passes(bad_source, target, tmp_path):
    case, source = bad_source
    loader = Target({**source, **target}, tmp_path / "staging")
    loader.loader("run")
    assert_every_case_handled(case, loader)

    verified = run_loader("verify", "--staging", str(loader.staging), env=loader.env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "DIFFERENT" not in verified.stdout
    report = run_loader("report", "--staging", str(loader.staging), "--table", "offers", "--reason", "out_of_range",
                        env={})
    assert hexid(case.offers["infinity"]) in report.stdout and "Infinity" in report.stdout, report.stdout


# ------------------------------------------- invalid UTF-8 and far dates (SecantusDB refuses them, a dump holds them)

def bson_with_invalid_utf8(document: dict, field: str, raw: bytes) -> bytes:
    """`document` as BSON with one more string field whose bytes are not UTF-8 (no driver writes
    that; old servers and other tools did)."""
    body = bson.encode(document)[4:-1]
    element = b"\x02" + field.encode() + b"\x00" + struct.pack("<i", len(raw) + 1) + raw + b"\x00"
    content = body + element
    return struct.pack("<i", len(content) + 5) + content + b"\x00"


def write_dump(root: Path, database: str, collections: dict[str, list[bytes]]) -> Path:
    folder = root / database
    folder.mkdir(parents=True)
    for name, documents in collections.items():
        (folder / f"{name}.bson").write_bytes(b"".join(documents))
    return root


def test_invalid_utf8_and_far_dates_reject_only_the_rows_reading_them(bad_source, target, tmp_path):
    case, source = bad_source
    in_unmapped = user(registered_events=[case.event["_id"]])
    in_mapped = user(registered_events=[case.event["_id"]])
    far_dates = [user(birthday=DatetimeMS(300_000 * 365 * 86_400_000)), user(birthday=DatetimeMS(-63_000_000_000_000))]
    encoded = {name: [bson.encode(d) for d in documents] for name, documents in case.collections().items()}
    encoded["users"] += [bson_with_invalid_utf8(in_unmapped, "notes", b"caf\xe9"),
                         bson_with_invalid_utf8(in_mapped, "insurer", b"Mutu\xe9lle \xff"), *map(bson.encode, far_dates)]
    dump = write_dump(tmp_path / "dump", source["MONGODB_DATABASE"], encoded)

    loader = Target({**source, **target}, tmp_path / "staging")
    result = run_loader("run", "--staging", str(loader.staging), "--no-progress", "--from-dump", str(dump), env=loader.env)
    assert result.returncode == 0, result.stdout + result.stderr

    users = rejects(loader, "users")
    assert users.pop(hexid(in_mapped)) == ("invalid_utf8", "insurer")
    assert [users.pop(hexid(d)) for d in far_dates] == [("type_error", "birthdate")] * 2  # outside years 1..9999 (C6)
    assert users == {hexid(case.users[n]): r for n, r in REJECTED_USERS.items()}
    assert hexid(in_unmapped) in rows(loader, "users")  # the bad bytes are in a field no column reads
    assert (hexid(in_unmapped), hexid(case.event)) in loader.query("SELECT user_id, event_id FROM user_events")
    assert rejects(loader, "user_events")[hexid(in_mapped)] == ("fk_missing:user_id", "user_id")
    value = loader.query("SELECT value FROM loader_rejects WHERE source_id = %s AND \"table\" = 'users'", hexid(in_mapped))
    assert value == [('{"$invalidUtf8":"Mutu\\\\xe9lle \\\\xff"}',)], value  # the bytes, escaped

    verified = run_loader("verify", "--staged", "--staging", str(loader.staging), env=loader.env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
