"""The loader's speed benchmark (GitHub issue "Speed"): one generated SmartDiet dataset, every figure
measured in the same run on the same machine, printed as one table of measures against targets.

    .venv/bin/python bench/run.py [--size 1000000] [--changed 0.01] [--seed 7] [--sample 20000]

Setup: `--size` generated documents (loader.demo.generator) inserted into SecantusDB (a MongoDB
wire-protocol server running in this process, in memory: 1.5 GB of cache per million documents),
with indexes on `creation_date` and `update_date`
of every collection (what the incremental extract queries); a throwaway PostgreSQL 15 cluster; a
temporary staging folder.

The figures:

  extract / transform / load, full   the loader's first run (`pipeline.run`, as `loader run`), in
                                     a child process: its peak memory is its own and it does not
                                     share a GIL with the MongoDB server threads of this process.
                                     The stages overlap (a table is derived once its collections
                                     are staged, loaded once the extract has ended and it and the
                                     tables referencing it are derived): the transform's figure is
                                     the time it takes after the extract has ended, the load's the
                                     time it takes after the transform has ended.
  load alone                         the load stage by itself: the full run's staging loaded again,
                                     in a child process, into an empty database (`pipeline.load`,
                                     as `loader load`: every table created and filled).
  raw cursor                         the limit of the extract: a child process reads every
                                     collection the loader reads with pymongo, `find({})` as
                                     RawBSONDocument, the loader's batch size, counting documents
                                     and doing nothing else. Target: extract <= 1.5 x raw cursor.
  COPY floor                         the limit of the load: the final rows (as PostgreSQL holds them
                                     after the full run) exported to CSV (not timed), then timed:
                                     `COPY ... FROM STDIN (FORMAT csv)` into empty tables with the
                                     same columns, types and NOT NULLs, without keys or indexes,
                                     one transaction per table, one connection. The loader's
                                     first load creates the tables in its transactions and writes
                                     LOAD_WORKERS (2) of them at a time, each on its own
                                     connection, in binary COPY where the column types allow
                                     (all 32 tables), and adds their keys, indexes and foreign
                                     keys; the floor does neither. Target: load alone <= 1.5 x floor.
  binary COPY floor                  the same in PostgreSQL's binary format (exported and copied
                                     back with FORMAT binary); informative: the loader's own format.
  row-by-row baseline                the tool users run today, in three parts. (1) Its reads: the
                                     raw cursor above. (2) Its extra reads for the moments and
                                     details tables (MAPPING 4.2), in a child process: its candidate
                                     query (logbook userquizzs with questions) read in full, then,
                                     for a random sample of up to `--quizzes` candidates, its
                                     per-userquizz round trips with pymongo and dict documents
                                     (count answer items, else count answered questions; find the
                                     coaching logbook; a new PostgreSQL connection and the
                                     users_logbook lookup; per question, find the user question and
                                     its template), scaled by candidates / sampled; the fields these
                                     lookups filter on are indexed meanwhile. (3) Its writes: per
                                     table, a random sample of up to `--sample` final rows, in key
                                     order, `INSERT ... ON CONFLICT (identity) DO UPDATE ...`
                                     executed once per row (what psycopg2's executemany does: one
                                     round trip per row), a commit per 5,000 rows, into empty tables
                                     with the primary key and identity constraint but no foreign
                                     keys; scaled per table by rows / sampled rows. Target:
                                     baseline / the loader's full run >= 30.
  incremental run                    `--changed` of the documents, drawn at random from the whole
                                     database, get a later update_date (each its own millisecond)
                                     and a marker field, then the same child run; `--rounds`
                                     times, each after its own change, and the median run is
                                     reported (every run's total is printed: one run on this
                                     shared machine moved between 0.12 and 0.20 of the full run
                                     for the same code). Before the first, the floors' and the
                                     baseline's tables and the load alone's database are dropped
                                     and PostgreSQL checkpoints (their writes are the benchmark's,
                                     not the loader's).
                                     Target (1% changed): its total <= 0.10 x the full run's.
  change stream read                 the incremental extract's deletion check, alone: the
                                     source's change stream read from the positions the last run
                                     recorded to its end (loader/extract/changes.py), in a child
                                     process, after the changes and before each incremental run
                                     (reading it changes nothing); that of the median run.
                                     Without a change stream the extract counts each collection's
                                     documents instead (SecantusDB scans for a count, mongod reads
                                     metadata).
  peak memory                        the largest peak resident memory of the loader's child runs
                                     (VmHWM of /proc/self/status, read by the child at its end;
                                     not the ru_maxrss of wait4, which also counts the parent's
                                     pages a child holds between fork and exec: this process holds
                                     the MongoDB server's data).
                                     Target: < 2 GB at 5M documents.

The machine is shared and noisy: compare ratios measured in one run rather than seconds across
runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from psycopg import sql
from pymongo import MongoClient, UpdateOne
from rich.console import Console
from rich.table import Table

from loader import pipeline
from loader.config import Config
from loader.config import Table as TargetTable
from loader.config import load_config
from loader.demo import generator
from loader.demo.servers import MongoServer, PostgresServer
from loader.extract import changes
from loader.staging import Staging
from loader.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
DATABASE = "smartdiet"
FLOOR_SCHEMA = "bench_floor"
LOAD_ALONE_DATABASE = "bench_load_alone"
ROWWISE_SCHEMA = "bench_rowwise"
ROWWISE_BATCH = 5_000
LOGBOOK_TYPE = "QUIZZ_TYPE_LOGBOOK"
# What the current tool's per-userquizz lookups filter on; indexed for the baseline's sake while it runs.
QUIZ_LOOKUP_INDEXES = (("coachinglogbooks", "logbook"), ("items", "userQuizzQuestion"))
COPY_CHUNK_BYTES = 1 << 20
STAGES = ("extract", "transform", "load")
TARGETS = {"extract": 1.5, "load": 1.5, "speedup": 30, "incremental": 0.10, "memory_mb": 2048}


# ---------------------------------------------------------------------- child processes

def build(overrides: dict[str, str | int]) -> tuple[Settings, Config]:
    settings = load_settings(None, **overrides)
    return settings, load_config(settings.config_path)


def loader_run(settings: Settings, config: Config, args: argparse.Namespace) -> dict[str, float]:
    """One loader run (`pipeline.run`: the stages overlapping), in seconds: the extract, the
    transform after the extract ended, the load after the transform ended, and their total."""
    ended = pipeline.run(settings, config, config.ordered(), progress=False, summary=False).seconds
    return {"extract": ended["extract"], "transform": ended["transform"] - ended["extract"],
            "load": ended["load"] - ended["transform"], "total": ended["total"]}


def load_alone_run(settings: Settings, config: Config, args: argparse.Namespace) -> dict[str, float]:
    """The load stage by itself (`pipeline.load`, as `loader load`), in seconds."""
    clock = time.perf_counter()
    pipeline.load(settings, config, config.ordered(), progress=False, summary=False)
    return {"seconds": time.perf_counter() - clock}


def loader_collections(db, config: Config) -> list[str]:
    """The collections the loader reads that exist in the source."""
    return sorted(set(config.collections(config.ordered())) & set(db.list_collection_names()))


def raw_cursor_run(settings: Settings, config: Config, args: argparse.Namespace) -> dict[str, float]:
    """Every collection the loader reads, `find({})` as raw BSON, documents counted only."""
    with MongoClient(settings.mongodb_url.get_secret_value()) as client:
        db = client.get_database(settings.mongodb_database, codec_options=CodecOptions(document_class=RawBSONDocument))
        names = loader_collections(db, config)
        clock = time.perf_counter()
        documents = sum(1 for name in names for _ in db[name].find({}, batch_size=settings.batch_size))
        return {"seconds": time.perf_counter() - clock, "documents": documents, "collections": len(names)}


def stream_run(settings: Settings, config: Config, args: argparse.Namespace) -> dict[str, float]:
    """The incremental extract's deletion check: the change stream read from the recorded
    positions (the extract's own `changes.read`); how many collections it told."""
    with MongoClient(settings.mongodb_url.get_secret_value()) as client:
        db = client.get_database(settings.mongodb_database)
        names = loader_collections(db, config)
        clock = time.perf_counter()
        feed = changes.read(db, Staging(settings.staging_dir).positions(), names)
        return {"seconds": time.perf_counter() - clock, "told": len(feed.changes), "collections": len(names)}


def reference(value: Any, key: str | None = None) -> ObjectId | None:
    """A reference as an ObjectId (the shapes of MAPPING C5: ObjectId, {key: id}, {_id: id}, hex text)."""
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, dict):
        return reference(value[key] if key and key in value else value.get("_id"))
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value.lower())
    return None


