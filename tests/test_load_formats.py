"""The load's two COPY formats give PostgreSQL exactly the values the documents hold. A table whose
every column type has an Arrow counterpart goes in PostgreSQL's binary format (pgpq), one with a
NUMERIC or REAL column as CSV; both on a first load (COPY into the new table) and on an update
(COPY into `_incoming_<table>`, then merged), with the values where the formats differ: empty
string against NULL, quotes, tabs, newlines, backslashes, astral characters, padded CHAR, integer
limits, the first and last timestamps PostgreSQL and MongoDB share, doubles."""

from __future__ import annotations

import textwrap
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from bson import Decimal128, Int64, ObjectId
from psycopg import sql
from pymongo import MongoClient

from conftest import connect
from loader.load import writer
from test_incremental import Target

MAPPING = textwrap.dedent("""\
    tables:
      readings:
        include_base: true
        mongo_collection: readings
        additional_columns:
          - {name: code, sql_type: CHAR(3)}
          - {name: label, sql_type: VARCHAR(10)}
          - {name: note, sql_type: TEXT}
          - {name: small, sql_type: SMALLINT}
          - {name: whole, sql_type: INTEGER}
          - {name: big, sql_type: BIGINT}
          - {name: done, sql_type: BOOLEAN}
          - {name: taken, sql_type: TIMESTAMP}
          - {name: day, sql_type: DATE}
          - {name: ratio, sql_type: DOUBLE PRECISION}
      prices:
        include_base: true
        mongo_collection: prices
        additional_columns:
          - {name: reading_id, sql_type: VARCHAR, foreign_key: readings(id)}
          - {name: amount, sql_type: "NUMERIC(10, 2)"}
          - {name: weight, sql_type: REAL}
          - {name: label, sql_type: TEXT}
    """)
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=timezone.utc)
T1 = datetime(2024, 3, 2, 8, 0, tzinfo=timezone.utc)
AWKWARD = 'a,"b"\t\\N c\r\nd 𝄞 é \\'


def stamped(**fields) -> dict:
    return {"_id": ObjectId(), "creation_date": T0, "update_date": T0, **fields}


@pytest.fixture
def source(mongo):
    full = stamped(code="ab", label="", note=AWKWARD, small=-32768, whole=2147483647, big=Int64(2**62 + 1), done=True,
                   taken=datetime(1, 1, 1, tzinfo=timezone.utc), day="2024-02-29", ratio=0.1)
    last = stamped(code="xyz", label="0123456789", note="", small=32767, whole=-2147483648, big=Int64(-(2**63)),
                   done=False, taken=datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc), day="0001-01-01",
                   ratio=-1e300)
    empty = stamped()
    prices = [stamped(reading_id=full["_id"], amount=Decimal128("12.35"), weight=0.1, label=""),
              stamped(reading_id=empty["_id"], amount=Decimal128("-99999999.99"), weight=3.5, label=AWKWARD),
              stamped()]
    with MongoClient(mongo.url) as client:
        client.drop_database("load_formats")
        db = client["load_formats"]
        db.readings.insert_many([full, last, empty])
        db.prices.insert_many(prices)
        yield db, {"readings": [full, last, empty], "prices": prices}, {"MONGODB_URL": mongo.url, "MONGODB_DATABASE": "load_formats"}
        client.drop_database("load_formats")


def naive(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def test_binary_and_csv_copies_load_every_value_as_the_documents_hold_it(source, target, tmp_path):
    db, documents, env = source
    mapping = tmp_path / "formats.yaml"
    mapping.write_text(MAPPING)
    loader = Target({**env, **target, "LOADER_CONFIG": str(mapping)}, tmp_path / "staging")
    full, last, empty = (str(d["_id"]) for d in documents["readings"])
    priced, unpriced, bare = (str(d["_id"]) for d in documents["prices"])

    def readings() -> dict[str, tuple]:
        return {row[0]: row[1:] for row in loader.query(
            "SELECT id, code, label, note, small, whole, big, done, taken, day, ratio FROM readings")}

    def prices() -> dict[str, tuple]:
        return {row[0]: row[1:] for row in loader.query(
            "SELECT id, reading_id, amount, weight = 0.1::real, weight, label FROM prices")}

    loader.loader("run")
    with connect(loader.env) as conn:  # the formats the two tables went in
        assert writer._arrow_schema(conn, sql.Identifier("readings"), ["id", "code", "label", "small", "big", "taken", "day", "ratio"])
        assert writer._arrow_schema(conn, sql.Identifier("prices"), ["id", "reading_id", "label"])
        assert writer._arrow_schema(conn, sql.Identifier("prices"), ["id", "amount"]) is None
        assert writer._arrow_schema(conn, sql.Identifier("prices"), ["id", "weight"]) is None
    assert readings() == {
        full: ("ab ", "", AWKWARD, -32768, 2147483647, 2**62 + 1, True, datetime(1, 1, 1), date(2024, 2, 29), 0.1),
        last: ("xyz", "0123456789", "", 32767, -2147483648, -(2**63), False, naive(datetime(9999, 12, 31, 23, 59, 59, 999000)),
               date(1, 1, 1), -1e300),
        empty: (None,) * 10,
    }
    assert prices() == {
        priced: (full, Decimal("12.35"), True, pytest.approx(0.1), ""),
        unpriced: (empty, Decimal("-99999999.99"), False, 3.5, AWKWARD),
        bare: (None, None, None, None, None),
    }
    assert loader.query("SELECT count(*) FROM loader_rejects") == [(0,)]

    # An update goes through _incoming_<table> and the merge, in the same two formats.
    db.readings.update_one({"_id": documents["readings"][2]["_id"]}, {"$set": {"note": AWKWARD, "label": "", "update_date": T1}})
    db.prices.update_one({"_id": documents["prices"][2]["_id"]}, {"$set": {"amount": Decimal128("0.01"), "label": "", "update_date": T1}})
    loader.loader("run")
    assert readings()[empty] == (None, "", AWKWARD) + (None,) * 7
    assert readings()[full][2] == AWKWARD and len(readings()) == 3
    assert prices()[bare] == (None, Decimal("0.01"), None, None, "")
    assert prices()[unpriced][4] == AWKWARD and len(prices()) == 3
