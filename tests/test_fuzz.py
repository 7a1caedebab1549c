"""Fuzz (hypothesis): random, deliberately messy documents for a few tables never crash `loader run`
and never lose a document without a reject record.

Each example draws documents for four entity tables (companies, categories, offers, users:
MAPPING.md 3.3-3.5, 3.12): per collection a tidy document, one document per field whose value of
that field is messy (the others clean, so that every check of C6/C10 decides alone in every
example), and a few chaotic ones (see `documents`). Messy values: missing or null NOT NULL
fields, strings with NUL, too long (also in combining marks and astral characters), ints out of
SMALLINT range, NaN and infinities, Decimal128 (NaN, Infinity, 1E+6000, 2.5), dates of year 1
and 9999, booleans, arrays, documents, ObjectIds, numeric and date strings; `_id`s are mostly
ObjectIds, else strings (also with NUL, or 24 hex digits in upper case), ints, and now and then
booleans, null, doubles, Decimal128, dates, documents or UUIDs; users' `company` references an
existing company in every accepted shape (C5), a missing one, or garbage. Half of the examples
read the documents from MongoDB (the session SecantusDB), the other half from a mongodump folder
written here, which can also hold what SecantusDB refuses: dates outside Python's range
(`DatetimeMS`) and strings of invalid UTF-8.

Every example loads into a fresh MongoDB database, a fresh PostgreSQL database and a fresh
staging directory with one `loader run --table ...`, then checks:

1. the loader exits 0;
2. every source document is accounted for: its `_id` (as the loader spells it) is a row of its
   table or has a reject record (`loader_rejects` kind 'reject' for that table, or the extract's
   rejects of its collection, table '(extract)' of `Staging.issue_log_sql`), never both; no row
   and no reject record names an `_id` that is not a source document (the documents whose `_id`
   is of another type than ObjectId, string or int are counted instead: their spelling is the
   loader's);
3. what C6/C10 make certain: a document whose every mapped field is clean lands as a row with
   exactly the values drawn (text, integers, timestamps, NULLs, the company reference when that
   company loaded); a document with a value that cannot be loaded (NUL, too long, out of
   SMALLINT range, NaN, missing NOT NULL field, array for a scalar, invalid UTF-8...) is
   rejected, not loaded.

`FUZZ_EXAMPLES` (default 12, about 35 s) sets the number of examples; `derandomize=True` makes
every run draw the same ones (CI is reproducible): `FUZZ_EXAMPLES=200 pytest tests/test_fuzz.py`
searches wider. A failure is shrunk for up to 5 minutes (each attempt is a `loader run`) before
hypothesis prints the smallest failing example; `FUZZ_KEEP=1` keeps each example's staging
directory and dump under /tmp/loader-fuzz-*. `FUZZ_ID_CLASHES=0`: see ID_CLASHES.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import bson
import duckdb
import psycopg
from bson import Binary, Decimal128, ObjectId
from bson.datetime_ms import DatetimeMS
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from pymongo import MongoClient

from conftest import connect, create_database, run_loader
from loader.staging import Staging

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
MAX_CHAOTIC = 3  # documents of random values per collection and example, besides one per field (see documents)
BAD_UTF8 = "\x01BADUTF8\x01"  # placeholder replaced by invalid UTF-8 bytes of the same length in dumps
BAD_UTF8_BYTES = b"\xff\xfe\xc3(\xa0\xa1\xe2\x28\xa1"
assert len(BAD_UTF8.encode()) == len(BAD_UTF8_BYTES)

MISSING = object()  # the field is absent from the document
ANY = object()      # a row is expected, with a value this test does not predict

# What a value does to its row (MAPPING.md C6, C10): CLEAN converts, BAD makes the row rejected,
# ODD is left to the loader (only the accounting of property 2 is checked).
CLEAN, BAD, ODD = "clean", "bad", "odd"


@dataclass(frozen=True)
class Drawn:
    value: Any                  # the BSON value, or MISSING
    verdict: str                # CLEAN, BAD or ODD
    expected: Any = ANY         # the column's value in PostgreSQL when CLEAN (ANY: not predicted)


# --------------------------------------------------------------------------- values

def _text_alphabet(nul: bool) -> st.SearchStrategy[str]:
    # Every code point UTF-8 can hold (no surrogates); combining marks and astral characters
    # included, so that lengths in characters, graphemes and bytes differ.
    return st.characters(blacklist_categories=("Cs",), blacklist_characters="" if nul else "\x00")


CLEAN_TEXT = st.text(_text_alphabet(nul=False), max_size=20)
NUL_TEXT = st.builds(lambda a, b: a + "\x00" + b, CLEAN_TEXT, CLEAN_TEXT)
MS = st.integers(0, 999).map(lambda ms: timedelta(milliseconds=ms))
NORMAL_DATETIME = st.builds(lambda d, ms: d + ms,
                            st.datetimes(datetime(1970, 1, 2), datetime(2100, 1, 1)).map(lambda d: d.replace(microsecond=0)),
                            MS)
EDGE_DATETIMES = st.sampled_from([datetime(1, 1, 1), datetime(1, 1, 1, 0, 30), datetime(1969, 12, 31, 23, 59, 59),
                                  datetime(9999, 12, 31, 23, 59, 59, 999000), datetime(1900, 2, 28)])
# Dates beyond Python's datetime (years < 1 or > 9999): only a dump can hold them here.
OUT_OF_RANGE_DATES = st.sampled_from([DatetimeMS(2**62), DatetimeMS(-(2**62)), DatetimeMS(253402300800000),
                                      DatetimeMS(-62135596800001), DatetimeMS(2**63 - 1), DatetimeMS(-(2**63))])
OBJECT_IDS = st.binary(min_size=12, max_size=12).map(ObjectId)
INT64 = st.integers(-(2**63), 2**63 - 1)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
DECIMALS = st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "1E+6000", "-1E-6000", "2.5", "-2.5", "0E-10",
                            "32767.5", "1E+2", "12345678901234567890123456789012"]).map(Decimal128)
NUMERIC_STRINGS = st.sampled_from(["42", "-7", "4.5e1", "2.5", " 42 ", "1_000", "0x10", "1e400", "NaN", "inf", "",
                                   "99999", "-32769", "３２"])
DATE_STRINGS = st.sampled_from(["2024-03-07", "2024-03-06T23:00:00Z", "2024-03-06T23:00:00+05:30", "2024-02-30",
                                "0000-01-01", "9999-12-31T23:59:59Z", "10000-01-01", "yesterday", "2024-3-7", "20240307"])
SCALARS = st.one_of(st.none(), st.booleans(), INT64, st.floats(), DECIMALS, OBJECT_IDS, NORMAL_DATETIME,
                    EDGE_DATETIMES, st.text(_text_alphabet(nul=True), max_size=8), NUMERIC_STRINGS, DATE_STRINGS)
NESTED = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(["_id", "a", "name", "$x"]), inner, max_size=3)),
                      max_leaves=6)
CONTAINERS = st.one_of(st.lists(SCALARS, max_size=3), st.dictionaries(st.sampled_from(["_id", "a", "name"]), SCALARS, max_size=3),
                       st.just([]), st.just({}))


def _drawn(strategy: st.SearchStrategy, verdict: str, expected=lambda value: ANY) -> st.SearchStrategy[Drawn]:
    return strategy.map(lambda value: Drawn(value, verdict, expected(value)))


def _absent(nullable: bool) -> st.SearchStrategy[Drawn]:
    verdict, expected = (CLEAN, None) if nullable else (BAD, ANY)
    return st.sampled_from([MISSING, None]).map(lambda value: Drawn(value, verdict, expected))


# How a field's value is drawn: CLEAN only, MESSY only (bad or odd), or ANY (either, half and half).
MESSY, ANY_VALUE = "messy", "any"


def _uniform(options: list[st.SearchStrategy]) -> st.SearchStrategy:
    """One of `options`, each as likely (st.one_of flattens nested one_ofs and weighs by branch)."""
    return st.sampled_from(options).flatmap(lambda option: option)


def _choose(mode: str, clean: list, bad: list, odd: list) -> st.SearchStrategy[Drawn]:
    messy = _uniform([*bad, *odd])
    return {CLEAN: _uniform(clean), MESSY: messy, ANY_VALUE: _uniform([_uniform(clean), messy])}[mode]


def _long_text(length: int) -> st.SearchStrategy[str]:
    """Strings of more than `length` characters: plain, accented, astral, or base letters with
    combining marks (fewer graphemes than characters)."""
    unit = st.sampled_from(["x", "é", "\U0001F600", "e\u0301", "\U0001F44D\U0001F3FD", "\u00a0"])
    return st.builds(lambda u, extra: (u * (length + extra))[: length + extra], unit, st.integers(1, 40))


def text_values(length: int, nullable: bool, dump: bool, mode: str) -> st.SearchStrategy[Drawn]:
    """A VARCHAR(length) column (C6: text; value_too_long, nul_character)."""
    clean = [
        _drawn(CLEAN_TEXT, CLEAN, lambda v: v),
        _drawn(CLEAN_TEXT, CLEAN, lambda v: v),
        _drawn(INT64, CLEAN, str),
        _drawn(st.booleans(), CLEAN, lambda v: "true" if v else "false"),
        _drawn(OBJECT_IDS, CLEAN, str),
        _drawn(NUMERIC_STRINGS | DATE_STRINGS, CLEAN, lambda v: v),
        _drawn(st.sampled_from(["x" * length, "\U0001F600" * length, "e\u0301" * (length // 2)]), CLEAN, lambda v: v),
    ] + ([_absent(nullable=True)] if nullable else [])
    bad = [_drawn(NUL_TEXT, BAD), _drawn(CONTAINERS, BAD), _drawn(_long_text(length), BAD)]
    bad += [] if nullable else [_absent(nullable=False)]
    odd = [_drawn(st.floats() | DECIMALS | NORMAL_DATETIME | EDGE_DATETIMES, ODD)]
    if dump:
        bad.append(_drawn(st.just(BAD_UTF8), BAD))
        odd.append(_drawn(OUT_OF_RANGE_DATES, ODD))
    return _choose(mode, clean, bad, odd)


def _round_half_away(number: Decimal) -> int:
    return int(number.to_integral_value(ROUND_HALF_UP))  # ROUND_HALF_UP rounds halves away from zero


def smallint_values(dump: bool, mode: str) -> st.SearchStrategy[Drawn]:
    """A SMALLINT NOT NULL column (C6: integers, rounded half away from zero; out_of_range)."""
    quarters = st.integers(-32000 * 4, 32000 * 4).map(lambda q: q / 4)  # exact in binary: no rounding surprise
    clean = [
        _drawn(st.integers(-32768, 32767), CLEAN, lambda v: v),
        _drawn(quarters, CLEAN, lambda v: _round_half_away(Decimal(v))),
        _drawn(quarters.map(lambda v: Decimal128(str(v))), CLEAN, lambda v: _round_half_away(v.to_decimal())),
        _drawn(st.sampled_from(["42", "-7", "4.5e1", "2.5", "-2.5", "32767", "-32768"]), CLEAN,
               lambda v: _round_half_away(Decimal(v))),
    ]
    bad = [
        _absent(nullable=False),
        _drawn(st.integers(32768, 2**63 - 1) | st.integers(-(2**63), -32769), BAD),
        _drawn(st.sampled_from([32767.5, -32768.5, 1e300, -1e300]), BAD),
        _drawn(NON_FINITE, BAD),
        _drawn(st.sampled_from(["NaN", "Infinity", "-Infinity", "1E+6000", "32767.5"]).map(Decimal128), BAD),
        _drawn(st.sampled_from(["abc", "", "1e400", "99999", "-32769", "inf"]), BAD),
        _drawn(st.booleans() | OBJECT_IDS | NORMAL_DATETIME | CONTAINERS, BAD),
    ]
    odd = [_drawn(NUMERIC_STRINGS | DECIMALS | st.floats(), ODD)]
    if dump:
        bad.append(_drawn(OUT_OF_RANGE_DATES, BAD))
    return _choose(mode, clean, bad, odd)


def timestamp_values(dump: bool, mode: str) -> st.SearchStrategy[Drawn]:
    """creation_date / update_date: TIMESTAMP NOT NULL (C7; C2: no fallback between them)."""
    clean = [
        _drawn(NORMAL_DATETIME, CLEAN, lambda v: v),
        _drawn(st.sampled_from(["2024-03-06T23:00:00Z", "2024-03-06 23:00:00", "2024-03-07T00:30:00+01:30"]), CLEAN,
               lambda v: datetime(2024, 3, 6, 23)),
    ]
    bad = [_absent(nullable=False),
           _drawn(st.sampled_from(["yesterday", "", "2024-02-30T00:00:00Z"]) | st.booleans() | CONTAINERS | OBJECT_IDS, BAD)]
    odd = [_drawn(EDGE_DATETIMES | DATE_STRINGS | INT64 | st.floats() | DECIMALS, ODD)]
    if dump:
        bad.append(_drawn(OUT_OF_RANGE_DATES, BAD))
    return _choose(mode, clean, bad, odd)


def date_values(dump: bool, mode: str) -> st.SearchStrategy[Drawn]:
    """users.birthday / birthdate: DATE, nullable (C8)."""
    clean = [_absent(nullable=True), _drawn(NORMAL_DATETIME, CLEAN),
             _drawn(st.sampled_from(["2024-03-07", "1980-12-31"]), CLEAN, lambda v: datetime.strptime(v, "%Y-%m-%d").date())]
    bad = [_drawn(st.sampled_from(["yesterday", "2024-02-30", "x"]) | st.booleans() | CONTAINERS | OBJECT_IDS, BAD)]
    odd = [_drawn(EDGE_DATETIMES | DATE_STRINGS | INT64 | st.floats() | DECIMALS, ODD)]
    if dump:
        odd.append(_drawn(OUT_OF_RANGE_DATES, ODD))
    return _choose(mode, clean, bad, odd)


def junk_values(dump: bool) -> st.SearchStrategy[Drawn]:
    """An unmapped field: must not matter. Invalid UTF-8 in it is left open: the extract may reject
    the whole document (undecodable) or stage it with the field marked (only the rows reading it
    are rejected)."""
    values = [_drawn(NESTED, CLEAN)]
    if dump:
        values += [_drawn(OUT_OF_RANGE_DATES, CLEAN), _drawn(st.just([BAD_UTF8]), ODD)]
    return st.one_of(st.just(Drawn(MISSING, CLEAN)), *values)


# --------------------------------------------------------------------------- documents

def is_plain_id(value) -> bool:
    """An `_id` whose spelling by the loader this test predicts: ObjectId, string, int."""
    return isinstance(value, ObjectId | str | int) and not isinstance(value, bool) and BAD_UTF8 not in str(value)


def loader_id(value) -> str:
    """A plain `_id` as the loader stages it (loader/sql/bson.sql `bson_id_typed`): ObjectId and 24-hex
    strings lower-case hex, other values their text."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{24}", value):
        return value.lower()
    return str(value)