def quiz_reads_run(settings: Settings, config: Config, args: argparse.Namespace) -> dict[str, float]:
    """The current tool's reads for the moments and details tables (MAPPING 4.2): its candidate
    query in full, then its per-userquizz round trips (steps 2, 3, 4 and 6) on a random sample of
    up to `args.quizzes` candidates, with pymongo and ordinary dict documents as it does."""
    zone = ZoneInfo(settings.source_timezone)
    with MongoClient(settings.mongodb_url.get_secret_value()) as client:
        db = client[settings.mongodb_database]
        # Step 1: the candidates, one query, read in full; a reservoir sample of them is kept.
        rng, picked, candidates = random.Random(args.seed), [], 0
        clock = time.perf_counter()
        for quiz in db.userquizzs.find({"type": LOGBOOK_TYPE, "questions.0": {"$exists": True}}):
            candidates += 1
            if len(picked) < args.quizzes:
                picked.append(quiz)
            elif (slot := rng.randrange(candidates)) < args.quizzes:
                picked[slot] = quiz
        candidate_seconds = time.perf_counter() - clock
        counts = {"mongo": 0, "postgres_connections": 0, "qualified": 0, "moments": 0}
        postgres_seconds = 0.0
        clock = time.perf_counter()
        for quiz in picked:
            questions = [q for q in (reference(e, "question") for e in quiz["questions"]) if q is not None]
            # Step 2: qualification, answer items first, then answered user questions. The second
            # count is an aggregate of two $match stages rather than count_documents({_id: {$in},
            # $or}): the same count in one round trip, but SecantusDB scans the whole collection
            # for a filter holding an $or, where mongod would use the _id index.
            counts["mongo"] += 1
            if not db.items.count_documents({"userQuizzQuestion": {"$in": questions}, "text": {"$ne": None}}):
                counts["mongo"] += 1
                answered = db.userquizzquestions.aggregate([
                    {"$match": {"_id": {"$in": questions}}},
                    {"$match": {"$or": [{"qcm_answers.0": {"$exists": True}}, {"scale_1_10_answer": {"$ne": None}},
                                        {"single_enum_answer": {"$ne": None}}, {"boolean_answer": {"$ne": None}},
                                        {"document_answer": {"$ne": None}}]}},
                    {"$count": "answered"},
                ])
                if not next(answered, {}).get("answered"):
                    continue  # no_answers
            counts["qualified"] += 1
            # Step 3: its coaching logbook.
            counts["mongo"] += 1
            logbook = db.coachinglogbooks.find_one({"logbook": quiz["_id"]})
            if logbook is None or reference(logbook.get("user")) is None or logbook.get("day") is None:
                continue  # no_coachinglogbook, no_user_or_day
            # Step 4: a new PostgreSQL connection and the users_logbook lookup. R1 looked the day up
            # by its UTC date part in a table it had filled the same way; this table holds the local
            # date (D4), so the lookup uses it and the chain goes on as it did in R1.
            day = logbook["day"].replace(tzinfo=timezone.utc).astimezone(zone).date()
            counts["postgres_connections"] += 1
            connecting = time.perf_counter()
            with psycopg.connect(**settings.postgres_conninfo()) as conn:
                found = conn.execute("SELECT id FROM users_logbook WHERE user_id = %s AND day = %s",
                                     [str(reference(logbook["user"])), day]).fetchone()
            postgres_seconds += time.perf_counter() - connecting
            if found is None:
                continue  # no_users_logbook_match
            counts["moments"] += 1
            # Step 6: per question, the user question and its template; items only for a template of
            # type QUIZZ_TYPE_LOGBOOK (which a question template never is, MAPPING 4.2).
            for question_id in questions:
                counts["mongo"] += 1
                question = db.userquizzquestions.find_one({"_id": question_id})
                template_id = reference(question.get("quizz_question")) if question else None
                if template_id is None:
                    continue
                counts["mongo"] += 1
                template = db.quizzquestions.find_one({"_id": template_id})
                if template and template.get("type") == LOGBOOK_TYPE:
                    counts["mongo"] += 1
                    list(db.items.find({"userQuizzQuestion": question_id, "text": {"$ne": None}}))
        return {"seconds": time.perf_counter() - clock, "sampled": len(picked), "candidates": candidates,
                "candidate_seconds": candidate_seconds, "postgres_seconds": postgres_seconds, **counts}


