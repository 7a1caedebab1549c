"""Incremental run vs full run on a generated SmartDiet dataset (MAPPING.md section 5).

    .venv/bin/python bench/incremental.py [--size 100000] [--changed 0.01] [--seed 7]

Loads the dataset with a full run, then runs once without change, then changes a fraction of
the documents of every collection (a field and update_date) and runs again. Prints seconds per
stage and each run's total as a ratio to the full run measured in the same process (the machine
is shared and noisy: compare ratios, not seconds).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from pymongo import MongoClient
from rich.console import Console
from rich.table import Table

from loader import pipeline
from loader.config import load_config
from loader.demo import generator
from loader.demo.servers import MongoServer, PostgresServer
from loader.settings import load_settings

DATABASE = "smartdiet"


def timed_run(settings, config) -> dict[str, float]:
    tables = config.ordered()
    times = {}
    for stage, call in (
        ("extract", lambda: pipeline.extract(settings, config, tables, progress=False, summary=False)),
        ("transform", lambda: pipeline.transform(settings, config, tables, summary=False)),
        ("load", lambda: pipeline.load(settings, config, tables, progress=False, summary=False)),
    ):
        clock = time.perf_counter()
        call()
        times[stage] = time.perf_counter() - clock
    times["total"] = sum(times.values())
    return times


def change_documents(db, fraction: float, seed: int) -> int:
    """Bump update_date (and a marker field) of `fraction` of the documents of each collection."""
    rng = random.Random(seed)
    changed = 0
    for name in db.list_collection_names():
        ids = [d["_id"] for d in db[name].find({}, {"_id": 1})]
        latest = max((d["update_date"] for d in db[name].find({}, {"update_date": 1}) if d.get("update_date")), default=None)
        if latest is None:
            continue
        picked = rng.sample(ids, max(1, round(len(ids) * fraction))) if ids else []
        db[name].update_many({"_id": {"$in": picked}}, {"$set": {"update_date": latest + timedelta(minutes=1), "bench_marker": 1}})
        changed += len(picked)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    console = Console()
    with MongoServer() as mongo, PostgresServer(database="bench") as pg, tempfile.TemporaryDirectory() as staging:
        data = generator.generate(size=args.size, seed=args.seed)
        documents = sum(map(len, data.values()))
        with MongoClient(mongo.url) as client:
            generator.insert(client[DATABASE], data)
            settings = load_settings(
                None, mongodb_url=mongo.url, mongodb_database=DATABASE, postgres_host=pg.host, postgres_port=pg.port,
                postgres_database=pg.database, postgres_user=pg.user, postgres_password=pg.password,
                staging_dir=Path(staging),
            )
            config = load_config(settings.config_path)
            runs = {"full (first run)": timed_run(settings, config)}
            runs["no change"] = timed_run(settings, config)
            changed = change_documents(client[DATABASE], args.changed, args.seed)
            runs[f"{changed:,} documents changed ({changed / documents:.1%})"] = timed_run(settings, config)
    full = runs["full (first run)"]["total"]
    table = Table(title=f"Incremental sync, {documents:,} source documents (SecantusDB -> PostgreSQL 15)")
    for column in ("run", "extract s", "transform s", "load s", "total s", "ratio to full"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, t in runs.items():
        table.add_row(name, f"{t['extract']:.2f}", f"{t['transform']:.2f}", f"{t['load']:.2f}", f"{t['total']:.2f}", f"{t['total'] / full:.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