def id_spellings(value) -> set[str]:
    """Every text under which the loader may name a plain `_id`: `bson_id_typed`, the `id` column's
    C6 text (which keeps the case of a hex string), and in loader_rejects (which cannot hold NUL)
    with each NUL written `\\x00`."""
    return {loader_id(value), str(value), str(value).replace("\x00", "\\x00")}


def group_key(value) -> str:
    """Equal for plain `_id`s the loader may name alike (by `bson_id_typed`, or in loader_rejects where
    "a\\x00b" names both the string a<NUL>b and the string a\\x00b)."""
    return loader_id(value).replace("\x00", "\\x00")


def id_drawn(value) -> Drawn:
    """The `_id` as a value of the VARCHAR `id` column: a string holding NUL cannot load (C6, C10)."""
    return Drawn(value, BAD if isinstance(value, str) and "\x00" in value else CLEAN)


def mongo_key(value) -> tuple:
    """Equal for `_id`s MongoDB's unique index takes for the same (numbers compare across types)."""
    if isinstance(value, bool) or value is None:
        return ("bool-or-null", value)
    if isinstance(value, int | float):
        return ("number", Decimal(repr(value)) if isinstance(value, float) else Decimal(value))
    if isinstance(value, Decimal128):
        return ("number", value.to_decimal())
    return (type(value).__name__, repr(value))