CHILD_RUNS = {"loader": loader_run, "load": load_alone_run, "raw": raw_cursor_run, "quizzes": quiz_reads_run, "stream": stream_run}


def child_main(args: argparse.Namespace) -> None:
    figures = CHILD_RUNS[args.child](*build(json.loads(args.settings.read_text())), args)
    print(json.dumps({**figures, "peak_mb": own_peak_mb()}))


def own_peak_mb() -> float:
    """This process's peak resident memory since it started (VmHWM, in kB)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


@dataclass
class ChildResult:
    figures: dict[str, float]
    peak_mb: float


def run_child(mode: str, settings_file: Path, args: argparse.Namespace) -> ChildResult:
    """`bench/run.py --child MODE`; its JSON line, with its own peak memory."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", mode, "--settings", str(settings_file), "--seed", str(args.seed),
         "--quizzes", str(args.quizzes)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    output = process.stdout.read()
    process.wait()
    process.stdout.close()
    if process.returncode != 0:
        raise SystemExit(f"bench child '{mode}' failed with exit code {process.returncode}")
    figures = json.loads(output.strip().splitlines()[-1])
    result = ChildResult(figures, figures.pop("peak_mb"))
    print(f"bench child '{mode}': {result.figures}, peak {result.peak_mb:,.0f} MB", file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------------- MongoDB side

def create_timestamp_indexes(db) -> float:
    """Indexes on creation_date and update_date of every collection; returns the seconds taken."""
    clock = time.perf_counter()
    for name in db.list_collection_names():
        db[name].create_index("creation_date")
        db[name].create_index("update_date")
    return time.perf_counter() - clock


def change_documents(db, fraction: float, seed: int) -> int:
    """Bump update_date (past its collection's latest) and set a marker field on `fraction` of the
    documents, drawn at random from the whole database; returns the documents changed. Each gets
    its own millisecond, as live writes do: stamped at one instant, a collection's changed
    documents would all sit at the next run's watermark, which the delta reads again (inclusive,
    MAPPING.md 5.2) and compares with the staging: 10,000 documents read twice."""
    stamps = {(name, d["_id"]): d.get("update_date")
              for name in sorted(db.list_collection_names()) for d in db[name].find({}, {"update_date": 1})}
    latest = {}
    for (name, _), stamp in stamps.items():
        if stamp and stamp > latest.get(name, stamp.min):
            latest[name] = stamp
    picked: dict[str, list] = {}
    for name, _id in random.Random(seed).sample(sorted(stamps, key=str), round(len(stamps) * fraction)):
        picked.setdefault(name, []).append(_id)
    for name, ids in picked.items():
        moment = latest.get(name, max(latest.values())) + timedelta(minutes=1)
        # One update per _id: SecantusDB matches `$in` by scanning the collection against the list.
        db[name].bulk_write([UpdateOne({"_id": _id}, {"$set": {"update_date": moment + timedelta(milliseconds=k), "bench_marker": 1}})
                             for k, _id in enumerate(ids)])
    return sum(map(len, picked.values()))


# ---------------------------------------------------------------------- PostgreSQL side

def qualified(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def column_list(names) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def row_counts(conn: psycopg.Connection, tables: list[TargetTable]) -> dict[str, int]:
    return {t.name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(qualified("public", t.name))).fetchone()[0] for t in tables}


def create_bare_copies(conn: psycopg.Connection, tables: list[TargetTable], schema: str) -> None:
    """`schema`.<table> for each table: same columns, types and NOT NULLs; no keys, indexes, defaults."""
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for t in tables:
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(qualified(schema, t.name), qualified("public", t.name)))


