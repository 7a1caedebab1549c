"""`loader`: MongoDB (SmartDiet) -> Parquet staging -> DuckDB transforms -> PostgreSQL.

Every command reads its settings from the environment and `.env` (MONGODB_URL, POSTGRES_HOST,
...); flags override them. Failures end with one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from loader import pipeline, report
from loader.config import Config, ConfigError, Table, load_config
from loader.demo.servers import ServerError
from loader.extract.mongo import SourceError
from loader.load.schema import SchemaError
from loader.load.writer import DestinationError
from loader.settings import Settings, load_settings
from loader.staging import Staging, StagingError
from loader.transform.typing import TransformError
from loader.tunnel import TunnelError

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXPECTED_ERRORS = (ConfigError, SourceError, DestinationError, StagingError, TransformError, ServerError, TunnelError, SchemaError)

# ---------------------------------------------------------------- shared options
ConfigPath = Annotated[Optional[Path], typer.Option("--config", "-c", help="Mapping file [env LOADER_CONFIG; default config/schemas.yaml].")]
StagingDir = Annotated[Optional[Path], typer.Option("--staging", help="Staging folder [env LOADER_STAGING_DIR; default staging].")]
EnvFile = Annotated[Optional[Path], typer.Option("--env-file", help="Settings file read after the environment [default .env].")]
Tables = Annotated[Optional[list[str]], typer.Option("--table", "-t", help="Only this table (repeatable).")]
MongoUrl = Annotated[Optional[str], typer.Option("--mongodb-url", help="[env MONGODB_URL]", show_default=False)]
MongoDatabase = Annotated[Optional[str], typer.Option("--mongodb-database", help="[env MONGODB_DATABASE]")]
PgHost = Annotated[Optional[str], typer.Option("--postgres-host", help="[env POSTGRES_HOST]")]
PgPort = Annotated[Optional[int], typer.Option("--postgres-port", help="[env POSTGRES_PORT]")]
PgDatabase = Annotated[Optional[str], typer.Option("--postgres-database", help="[env POSTGRES_DATABASE]")]
PgUser = Annotated[Optional[str], typer.Option("--postgres-user", help="[env POSTGRES_USER]")]
PgPassword = Annotated[Optional[str], typer.Option("--postgres-password", help="[env POSTGRES_PASSWORD]; prefer the environment.", show_default=False)]
PgSchema = Annotated[Optional[str], typer.Option("--schema", help="Target PostgreSQL schema [env POSTGRES_SCHEMA; default public].")]
Timezone = Annotated[Optional[str], typer.Option("--timezone", help="Zone of DATE columns [env SOURCE_TIMEZONE; default Europe/Paris].")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Documents per read batch [env BATCH_SIZE; default 5000].")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress bars.")]
ForceReimport = Annotated[bool, typer.Option(
    "--force-reimport", help="This run only: re-import the selected tables whole, as `force_reimport: true` would.")]
FromDump = Annotated[Optional[Path], typer.Option(
    "--from-dump", help="Read this mongodump instead of MongoDB (a dump folder, a .tar.gz of one, or a `mongodump --archive` "
                        "file, gzipped or not; the database MONGODB_DATABASE): every collection staged whole.")]
Truncate = Annotated[bool, typer.Option(
    "--truncate", help="With --force-reimport: TRUNCATE ... CASCADE each selected table first (as `truncate_before_import`).")]


def fails_cleanly(command):
    """Expected failures end with `error: <one line>` on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            _fail(str(exc))
        except ValidationError as exc:
            first = exc.errors()[0]
            _fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg'].removeprefix('Value error, ')}")
        except Exception as exc:  # anything unforeseen still ends in one line (LOADER_DEBUG=1: traceback)
            if os.environ.get("LOADER_DEBUG"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (LOADER_DEBUG=1 shows the traceback)")

    return wrapper


def _fail(message: str) -> None:
    report.errors.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _settings(env_file: Path | None = None, **flags: object) -> Settings:
    # Flags are named like the settings, except these shorter ones.
    renamed = {"config": "config_path", "staging": "staging_dir", "schema": "postgres_schema", "timezone": "source_timezone"}
    return load_settings(env_file, **{renamed.get(k, k): v for k, v in flags.items()})


def _prepare(tables: list[str] | None, env_file: Path | None, **flags: object) -> tuple[Settings, Config, list[Table]]:
    settings = _settings(env_file, **flags)
    config = load_config(settings.config_path)
    return settings, config, config.ordered(tables)


def _forced(tables: list[Table], force: bool, truncate: bool) -> tuple[frozenset[str], frozenset[str]]:
    if truncate and not force:
        _fail("--truncate only applies together with --force-reimport")
    forced = pipeline.forced_tables(tables, force)
    return forced, forced if truncate else frozenset()


# ---------------------------------------------------------------- commands
@app.command()
@fails_cleanly
def extract(
    table: Tables = None, config: ConfigPath = None, staging: StagingDir = None, env_file: EnvFile = None,
    mongodb_url: MongoUrl = None, mongodb_database: MongoDatabase = None, batch_size: BatchSize = None,
    no_progress: NoProgress = False, force_reimport: ForceReimport = False, from_dump: FromDump = None,
) -> None:
    """Stage what changed in the collections the mapping needs (the first time, forced, or from a
    dump: all of it) as snapshots in staging/snapshots, recorded in staging/manifest.json."""
    settings, cfg, tables = _prepare(table, env_file, config=config, staging=staging, mongodb_url=mongodb_url,
                                     mongodb_database=mongodb_database, batch_size=batch_size)
    pipeline.extract(settings, cfg, tables, progress=not no_progress, force=_forced(tables, force_reimport, False)[0],
                     dump=from_dump)


@app.command()
@fails_cleanly
def transform(
    table: Tables = None, config: ConfigPath = None, staging: StagingDir = None, env_file: EnvFile = None,
    timezone: Timezone = None, force_reimport: ForceReimport = False,
) -> None:
    """Derive the target tables from the staged snapshots with DuckDB, re-deriving only what the
    changed documents affect (staging/derived, staging/tables, staging/issues)."""
    settings, cfg, tables = _prepare(table, env_file, config=config, staging=staging, timezone=timezone)
    pipeline.transform(settings, cfg, tables, force=_forced(tables, force_reimport, False)[0])


@app.command()
@fails_cleanly
def load(
    table: Tables = None, config: ConfigPath = None, staging: StagingDir = None, env_file: EnvFile = None,
    postgres_host: PgHost = None, postgres_port: PgPort = None, postgres_database: PgDatabase = None,
    postgres_user: PgUser = None, postgres_password: PgPassword = None, schema: PgSchema = None,
    no_progress: NoProgress = False, force_reimport: ForceReimport = False, truncate: Truncate = False,
) -> None:
    """Create missing tables, then write into PostgreSQL what differs from the staged tables, parents first."""
    settings, cfg, tables = _prepare(table, env_file, config=config, staging=staging, postgres_host=postgres_host,
                                     postgres_port=postgres_port, postgres_database=postgres_database,
                                     postgres_user=postgres_user, postgres_password=postgres_password, schema=schema)
    force, truncated = _forced(tables, force_reimport, truncate)
    pipeline.load(settings, cfg, tables, progress=not no_progress, force=force, truncate=truncated)


@app.command()
@fails_cleanly
def run(
    table: Tables = None, config: ConfigPath = None, staging: StagingDir = None, env_file: EnvFile = None,
    mongodb_url: MongoUrl = None, mongodb_database: MongoDatabase = None,
    postgres_host: PgHost = None, postgres_port: PgPort = None, postgres_database: PgDatabase = None,
    postgres_user: PgUser = None, postgres_password: PgPassword = None, schema: PgSchema = None,
    timezone: Timezone = None, batch_size: BatchSize = None, no_progress: NoProgress = False,
    force_reimport: ForceReimport = False, truncate: Truncate = False, from_dump: FromDump = None,
) -> None:
    """extract, transform and load in one go (incremental after the first run), with a summary at the end."""
    settings, cfg, tables = _prepare(
        table, env_file, config=config, staging=staging, mongodb_url=mongodb_url, mongodb_database=mongodb_database,
        postgres_host=postgres_host, postgres_port=postgres_port, postgres_database=postgres_database,
        postgres_user=postgres_user, postgres_password=postgres_password, schema=schema, timezone=timezone,
        batch_size=batch_size,
    )
    force, truncated = _forced(tables, force_reimport, truncate)
    pipeline.run(settings, cfg, tables, progress=not no_progress, force=force, truncate=truncated, dump=from_dump)


@app.command()
@fails_cleanly
def rebuild(
    table: Tables = None, config: ConfigPath = None, staging: StagingDir = None, env_file: EnvFile = None,
    postgres_host: PgHost = None, postgres_port: PgPort = None, postgres_database: PgDatabase = None,
    postgres_user: PgUser = None, postgres_password: PgPassword = None, schema: PgSchema = None,
    timezone: Timezone = None, no_progress: NoProgress = False, truncate: Truncate = False,
) -> None:
    """Recreate the tables (all, or --table) from the staged snapshots, without MongoDB: re-derive
    them whole and load them in full (rows no longer staged are deleted)."""
    settings, cfg, tables = _prepare(
        table, env_file, config=config, staging=staging, postgres_host=postgres_host, postgres_port=postgres_port,
        postgres_database=postgres_database, postgres_user=postgres_user, postgres_password=postgres_password,
        schema=schema, timezone=timezone,
    )
    pipeline.rebuild(settings, cfg, tables, progress=not no_progress, truncate=_forced(tables, True, truncate)[1])


@app.command()
@fails_cleanly
def snapshots(staging: StagingDir = None, env_file: EnvFile = None) -> None:
    """List the staged snapshots: kind, documents, deletions, size, watermark, and which make the current view."""
    settings = _settings(env_file, staging=staging)
    report.console.print(report.snapshots_listing(Staging(settings.staging_dir)))


@app.command()
@fails_cleanly
def plan(
    table: Tables = None, config: ConfigPath = None, staging: StagingDir = None, env_file: EnvFile = None,
    postgres_host: PgHost = None, postgres_port: PgPort = None, postgres_database: PgDatabase = None,
    postgres_user: PgUser = None, postgres_password: PgPassword = None, schema: PgSchema = None,
    timezone: Timezone = None, force_reimport: ForceReimport = False, from_dump: FromDump = None,
) -> None:
    """Dry run: what the next `loader run` would extract, re-derive and load (nothing is written)."""
    settings, cfg, tables = _prepare(
        table, env_file, config=config, staging=staging, postgres_host=postgres_host, postgres_port=postgres_port,
        postgres_database=postgres_database, postgres_user=postgres_user, postgres_password=postgres_password,
        schema=schema, timezone=timezone,
    )
    pipeline.show_plan(settings, cfg, tables, force=_forced(tables, force_reimport, False)[0], dump=from_dump)


@app.command()
@fails_cleanly
def tables(config: ConfigPath = None, env_file: EnvFile = None) -> None:
    """Check the mapping file and print the tables in load order."""
    settings, cfg, ordered = _prepare(None, env_file, config=config)
    listing = report.new_table(f"{len(ordered)} tables in load order ({settings.config_path})",
                            "table", "collection", "strategy", "sync", "parents")
    for t in ordered:
        parents = ", ".join(sorted({c.foreign_key.table for c in t.foreign_keys}))
        listing.add_row(t.name, t.collection, t.strategy.name, t.strategy.kind.replace("_", "-").upper(), parents)
    report.console.print(listing)


@app.command("report")
@fails_cleanly
def issues_report(
    table: Annotated[Optional[list[str]], typer.Option("--table", "-t", help="Only this table (repeatable; `(extract)`: the extract's rejects).")] = None,
    reason: Annotated[Optional[str], typer.Option("--reason", help="Examples of the reasons starting with this only.")] = None,
    examples: Annotated[int, typer.Option("--examples", "-n", help="Examples per table and reason [default: 0, or 5 with --reason].")] = 0,
    staging: StagingDir = None, env_file: EnvFile = None,
) -> None:
    """Rejected rows, skipped records and warnings recorded in the staging: counts per table and
    reason, and examples (source _id, column, offending value)."""
    settings = _settings(env_file, staging=staging)
    pipeline.show_issues(settings, table, reason, examples or (5 if reason else 0))


@app.command()
@fails_cleanly
def verify(
    table: Tables = None, config: ConfigPath = None, staging: StagingDir = None, env_file: EnvFile = None,
    staged: Annotated[bool, typer.Option("--staged", help="Compare with the staged snapshots instead of reading MongoDB.")] = False,
    examples: Annotated[int, typer.Option("--examples", "-n", help="Keys shown per table and kind of difference.")] = 5,
    mongodb_url: MongoUrl = None, mongodb_database: MongoDatabase = None,
    postgres_host: PgHost = None, postgres_port: PgPort = None, postgres_database: PgDatabase = None,
    postgres_user: PgUser = None, postgres_password: PgPassword = None, schema: PgSchema = None, timezone: Timezone = None,
    no_progress: NoProgress = False,
) -> None:
    """Reconcile PostgreSQL with MongoDB (or the staged snapshots): per table the expected and
    actual row counts, missing, extra and changed rows by key, checksums, and whether
    loader_rejects holds the source's rejects; exit code 1 on any difference the rejects do not explain."""
    settings, cfg, tables = _prepare(
        table, env_file, config=config, staging=staging, mongodb_url=mongodb_url, mongodb_database=mongodb_database,
        postgres_host=postgres_host, postgres_port=postgres_port, postgres_database=postgres_database,
        postgres_user=postgres_user, postgres_password=postgres_password, schema=schema, timezone=timezone,
    )
    if not pipeline.reconcile(settings, cfg, tables, staged=staged, examples=examples, progress=not no_progress):
        raise typer.Exit(1)


schema_app = typer.Typer(help="Compare the PostgreSQL tables with the config, and apply additive changes.",
                         no_args_is_help=True)
app.add_typer(schema_app, name="schema")


@schema_app.command("diff")
@fails_cleanly
def schema_diff(
    table: Tables = None, config: ConfigPath = None, env_file: EnvFile = None,
    postgres_host: PgHost = None, postgres_port: PgPort = None, postgres_database: PgDatabase = None,
    postgres_user: PgUser = None, postgres_password: PgPassword = None, schema: PgSchema = None,
) -> None:
    """List how the tables differ from the config (columns, types, nullability, keys, foreign
    keys) with the SQL of each fix; exit code 1 when they differ."""
    settings, cfg, tables = _prepare(table, env_file, config=config, postgres_host=postgres_host, postgres_port=postgres_port,
                                     postgres_database=postgres_database, postgres_user=postgres_user,
                                     postgres_password=postgres_password, schema=schema)
    if pipeline.schema_differences(settings, cfg, tables):
        raise typer.Exit(1)


@schema_app.command("apply")
@fails_cleanly
def schema_apply(
    table: Tables = None, config: ConfigPath = None, env_file: EnvFile = None,
    postgres_host: PgHost = None, postgres_port: PgPort = None, postgres_database: PgDatabase = None,
    postgres_user: PgUser = None, postgres_password: PgPassword = None, schema: PgSchema = None,
) -> None:
    """Apply the additive differences (missing tables, columns, keys) in one transaction and print
    the SQL of the others (type, nullability, extra columns), left to you; exit code 1 if any."""
    settings, cfg, tables = _prepare(table, env_file, config=config, postgres_host=postgres_host, postgres_port=postgres_port,
                                     postgres_database=postgres_database, postgres_user=postgres_user,
                                     postgres_password=postgres_password, schema=schema)
    if pipeline.schema_differences(settings, cfg, tables, apply=True):
        raise typer.Exit(1)


@app.command()
@fails_cleanly
def demo(
    size: Annotated[int, typer.Option(help="About how many source documents to generate.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed of the generator.")] = 7,
    staging: StagingDir = None,
    keep_running: Annotated[Optional[bool], typer.Option(
        "--keep-running/--no-keep-running",
        help="Keep the servers up until Ctrl-C [default: when run in a terminal].")] = None,
    timezone: Timezone = None,
) -> None:
    """Generate a SmartDiet-shaped dataset in an embedded MongoDB, load it into a throwaway PostgreSQL."""
    from loader.demo.run import run_demo  # the demo needs the optional secantusdb package

    run_demo(size=size, seed=seed, staging=staging or Path("staging"), timezone=timezone,
             keep_running=sys.stdin.isatty() if keep_running is None else keep_running)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