@dataclass
class Document:
    collection: str
    fields: dict[str, Drawn]
    doc: dict = field(default_factory=dict)

    def __post_init__(self):
        self.doc = {name: d.value for name, d in self.fields.items() if d.value is not MISSING}

    @property
    def id(self):
        return self.doc["_id"]

    def verdict(self, effective: dict[str, Drawn]) -> str | None:
        """'row' when every mapped value is clean, 'reject' when one cannot load, else None."""
        verdicts = {d.verdict for d in effective.values()}
        if BAD in verdicts:
            return "reject"
        return "row" if verdicts == {CLEAN} else None


# table: (collection, the columns whose values are drawn and checked; users.birthdate: see _effective)
TABLES = {
    "companies": ("companies", ["name"]),
    "categories": ("categories", ["name", "type"]),
    "offers": ("offers", ["name", "duration", "coaching_credit"]),
    "users": ("users", ["firstname", "lastname", "email", "insurer", "population", "sso_id", "role"]),
}


# Two kinds of `_id` the loader must survive: a string holding NUL, and documents whose `_id`s
# differ in MongoDB but not (or only in case) as the loader spells them (ObjectId X and the string
# of X's hex; 5 and "5"; true and "true"). Both stopped `loader run` when this test was written
# (fixed since: duplicate_key rejects, NUL written \x00 in loader_rejects); the explicit examples
# below keep them. FUZZ_ID_CLASHES=0 leaves them out, to look for other failures should they return.
ID_CLASHES = os.environ.get("FUZZ_ID_CLASHES", "1") != "0"
NUL_IN_IDS = ID_ALIASES = ID_CLASHES