def export_rows(conn: psycopg.Connection, table: str, path: Path, form: str) -> None:
    statement = sql.SQL("COPY {} TO STDOUT (FORMAT {})").format(qualified("public", table), sql.SQL(form))
    with conn.cursor().copy(statement) as copy, path.open("wb") as out:
        for block in copy:
            out.write(block)


def copy_rows(conn: psycopg.Connection, target: sql.Composed, path: Path, form: str) -> None:
    with conn.transaction():
        statement = sql.SQL("COPY {} FROM STDIN (FORMAT {})").format(target, sql.SQL(form))
        with conn.cursor().copy(statement) as copy, path.open("rb") as stream:
            while chunk := stream.read(COPY_CHUNK_BYTES):
                copy.write(chunk)


def copy_floor(conn: psycopg.Connection, tables: list[TargetTable], workdir: Path, form: str) -> float:
    """Seconds to COPY every table's final rows, in `form` (csv or binary), into empty tables
    without constraints."""
    schema = f"{FLOOR_SCHEMA}_{form}"
    create_bare_copies(conn, tables, schema)
    seconds = 0.0
    for t in tables:
        path = workdir / f"{t.name}.{form}"
        export_rows(conn, t.name, path, form)
        clock = time.perf_counter()
        copy_rows(conn, qualified(schema, t.name), path, form)
        seconds += time.perf_counter() - clock
        path.unlink()
    return seconds


