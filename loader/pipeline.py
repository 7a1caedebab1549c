"""The three stages as the CLI and the demo run them: progress bars, then a summary table."""

from __future__ import annotations

from loader import report
from loader.config import Config, Table
from loader.extract import mongo
from loader.load import writer
from loader.settings import Settings
from loader.staging import Snapshot, Staging
from loader.transform import runner


def extract(settings: Settings, config: Config, tables: list[Table], progress: bool = True, summary: bool = True) -> list[Snapshot]:
    staging = Staging(settings.staging_dir)
    with report.progress_bars("docs") as bars:
        snapshots = mongo.extract(settings, staging, config.collections(tables), report.Bars(bars) if progress else None)
    if summary:
        report.console.print(report.extract_summary(snapshots))
    return snapshots


def transform(settings: Settings, config: Config, tables: list[Table], summary: bool = True) -> list[runner.TableResult]:
    results = runner.transform(settings, config, Staging(settings.staging_dir), tables)
    if summary:
        report.console.print(report.transform_summary(results))
    return results


def load(settings: Settings, config: Config, tables: list[Table], progress: bool = True, summary: bool = True) -> list[writer.LoadResult]:
    staging = Staging(settings.staging_dir)
    with report.progress_bars("rows") as bars:
        results = writer.load(settings, config, staging, tables, report.Bars(bars) if progress else None)
    if summary:
        report.console.print(report.load_summary(results, staging.read_transform_report()["tables"]))
    return results


def run(settings: Settings, config: Config, tables: list[Table], progress: bool = True) -> list[writer.LoadResult]:
    """Extract, transform and load; both servers are checked first so that neither fails late."""
    mongo.connect(settings).close()
    writer.connect(settings).close()
    extract(settings, config, tables, progress=progress, summary=False)
    transform(settings, config, tables, summary=False)
    return load(settings, config, tables, progress=progress)