def _ids(dump: bool) -> st.SearchStrategy:
    strings = st.text(_text_alphabet(nul=False), min_size=1, max_size=10)
    with_nul = st.builds(lambda a, b: a + "\x00" + b, strings, strings) if NUL_IN_IDS else strings
    upper_hex = st.binary(min_size=12, max_size=12).map(lambda b: b.hex().upper())
    # Rarer `_id` types (UUIDs are common in applications); their spelling is left to the loader.
    others = [st.booleans(), st.none(), st.sampled_from([2.5, -0.5, 1e300]), st.sampled_from(["2.50", "1E+6000"]).map(Decimal128),
              NORMAL_DATETIME, st.builds(dict, a=st.integers(0, 3)), st.builds(dict, k=OBJECT_IDS),
              st.binary(min_size=16, max_size=16).map(lambda b: Binary(b, 4))]
    if dump:
        others.append(strings.map(lambda s: s + BAD_UTF8))
    return _uniform([OBJECT_IDS] * 8 + [strings, with_nul, upper_hex, INT64, _uniform(others)])


def _aliases(value) -> list:
    """Other `_id`s MongoDB tells apart from `value` but the loader spells (nearly) alike."""
    if isinstance(value, ObjectId):
        return [str(value), str(value).upper()]
    if isinstance(value, bool) or value is None:
        return [{True: "true", False: "false", None: "null"}[value]]
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value):
        return [int(value)]
    if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{24}", value):
        return [ObjectId(value.lower())]
    if isinstance(value, str) and "\x00" in value:
        return [value.replace("\x00", "\\x00")]
    return []