def add_identity_constraints(conn: psycopg.Connection, t: TargetTable, schema: str) -> None:
    """The primary key, and the identity the loader merges on when it is not the primary key."""
    constraints = []
    if t.primary_key:
        constraints.append(sql.SQL("ADD PRIMARY KEY ({})").format(sql.Identifier(t.primary_key)))
    if t.identity != (t.primary_key,):
        constraints.append(sql.SQL("ADD UNIQUE ({})").format(column_list(t.identity)))
    conn.execute(sql.SQL("ALTER TABLE {} {}").format(qualified(schema, t.name), sql.SQL(", ").join(constraints)))


def upsert_sql(t: TargetTable, schema: str) -> sql.Composed:
    """The current tool's statement: one row, insert or overwrite every other column."""
    others = [c.name for c in t.columns if c.name not in t.identity and c.family != "generated"]
    action = sql.SQL("DO UPDATE SET {}").format(
        sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in others)
    ) if others else sql.SQL("DO NOTHING")
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
        qualified(schema, t.name), column_list(t.column_names), sql.SQL(", ").join([sql.Placeholder()] * len(t.columns)),
        column_list(t.identity), action,
    )


def sample_rows(conn: psycopg.Connection, t: TargetTable, size: int) -> list[tuple]:
    """Up to `size` random final rows of a table, in identity order (as the source would send them)."""
    return conn.execute(sql.SQL("SELECT {cols} FROM (SELECT * FROM {table} ORDER BY random() LIMIT %s) AS s ORDER BY {key}").format(
        cols=column_list(t.column_names), table=qualified("public", t.name), key=column_list(t.identity)), [size]).fetchall()


def settle(conn: psycopg.Connection) -> None:
    """Before the incremental run: drop what the floors, the baseline and the load alone wrote, and
    checkpoint, so that the incremental run's commits do not wait on PostgreSQL flushing the
    benchmark's own writes (millions of rows just before it; the incremental load after its
    transform: 5.8 s at 91b1bc6 without this, 3.2 s at 7b62ad7 with it, one run each)."""
    for schema in (f"{FLOOR_SCHEMA}_csv", f"{FLOOR_SCHEMA}_binary", ROWWISE_SCHEMA):
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(LOAD_ALONE_DATABASE)))
    conn.execute("CHECKPOINT")


def row_by_row(conn: psycopg.Connection, tables: list[TargetTable], rows: dict[str, int], sample: int, seed: int) -> tuple[float, int]:
    """Seconds the row-by-row upserts would take for every row (scaled from samples), rows sampled.

    The current tool calls psycopg2's `executemany`, which is a loop of one `execute` per row (one
    round trip each, parameters bound client-side), in 5,000-row batches, a commit per batch. That
    is written out here with a client-side-binding cursor (psycopg 3's own `executemany` pipelines
    the batch, which the current tool does not do)."""
    create_bare_copies(conn, tables, ROWWISE_SCHEMA)
    with conn.transaction():
        for t in tables:
            add_identity_constraints(conn, t, ROWWISE_SCHEMA)
    conn.execute("SELECT setseed(%s)", [(seed % 1000) / 1000])
    seconds, sampled = 0.0, 0
    for t in tables:
        picked = sample_rows(conn, t, sample)
        if not picked:
            continue
        statement = upsert_sql(t, ROWWISE_SCHEMA)
        cursor = psycopg.ClientCursor(conn)
        clock = time.perf_counter()
        for first in range(0, len(picked), ROWWISE_BATCH):
            with conn.transaction():  # psycopg2's executemany, then commit
                for row in picked[first:first + ROWWISE_BATCH]:
                    cursor.execute(statement, row)
        seconds += (time.perf_counter() - clock) * rows[t.name] / len(picked)
        sampled += len(picked)
    return seconds, sampled


