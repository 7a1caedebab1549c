"""`loader demo`: the whole pipeline on a generated SmartDiet dataset, with embedded servers.

An in-process SecantusDB (MongoDB wire protocol) receives the generated documents, a throwaway
PostgreSQL cluster receives the tables; the staging folder stays for inspection afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path

from pymongo import MongoClient

from loader import pipeline, report
from loader.config import load_config
from loader.demo import generator
from loader.demo.servers import MongoServer, PostgresServer
from loader.settings import load_settings

DEMO_DATABASE = "smartdiet"


def run_demo(size: int, seed: int, staging: Path, timezone: str | None, keep_running: bool) -> None:
    say = report.console.print
    with MongoServer() as mongo, PostgresServer(database=DEMO_DATABASE) as pg:
        say(f"Generating about {size:,} SmartDiet documents (seed {seed}) into an embedded MongoDB ...")
        data = generator.generate(size=size, seed=seed)
        with MongoClient(mongo.url) as client:
            generator.insert(client[DEMO_DATABASE], data)
        say(f"Throwaway PostgreSQL on {pg.host}:{pg.port}; running extract -> transform -> load.")
        settings = load_settings(
            mongodb_url=mongo.url,
            mongodb_database=DEMO_DATABASE,
            postgres_host=pg.host,
            postgres_port=pg.port,
            postgres_database=pg.database,
            postgres_user=pg.user,
            postgres_password=pg.password,
            staging_dir=staging,
            source_timezone=timezone,
        )
        config = load_config(settings.config_path)
        pipeline.run(settings, config, config.ordered())
        _print_next_steps(pg, staging, keep_running)
        if keep_running:
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                say("Stopping the servers.")


def _print_next_steps(pg: PostgresServer, staging: Path, keep_running: bool) -> None:
    say = report.console.print
    say(f"\nStaged data: {staging}/ (snapshots, tables, issues as Parquet). For example:")
    say(f"  .venv/bin/python -c \"import duckdb; duckdb.sql(\\\"FROM '{staging}/tables/users.parquet' LIMIT 5\\\").show()\"")
    if keep_running:
        say("PostgreSQL stays up until you press Ctrl-C. Connect with:")
        say(f"  psql \"host={pg.host} port={pg.port} dbname={pg.database} user={pg.user}\"")
    else:
        say("The throwaway PostgreSQL is stopped now (use --keep-running to keep it up and connect with psql).")