@st.composite
def documents(draw, collection: str, columns: dict, dump: bool, extra: dict | None = None) -> list[Document]:
    """Documents of one collection; `columns` and `extra`: field -> function(dump, mode) giving the
    field's strategy. The collection holds, in a random order, each mostly (shrinking leaves them
    out): a tidy document (every value clean); for every field, a document whose value of that
    field is messy and whose others are clean (so that each check of C6/C10 decides alone, in
    every example); and up to MAX_CHAOTIC chaotic documents (every value clean or messy)."""
    strategies = {"creation_date": timestamp_values, "update_date": timestamp_values, **columns, **(extra or {})}
    kinds = [None, *strategies] + ["chaotic"] * draw(st.integers(0, MAX_CHAOTIC))
    kinds = [kind for kind in draw(st.permutations(kinds)) if draw(st.integers(0, 7))]  # 0 (the simplest): left out
    out, seen = [], set()
    for kind in kinds:
        aliases = [a for d in out for a in _aliases(d.id)] if ID_ALIASES else []
        _id = draw(_uniform([_ids(dump)] * 9 + [st.sampled_from(aliases)]) if aliases else _ids(dump))
        spelled = loader_id(_id) if is_plain_id(_id) else None
        if mongo_key(_id) in seen or (not ID_ALIASES and spelled in seen):  # MongoDB's unique _id index
            _id = ObjectId(b"\xfe" * 8 + len(out).to_bytes(4, "big"))  # a fresh one (hypothesis draws alike often)
            spelled = loader_id(_id)
        seen |= {mongo_key(_id), spelled}
        modes = {name: ANY_VALUE if kind == "chaotic" else MESSY if name == kind else CLEAN for name in strategies}
        fields = {"_id": id_drawn(_id)}
        fields.update({name: draw(strategy(dump, modes[name])) for name, strategy in strategies.items()})
        fields["junk"] = draw(junk_values(dump))
        out.append(Document(collection, fields))
    return out