# ---------------------------------------------------------------------- the run

@dataclass
class Figures:
    documents: int
    collections: int
    index_seconds: float
    rows: int
    tables: int
    full: dict[str, float]
    incremental: dict[str, float]  # the median of the incremental runs (by total)
    incremental_totals: list[float]  # every incremental run's total, in run order
    changed: int
    raw: dict[str, float]
    quizzes: dict[str, float]
    stream: dict[str, float]
    load_alone: float
    floor: float
    binary_floor: float
    rowwise: float
    sampled: int
    peak_mb: float
    postgres_version: str


def server_cache(documents: int) -> str:
    """SecantusDB's in-memory cache for a dataset: 1.5 GB per million documents (1 GB held 1M
    documents with their indexes and oplog; 5M overflowed it)."""
    return f"{max(1, math.ceil(1.5 * documents / 1_000_000))}G"


def measure(args: argparse.Namespace, workdir: Path) -> Figures:
    with MongoServer(cache_size=server_cache(args.size)) as mongo, PostgresServer(database="bench") as pg, MongoClient(mongo.url) as client:
        data = generator.generate(size=args.size, seed=args.seed)
        documents = sum(generator.insert(client[DATABASE], data).values())
        del data
        index_seconds = create_timestamp_indexes(client[DATABASE])
        overrides = {
            "mongodb_url": mongo.url, "mongodb_database": DATABASE, "postgres_host": pg.host, "postgres_port": pg.port,
            "postgres_database": pg.database, "postgres_user": pg.user, "postgres_password": pg.password,
            "staging_dir": str(workdir / "staging"), "config_path": str(REPO / "config" / "schemas.yaml"),
        }
        settings_file = workdir / "settings.json"
        settings_file.write_text(json.dumps(overrides))
        tables = build(overrides)[1].ordered()

        raw = run_child("raw", settings_file, args)
        full = run_child("loader", settings_file, args)
        db = client[DATABASE]
        for collection, field in QUIZ_LOOKUP_INDEXES:
            db[collection].create_index(field, name=f"bench_{field}")
        quizzes = run_child("quizzes", settings_file, args)  # needs the loaded users_logbook
        for collection, field in QUIZ_LOOKUP_INDEXES:
            db[collection].drop_index(f"bench_{field}")
        with psycopg.connect(**pg.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(LOAD_ALONE_DATABASE)))
        load_settings_file = workdir / "load-settings.json"
        load_settings_file.write_text(json.dumps({**overrides, "postgres_database": LOAD_ALONE_DATABASE}))
        load_alone = run_child("load", load_settings_file, args)
        with psycopg.connect(**pg.conninfo(), autocommit=True) as conn:
            rows = row_counts(conn, tables)
            floor = copy_floor(conn, tables, workdir, "csv")
            binary_floor = copy_floor(conn, tables, workdir, "binary")
            rowwise, sampled = row_by_row(conn, tables, rows, args.sample, args.seed)
            postgres_version = conn.execute("SHOW server_version").fetchone()[0]
            settle(conn)
        rounds = []  # (changed, stream, incremental run) per round
        for k in range(args.rounds):
            changed = change_documents(client[DATABASE], args.changed, args.seed + k)
            rounds.append((changed, run_child("stream", settings_file, args), run_child("loader", settings_file, args)))
        changed, stream, incremental = sorted(rounds, key=lambda r: r[2].figures["total"])[len(rounds) // 2]
    return Figures(
        documents=documents, collections=int(raw.figures["collections"]), index_seconds=index_seconds,
        rows=sum(rows.values()), tables=len(tables), full=full.figures, incremental=incremental.figures,
        incremental_totals=[r[2].figures["total"] for r in rounds], changed=changed,
        raw=raw.figures, quizzes=quizzes.figures, stream=stream.figures, load_alone=load_alone.figures["seconds"], floor=floor, binary_floor=binary_floor, rowwise=rowwise, sampled=sampled,
        peak_mb=max(full.peak_mb, *(r[2].peak_mb for r in rounds)), postgres_version=postgres_version,
    )


# ---------------------------------------------------------------------- report

def git_revision() -> str:
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "loader", "config")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in loader/ or config/" if dirty else "")


