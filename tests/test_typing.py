"""Unit tests of loader.transform.typing: the SQL a table's columns are typed and checked with,
run on DuckDB with the loader's macros (no servers)."""

from __future__ import annotations

import json

import yaml

from loader import duck
from loader.config import load_config
from loader.duck import sql_literal
from loader.transform.typing import typed_rows_sql

OID = "65e8f570e8c2fd578c1342f5"
STAMP = {"$date": "2024-03-06T23:00:00Z"}


def typed_rows(tmp_path, columns: list[dict], documents: list[dict]) -> dict[str, tuple]:
    """_id -> (typed values of `columns`, reject reason) of `documents` (given timestamps) in a
    table with the base columns and `columns` (read from the fields of the same names)."""
    path = tmp_path / "schemas.yaml"
    path.write_text(yaml.safe_dump({"tables": {"things": {"include_base": True, "additional_columns": columns}}}))
    table = load_config(path).tables["things"]
    con = duck.connect()
    stamped = [{"creation_date": STAMP, "update_date": STAMP} | d for d in documents]
    values = ", ".join(f"({sql_literal(d['_id'])}, {sql_literal(json.dumps(d))})" for d in stamped)
    docs = (f"SELECT _id AS _source_id, 'things' AS _source_collection, _id AS _unit, CAST(d AS JSON) AS d "
            f"FROM (VALUES {values}) v(_id, d)")
    names = ", ".join(f'"{c["name"]}"' for c in columns)
    rows = con.execute(f"SELECT _source_id, _problem.reason, {names} FROM ({typed_rows_sql(table, docs, 'UTC')})").fetchall()
    return {source_id: (tuple(typed), reason) for source_id, reason, *typed in rows}


def test_columns_named_like_the_templates_placeholders_keep_their_reasons(tmp_path):
    # The column templates use r (raw), t (type) and v (value); a reason names its column.
    columns = [{"name": name, "sql_type": "VARCHAR", "nullable": False} for name in ("r", "t", "v")]
    rows = typed_rows(tmp_path, columns, [
        {"_id": "full", "r": "a", "t": {"$oid": OID.upper()}, "v": 5},
        {"_id": "no_t", "r": "a", "v": "c"},
        {"_id": "no_v", "r": "a", "t": "b", "v": None},
    ])
    assert rows == {
        "full": (("a", OID, "5"), None),
        "no_t": (("a", None, "c"), "not_null:t"),
        "no_v": (("a", "b", None), "not_null:v"),
    }


def test_each_type_family_converts_from_its_bson_types_and_rejects_the_others(tmp_path):
    columns = [
        {"name": "n", "sql_type": "INTEGER"},
        {"name": "b", "sql_type": "BOOLEAN"},
        {"name": "x", "sql_type": "DOUBLE PRECISION"},
        {"name": "s", "sql_type": "VARCHAR"},
        {"name": "ref", "sql_type": "VARCHAR", "reference": True},
    ]
    rows = typed_rows(tmp_path, columns, [
        {"_id": "plain", "n": 7, "b": True, "x": 1.5, "s": 72.0, "ref": {"$oid": OID}},
        {"_id": "wrapped", "n": {"$numberLong": "42"}, "b": 1, "x": {"$numberDouble": "-Infinity"},
         "s": {"$date": "2024-03-06T23:00:00Z"}, "ref": {"_id": {"$oid": OID}}},
        {"_id": "strings", "n": "2.5", "b": "no", "x": "1e3", "s": {"$numberDecimal": "1.10"}, "ref": OID.upper()},
        {"_id": "bad_n", "n": [1]},
        {"_id": "big_n", "n": {"$numberLong": str(2**40)}},
        {"_id": "bad_b", "b": 2},
        {"_id": "bad_s", "s": {"a": 1}},
        {"_id": "bad_ref", "ref": "not an id"},
    ])
    assert rows == {
        "plain": ((7, True, 1.5, "72.0", OID), None),
        "wrapped": ((42, True, float("-inf"), "2024-03-06T23:00:00.000Z", OID), None),
        "strings": ((3, False, 1000.0, "1.10", OID), None),
        "bad_n": ((None, None, None, None, None), "type_error"),
        "big_n": ((None, None, None, None, None), "out_of_range"),
        "bad_b": ((None, None, None, None, None), "type_error"),
        "bad_s": ((None, None, None, None, None), "type_error"),
        "bad_ref": ((None, None, None, None, None), None),  # a warning (bad_reference), not a reject
    }