@st.composite
def references(draw, companies: list[Document]) -> Drawn:
    """users.company (C5): an existing company in any accepted shape, a missing one, or garbage."""
    shapes = [
        st.just(MISSING), st.none(), OBJECT_IDS,
        st.binary(min_size=12, max_size=12).map(lambda b: b.hex()),
        st.sampled_from(["", "abc", "0" * 23, "g" * 24, "0" * 25]), st.integers(-5, 5), st.floats(),
        st.dictionaries(st.sampled_from(["_id", "a", "key"]), SCALARS, max_size=2), st.lists(OBJECT_IDS, max_size=2),
    ]
    oids = [d.id for d in companies if isinstance(d.id, ObjectId)]
    if oids:
        existing = st.sampled_from(oids)
        shapes += [existing, existing, existing.map(lambda o: str(o).upper()), existing.map(lambda o: {"_id": o}),
                   existing.map(lambda o: {"_id": {"_id": str(o)}})]
    return Drawn(draw(st.one_of(*shapes)), CLEAN)  # nullable: never a reason to reject the user


def expected_reference(value) -> str | None:
    """C5: the referenced id, or None for an unusable shape."""
    if isinstance(value, dict):
        value = value.get("_id")
        if isinstance(value, dict):
            value = value.get("_id")
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{24}", value):
        return value.lower()
    return None


@dataclass
class Case:
    dump: bool
    collections: dict[str, list[Document]]

    def _repr_pretty_(self, printer, cycle) -> None:  # how hypothesis shows a failing example
        printer.text(repr(self))

    def __repr__(self) -> str:
        lines = [f"Case(dump={self.dump})"]
        for collection, docs in self.collections.items():
            lines += [f"  {collection}: {doc.doc!r}" for doc in docs]
        return "\n".join(lines)


@st.composite
def cases(draw) -> Case:
    dump = draw(st.booleans())

    def text(length: int, nullable: bool = False):
        return lambda dump, mode: text_values(length, nullable, dump, mode)

    companies = draw(documents("companies", {"name": text(255)}, dump))
    categories = draw(documents("categories", {"name": text(255), "type": text(255)}, dump))
    offers = draw(documents("offers", {"name": text(255), "duration": smallint_values,
                                       "coaching_credit": smallint_values}, dump))
    users = draw(documents("users", {
        "firstname": text(255), "lastname": text(255), "email": text(255), "insurer": text(255, True),
        "population": text(255, True), "sso_id": text(255, True), "role": text(100),
        "birthday": date_values, "birthdate": date_values}, dump, {"company": lambda dump, mode: references(companies)}))
    return Case(dump, {"companies": companies, "categories": categories, "offers": offers, "users": users})


# --------------------------------------------------------------------------- running one example

_examples = itertools.count()


def _encode(doc: dict) -> bytes:
    raw = bson.encode(doc)
    marker = BAD_UTF8.encode()
    return raw.replace(marker, BAD_UTF8_BYTES)


def _write_dump(case: Case, root: Path, database: str) -> None:
    folder = root / database
    folder.mkdir(parents=True)
    for collection, docs in case.collections.items():
        if docs:
            (folder / f"{collection}.bson").write_bytes(b"".join(_encode(d.doc) for d in docs))


@dataclass
class Outcome:
    rows: dict[str, dict[str, dict]]        # table: id: row
    rejects: dict[str, Counter]             # table: source_id: reject records
    extract_rejects: dict[str, Counter]     # collection: _id: reject records
    unknown_issues: list[tuple]