def ram_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def header(f: Figures) -> str:
    return (
        f"Source: MongoDB server (SecantusDB {version('SecantusDB')}, wire protocol), {f.documents:,} documents in "
        f"{f.collections} collections, indexes on creation_date and update_date of every collection "
        f"(created in {f.index_seconds:.1f} s)\n"
        f"Target: PostgreSQL {f.postgres_version}, {f.rows:,} rows in {f.tables} tables after the full run\n"
        f"Machine: {os.cpu_count()} CPUs, {ram_gb():.1f} GB RAM, Python {platform.python_version()}; loader {git_revision()}"
    )


def met(ok: bool) -> str:
    return "[green]yes[/green]" if ok else "[red]no[/red]"


def rate(count: float, seconds: float, unit: str) -> str:
    return f"{count / seconds:,.0f} {unit}/s" if seconds > 0 else "-"


def quiz_reads(f: Figures) -> float:
    """The current tool's extra reads for the moments and details tables, scaled to every candidate."""
    q = f.quizzes
    return q["candidate_seconds"] + (q["seconds"] * q["candidates"] / q["sampled"] if q["sampled"] else 0.0)


def baseline_caption(f: Figures, baseline: float) -> str:
    q, per_quiz = f.quizzes, max(f.quizzes["sampled"], 1)
    return (
        f"Row-by-row baseline {baseline:.1f} s = raw cursor {f.raw['seconds']:.1f} s + per-logbook-quiz reads "
        f"{quiz_reads(f):.1f} s + row-by-row upserts {f.rowwise:.1f} s.\n"
        f"Per-logbook-quiz reads (as the current tool builds moments and details): its candidate query "
        f"{q['candidate_seconds']:.1f} s + {q['candidates']:,} logbook userquizzs x {q['seconds'] / per_quiz * 1000:.1f} ms, "
        f"timed on {q['sampled']:,} of them: {q['mongo'] / per_quiz:.1f} MongoDB round trips and "
        f"{q['postgres_connections'] / per_quiz:.2f} new PostgreSQL connections ({q['postgres_seconds'] / per_quiz * 1000:.1f} ms) "
        f"per quiz; {q['qualified']:,} had answers, {q['moments']:,} went on to the details' round trips.\n"
        f"Row-by-row upserts: INSERT ... ON CONFLICT DO UPDATE executed once per row (what psycopg2's executemany does), "
        f"a commit per {ROWWISE_BATCH:,} rows; {f.sampled:,} rows sampled over {f.tables} tables, scaled per table by "
        f"rows / sampled rows.\n"
        "It favours the baseline: its tables have no foreign keys, and the fields its per-quiz lookups filter on "
        f"({', '.join(f'{c}.{k}' for c, k in QUIZ_LOOKUP_INDEXES)}) are indexed. The per-quiz reads are bound by "
        "the MongoDB server's round-trip latency (here SecantusDB's)."
    )


def main_table(f: Figures) -> Table:
    full, incr = f.full, f.incremental
    baseline = f.raw["seconds"] + quiz_reads(f) + f.rowwise
    extract_ratio, load_ratio = full["extract"] / f.raw["seconds"], f.load_alone / f.floor
    speedup, incr_ratio = baseline / full["total"], incr["total"] / full["total"]
    split = " + ".join(f"{stage} {incr[stage]:.1f} s" for stage in STAGES)
    table = Table(title="Loader speed (GitHub issue \"Speed\")")
    for name in ("measure", "seconds", "rows/s (or docs/s)", "limit/baseline s", "ratio", "target", "met"):
        table.add_column(name, justify="left" if name == "measure" else "right")
    table.add_row(f"extract, full ({f.documents:,} docs)", f"{full['extract']:.2f}", rate(f.documents, full["extract"], "docs"),
                  f"raw cursor {f.raw['seconds']:.2f}", f"extract/raw {extract_ratio:.2f}", f"<= {TARGETS['extract']}",
                  met(extract_ratio <= TARGETS["extract"]))
    table.add_row(f"transform, full ({f.rows:,} rows produced), after the extract (it runs alongside)", f"{full['transform']:.2f}",
                  "", "", "", "", "")
    table.add_row("load, full, after the transform (it runs alongside once the extract has ended)", f"{full['load']:.2f}",
                  "", "", "", "", "")
    table.add_row(f"load alone, into an empty database ({f.rows:,} rows)", f"{f.load_alone:.2f}", rate(f.rows, f.load_alone, "rows"),
                  f"COPY floor {f.floor:.2f}", f"load/floor {load_ratio:.2f}", f"<= {TARGETS['load']}", met(load_ratio <= TARGETS["load"]))
    table.add_row("  binary COPY floor (the loader's format; informative)", f"{f.binary_floor:.2f}", "", "", f"load/binary floor {f.load_alone / f.binary_floor:.2f}",
                  "", "")
    table.add_row("full run (extract + transform + load)", f"{full['total']:.2f}", rate(f.documents, full["total"], "docs"),
                  f"row-by-row {baseline:.1f}", f"speedup {speedup:.1f}", f">= {TARGETS['speedup']}", met(speedup >= TARGETS["speedup"]))
    runs = ", ".join(f"{total:.2f}" for total in f.incremental_totals)
    table.add_row(f"incremental run, {f.changed:,} docs changed ({f.changed / f.documents:.1%}), the median of "
                  f"{len(f.incremental_totals)} (runs of {runs} s): {split}", f"{incr['total']:.2f}",
                  rate(f.changed, incr["total"], "docs"), f"full run {full['total']:.2f}", f"incr/full {incr_ratio:.3f}",
                  f"<= {TARGETS['incremental']}", met(incr_ratio <= TARGETS["incremental"]))
    table.add_row(f"  of which the change stream read (the deletion check; it told {f.stream['told']:.0f} of "
                  f"{f.stream['collections']:.0f} collections, the others are counted)",
                  f"{f.stream['seconds']:.2f}", "", "", f"stream/full {f.stream['seconds'] / full['total']:.3f}", "", "")
    table.add_row("peak memory of the loader process (largest of its runs)", f"{f.peak_mb:,.0f} MB", "", "", "",
                  f"< {TARGETS['memory_mb']} MB (5M docs)", met(f.peak_mb < TARGETS["memory_mb"]))
    table.caption = (
        baseline_caption(f, baseline) + "\n"
        "COPY floor: the final rows into empty tables without keys or indexes (CSV export not timed). "
        "Memory target applies at 5M documents."
    )
    table.caption_justify = "left"
    return table


def stage_table(f: Figures) -> Table:
    table = Table(title="Stage seconds (the transform: after the extract ended; the load: after the transform ended)")
    for name in ("run", *STAGES, "total"):
        table.add_column(name, justify="left" if name == "run" else "right")
    for name, times in (("full", f.full), ("incremental", f.incremental)):
        table.add_row(name, *(f"{times[stage]:.2f}" for stage in (*STAGES, "total")))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="generated documents (about)")
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of the documents changed for each incremental run")
    parser.add_argument("--rounds", type=int, default=3, help="incremental runs, each after its own change (the median is reported)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sample", type=int, default=20_000, help="rows per table written row by row for the baseline")
    parser.add_argument("--quizzes", type=int, default=300, help="logbook userquizzs whose per-quiz reads are timed for the baseline")
    parser.add_argument("--child", choices=sorted(CHILD_RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    clock = time.perf_counter()
    # Stopped by a signal, the servers and the scratch folder still go (pg_ctl daemonises PostgreSQL).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"bench stopped by signal {signal.SIGTERM}"))
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as workdir:
        figures = measure(args, Path(workdir))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(header(figures))
    console.print(main_table(figures))
    console.print(stage_table(figures))
    console.print(f"Benchmark wall time {time.perf_counter() - clock:.0f} s (setup included).")


if __name__ == "__main__":
    main()