def _outcome(settings_: dict[str, str], staging: Path) -> Outcome:
    with connect(settings_, row_factory=psycopg.rows.dict_row) as conn:
        rows = {table: {row["id"]: row for row in conn.execute(f'SELECT * FROM "{table}"').fetchall()} for table in TABLES}
        issues = conn.execute('SELECT "table", source_id, kind, reason FROM loader_rejects').fetchall()
    rejects = {table: Counter() for table in TABLES}
    unknown = []
    for issue in issues:
        if issue["table"] not in TABLES:
            unknown.append(tuple(issue.values()))
        elif issue["kind"] == "reject":
            rejects[issue["table"]][issue["source_id"]] += 1
    extract_rejects = {table: Counter() for table in TABLES}
    log = Staging(staging).issue_log_sql()
    if log:
        for collection, source_id in duckdb.sql(
                f"SELECT source_collection, source_id FROM ({log}) WHERE \"table\" = '(extract)' AND kind = 'reject'").fetchall():
            extract_rejects.setdefault(collection, Counter())[source_id] += 1
    return Outcome(rows, rejects, extract_rejects, unknown)


def _effective(table: str, columns: list[str], doc: Document) -> dict[str, Drawn]:
    """The values the row is made of: mapped columns (users.birthdate: `birthday`, else
    `birthdate`), the base columns, and the unmapped field."""
    effective = {c: doc.fields[c] for c in columns}
    effective.update({c: doc.fields[c] for c in ("_id", "creation_date", "update_date", "junk") if c in doc.fields})
    if table == "users" and "birthday" in doc.fields:
        birthday = doc.fields["birthday"]
        effective["birthdate"] = birthday if birthday.value not in (MISSING, None) else doc.fields["birthdate"]
    return effective


BASE_COLUMNS = {"_id": None, "creation_date": "created_at", "update_date": "updated_at", "junk": None}  # None: not compared


def _check(case: Case, outcome: Outcome, output: str) -> None:
    problems = []
    for table, (collection, columns) in TABLES.items():
        docs = [d for d in case.collections[collection] if is_plain_id(d.id)]
        others = [d for d in case.collections[collection] if not is_plain_id(d.id)]
        rows, rejects = outcome.rows[table], outcome.rejects[table]
        extracted = outcome.extract_rejects.get(collection, Counter())

        # Property 2: one row or one reject record per document, no more, no fewer ...
        records = len(rows) + sum(rejects.values()) + sum(extracted.values())
        if records != len(docs) + len(others):
            problems.append(f"{table}: {len(docs) + len(others)} document(s), but {len(rows)} row(s) and "
                            f"{records - len(rows)} reject record(s)")
        # ... and every document (of ObjectId, string or int `_id`) has its own: the documents the
        # loader may name alike (a group) have as many rows and records as they are documents.
        groups: dict[str, list[Document]] = {}
        for doc in docs:
            groups.setdefault(group_key(doc.id), []).append(doc)
        clashes = {key for key, group in groups.items() if len(group) > 1}
        clashes |= {group_key(a) for d in others for a in _aliases(d.id) if is_plain_id(a)}  # true and "true"
        for group in groups.values():
            spellings = set().union(*(id_spellings(d.id) for d in group))
            found = sum(s in rows for s in spellings) + sum(rejects[s] + extracted[s] for s in spellings)
            if found < len(group):
                problems.append(f"{table} {[d.id for d in group]!r}: {len(group)} document(s), "
                                f"{found} row(s) and reject record(s): lost")
        # No row or record names a document that does not exist (those of other `_id` types are
        # named as the loader spells them: only counted).
        known = set().union(*(id_spellings(d.id) for d in docs)) if docs else set()
        unmatched = [f"row {i!r}" for i in set(rows) - known]
        unmatched += [f"reject record for {i!r}" for i, n in rejects.items() if i not in known for _ in range(n)]
        unmatched += [f"extract reject for {i!r}" for i, n in extracted.items() if i not in known for _ in range(n)]
        if len(unmatched) > len(others):
            problems.append(f"{table}: {len(others)} document(s) of other _id types {[d.id for d in others]!r}, "
                            f"but {len(unmatched)} row(s) and reject record(s) name no other document: {unmatched!r}")

        for doc in docs:
            spellings = id_spellings(doc.id)
            row = next((rows[s] for s in spellings if s in rows), None)
            recorded = sum(rejects[s] + extracted[s] for s in spellings)
            name = f"{table} {doc.id!r}"
            if group_key(doc.id) in clashes:
                continue  # which of the documents named alike gives the row is not specified
            if row is not None and recorded:
                problems.append(f"{name}: both a row and {recorded} reject record(s)")
            # Property 3: what C6/C10 make certain.
            effective = _effective(table, columns, doc)
            verdict = doc.verdict(effective)
            if currently_in_test_context():  # counts shown by --hypothesis-show-statistics
                event(f"{table}: {verdict or 'open'} -> {'row' if row is not None else 'reject'}")
            if verdict == "reject" and row is not None:
                bad = [(c, d.value) for c, d in effective.items() if d.verdict == BAD]
                problems.append(f"{name}: loaded although {bad!r} cannot be")
            if verdict == "row":
                if row is None:
                    problems.append(f"{name}: rejected although every value is clean")
                    continue
                for column, drawn in effective.items():
                    target = BASE_COLUMNS.get(column, column)
                    if target and drawn.expected is not ANY and row[target] != drawn.expected:
                        problems.append(f"{name}: {target} = {row[target]!r}, expected {drawn.expected!r}")
            if table == "users" and row is not None:
                reference = expected_reference(doc.doc.get("company"))
                wanted = reference if reference in outcome.rows["companies"] else None
                if row["company_id"] != wanted:
                    problems.append(f"{name}: company_id = {row['company_id']!r}, expected {wanted!r} "
                                    f"(company {doc.doc.get('company')!r})")
    problems += [f"issue of another table: {issue!r}" for issue in outcome.unknown_issues]
    assert not problems, "\n".join(problems) + "\n--- loader output ---\n" + output


def load_case(mongo, postgres, case: Case) -> None:
    """Load `case` into fresh databases and a fresh staging directory; check properties 1-3."""
    number = next(_examples)
    database = f"fuzz_{number}"
    scratch = Path(tempfile.mkdtemp(prefix="loader-fuzz-"))
    target = create_database(postgres, "fuzz")
    client = MongoClient(mongo.url)
    try:
        source: list[str] = []
        if case.dump:
            _write_dump(case, scratch / "dump", database)
            source = ["--from-dump", str(scratch / "dump")]
        else:
            for collection, docs in case.collections.items():
                if docs:
                    client[database][collection].insert_many([d.doc for d in docs])
        settings_ = {"MONGODB_URL": mongo.url, "MONGODB_DATABASE": database, **target}
        tables = [arg for table in TABLES for arg in ("--table", table)]
        result = run_loader("run", *tables, "--staging", str(scratch / "staging"), "--no-progress", *source,
                            env=settings_, timeout=120)
        output = f"{result.stdout}\n{result.stderr}"
        assert result.returncode == 0, f"loader run failed (exit {result.returncode}):\n{output}"
        _check(case, _outcome(settings_, scratch / "staging"), output)
    finally:
        client.drop_database(database)
        client.close()
        with psycopg.connect(**postgres.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target["POSTGRES_DATABASE"]}" WITH (FORCE)')
        if not os.environ.get("FUZZ_KEEP"):
            shutil.rmtree(scratch, ignore_errors=True)


def tidy_company(_id, name: str = "Acme") -> Document:
    """A company document whose every field is clean (explicit examples)."""
    stamp = Drawn(datetime(2024, 3, 6, 23), CLEAN, datetime(2024, 3, 6, 23))
    return Document("companies", {"_id": id_drawn(_id), "creation_date": stamp, "update_date": stamp,
                                  "name": Drawn(name, CLEAN, name)})


def companies_only(*docs: Document, dump: bool = False) -> Case:
    return Case(dump, {"companies": list(docs), "categories": [], "offers": [], "users": []})


def id_clash_examples(test):
    """The explicit examples of ID_CLASHES: NUL in an _id; an ObjectId and its hex string; 5 and "5"."""
    if not ID_CLASHES:
        return test
    hex_id = "65e8f1a2b3c4d5e6f7a8b9c0"
    for case in (companies_only(tidy_company("a\x00b")),
                 companies_only(tidy_company(ObjectId(hex_id)), tidy_company(hex_id)),
                 companies_only(tidy_company(5), tidy_company("5"))):
        test = example(case=case)(test)
    return test


@id_clash_examples
@example(case=companies_only(tidy_company(ObjectId("65e8f1a2b3c4d5e6f7a8b9c1")), dump=True))  # collections missing from a dump
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_random_documents_are_loaded_or_rejected(mongo, postgres, case: Case):
    note(repr(case))
    load_case(mongo, postgres, case)
