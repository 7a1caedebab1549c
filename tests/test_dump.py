"""`loader extract --from-dump` and `loader run --from-dump`: a mongodump is staged exactly as the
same data read from the server, in each of its forms (a dump folder, gzipped or not, given as its
root or as its database folder; a .tar.gz of one; an `--archive` file, gzipped or not).

No mongodump binary is to be had here (none on PyPI or npm runs offline), so the dumps are written
as mongodump writes them: the server's raw BSON documents (`find_raw_batches`) concatenated into
`<database>/<collection>.bson`, and the archive format of mongo-tools' common/archive package.
The loader reading a dump gets an unreachable MONGODB_URL: it must not need the server.
"""

from __future__ import annotations

import gzip
import re
import shutil
import tarfile
import threading
import time
from pathlib import Path

import bson
import pytest
from pymongo import MongoClient

from conftest import SOURCE_DATABASE, connect, create_database, run_loader
from loader import duck, pipeline
from loader.config import load_config
from loader.extract import dump, mongo
from loader.load import writer
from loader.settings import Settings
from loader.staging import DOCUMENT_COLUMNS, FULL, Staging
from loader.transform import runner
from test_incremental import Target, differences, table_contents
from test_rebuild import NO_MONGODB

DUMP_ENV = {**NO_MONGODB, "MONGODB_DATABASE": SOURCE_DATABASE}
BLOCK_DOCUMENTS = 40  # documents per archive block: the large collections come in many interleaved blocks


# --------------------------------------------------------------------------- writing dumps as mongodump does

@pytest.fixture(scope="module")
def raw_collections(source) -> dict[str, list[bytes]]:
    """Every collection of the source as mongodump reads it: the server's raw BSON documents."""
    with MongoClient(source["MONGODB_URL"]) as client:
        db = client[source["MONGODB_DATABASE"]]
        return {
            name: [bytes(d.raw) for batch in db[name].find_raw_batches() for d in bson.decode_all(batch, mongo.RAW)]
            for name in db.list_collection_names()
        }


def write_folder(root: Path, collections: dict[str, list[bytes]], gzipped: bool = False) -> Path:
    """`mongodump --out root [--gzip]`: root/<database>/<collection>.bson[.gz] and its .metadata.json."""
    folder = root / SOURCE_DATABASE
    folder.mkdir(parents=True)
    for name, documents in collections.items():
        with (gzip.open if gzipped else open)(folder / f"{name}.bson{'.gz' if gzipped else ''}", "wb") as stream:
            stream.write(b"".join(documents))
        (folder / f"{name}.metadata.json").write_text('{"indexes": [], "collectionName": "%s"}' % name)
    return root


def archive_blocks(collections: dict[str, list[bytes]]) -> list[bytes]:
    """`mongodump --archive` (mongo-tools common/archive: prelude.go, multiplexer.go), block by block:
    the magic number and the prelude (archive header, one metadata document per collection), then
    each collection's documents in blocks of BLOCK_DOCUMENTS taken in turn from every collection,
    as a parallel dump interleaves them, each collection closed by its EOF block (its CRC is left
    0: the loader does not check it)."""
    def block(header: dict, documents: list[bytes] = ()) -> bytes:
        return bson.encode(header) + b"".join(documents) + dump.TERMINATOR

    prelude = dump.ARCHIVE_MAGIC + block(
        {"concurrent_collections": 4, "version": "0.1", "server_version": "7.0.12", "tool_version": "100.9.4"},
        [bson.encode({"db": SOURCE_DATABASE, "collection": name, "metadata": "{}", "size": 0, "type": "collection"})
         for name in collections])
    pending = {name: [documents[i:i + BLOCK_DOCUMENTS] for i in range(0, len(documents), BLOCK_DOCUMENTS)]
               for name, documents in collections.items()}
    blocks = [prelude]
    while pending:
        for name in list(pending):
            namespace = {"db": SOURCE_DATABASE, "collection": name}
            if pending[name]:
                blocks.append(block(namespace, pending[name].pop(0)))
            else:
                blocks.append(block({**namespace, "EOF": True, "CRC": bson.Int64(0)}))
                del pending[name]
    return blocks


@pytest.fixture(scope="module")
def dumps(raw_collections, tmp_path_factory) -> dict[str, Path]:
    """The source's dump in each form the loader reads."""
    assert sum(len(d) > BLOCK_DOCUMENTS for d in raw_collections.values()) >= 2, "no two collections interleave"
    here = tmp_path_factory.mktemp("dumps")
    root = write_folder(here / "dump", raw_collections)
    with tarfile.open(here / "dump.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="dump")  # dump/smartdiet/users.bson ...
    archive = b"".join(archive_blocks(raw_collections))
    (here / "smartdiet.archive").write_bytes(archive)
    (here / "smartdiet.dump").write_bytes(gzip.compress(archive))  # no .gz name: told by its magic bytes
    return {
        "folder": root,
        "gzipped database folder": write_folder(here / "gzipped", raw_collections, gzipped=True) / SOURCE_DATABASE,
        "tar.gz": here / "dump.tar.gz",
        "archive": here / "smartdiet.archive",
        "gzipped archive": here / "smartdiet.dump",
    }


# --------------------------------------------------------------------------- staged data

def staged(staging_dir: Path) -> dict[str, list[tuple]]:
    """The current view of every staged collection, ordered by _id."""
    staging, con = Staging(staging_dir), duck.connect()
    return {name: con.execute(f"SELECT {DOCUMENT_COLUMNS} FROM ({staging.view_sql(name)}) ORDER BY _id").fetchall()
            for name in staging.collections()}


def snapshot_kinds(staging_dir: Path) -> dict[str, list[tuple[str, bool]]]:
    """Per collection, the kind of each snapshot and whether the source lacked the collection."""
    staging = Staging(staging_dir)
    return {name: [(s.kind, s.source_missing) for s in staging.snapshots(name)] for name in staging.collections()}


@pytest.fixture(scope="module")
def from_server(source, tmp_path_factory) -> Path:
    staging = tmp_path_factory.mktemp("from_server")
    result = run_loader("extract", "--staging", str(staging), "--no-progress", env=source)
    assert result.returncode == 0, result.stderr
    return staging


@pytest.mark.parametrize("form", ["folder", "gzipped database folder", "tar.gz", "archive", "gzipped archive"])
def test_a_dump_is_staged_as_the_server_is(form, dumps, from_server, raw_collections, tmp_path):
    staging = tmp_path / "staging"
    result = run_loader("extract", "--staging", str(staging), "--no-progress", "--from-dump", str(dumps[form]), env=DUMP_ENV)
    assert result.returncode == 0, result.stderr
    expected, actual = staged(from_server), staged(staging)
    assert sum(map(len, actual.values())) == sum(map(len, raw_collections.values())) > 0
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] == expected[name], f"{name} staged from the {form} differs from the server's"
    assert snapshot_kinds(staging) == snapshot_kinds(from_server)  # one full snapshot each
    assert not list((staging / "tmp").glob("dump-*")), "the scratch folder was left behind"


def test_run_from_a_dump_loads_what_a_run_from_the_server_loads(source, dumps, postgres, target, tmp_path):
    from_dump = Target({**DUMP_ENV, **target}, tmp_path / "from_dump")
    from_server = Target({**source, **create_database(postgres)}, tmp_path / "from_server")
    result = run_loader("run", "--staging", str(from_dump.staging), "--no-progress", "--from-dump",
                        str(dumps["gzipped archive"]), env=from_dump.env)
    assert result.returncode == 0, result.stderr
    from_server.loader("run")
    expected = table_contents(from_server)
    assert sum(sum(rows.values()) for rows in expected.values()) > 0
    problems = differences(table_contents(from_dump), expected)
    assert not problems, "loaded from the dump (+) and from the server (-) differ:\n" + "\n".join(problems)
    # What the next run from a dump would do: every collection staged whole, every table re-derived.
    plan = run_loader("plan", "--staging", str(from_dump.staging), "--from-dump", str(dumps["gzipped archive"]),
                      env=from_dump.env)
    assert plan.returncode == 0, plan.stderr
    assert "full (from the dump" in plan.stdout and "delta since" not in plan.stdout
    assert "full (new full snapshot of" in plan.stdout and "incremental" not in plan.stdout


def run_in_process(run: Target, monkeypatch, dump_folder: Path) -> None:
    """`loader run --from-dump` in this process, so that the test's patches apply, with the
    settings of `run` (set as the environment until the test undoes its patches)."""
    for name, value in run.env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None, staging_dir=run.staging)
    config = load_config(settings.config_path)
    pipeline.run(settings, config, config.ordered(), progress=False, summary=False, dump=dump_folder)


def wait_until(condition, seconds: float = 60) -> None:
    """Poll `condition` until it holds or `seconds` have passed (the test's own assertions then fail)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_an_extract_failing_alongside_the_transform_stops_the_run_before_the_load(source, dumps, postgres, target, tmp_path,
                                                                                  monkeypatch):
    """`loader run` transforms a table once its collections are staged, while the extract goes on:
    a collection that fails late (days, the last extracted; here its extract waits until users is
    derived) ends the run with the extract's error, after the tables transformed alongside, and
    before anything is loaded; the next run completes."""
    broken = shutil.copytree(dumps["folder"], tmp_path / "dump")
    days = broken / SOURCE_DATABASE / "days.bson"
    intact = days.read_bytes()
    days.write_bytes(intact[:-7])
    run = Target({**DUMP_ENV, **target}, tmp_path / "staging")
    stage = mongo.stage_collection

    def stage_days_once_users_is_derived(con, staging, source, *args, **kwargs):
        if source.name == "days":
            wait_until(lambda: "users" in staging.transform_state())
        return stage(con, staging, source, *args, **kwargs)

    monkeypatch.setattr(mongo, "stage_collection", stage_days_once_users_is_derived)
    with pytest.raises(dump.DumpError, match=re.escape(f"{days}: truncated or corrupt BSON")):
        run_in_process(run, monkeypatch, broken)
    monkeypatch.undo()
    transformed = Staging(run.staging).transform_state()
    assert "users" in transformed and "days" not in transformed, sorted(transformed)
    assert run.query("SELECT to_regclass('public.users') IS NULL, to_regclass('public.loader_sync_state') IS NULL") == [(True, True)]
    result = run_loader("run", "--staging", str(run.staging), "--no-progress", "--from-dump", str(broken), env=run.env)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and f"{days}: truncated or corrupt BSON" in result.stderr, result.stderr

    days.write_bytes(intact)
    result = run_loader("run", "--staging", str(run.staging), "--no-progress", "--from-dump", str(broken), env=run.env)
    assert result.returncode == 0, result.stderr
    fresh = Target({**DUMP_ENV, **create_database(postgres)}, tmp_path / "fresh")
    result = run_loader("run", "--staging", str(fresh.staging), "--no-progress", "--from-dump", str(broken), env=fresh.env)
    assert result.returncode == 0, result.stderr
    expected = table_contents(fresh)
    assert sum(expected["days"].values()) > 0
    problems = differences(table_contents(run), expected)
    assert not problems, "the run after the failed one (+) and a first run (-) differ:\n" + "\n".join(problems)


def test_loader_run_loads_a_table_while_the_transform_goes_on_and_a_transform_failure_stops_it(
        dumps, postgres, target, tmp_path, monkeypatch):
    """`loader run` loads a missing table once it is derived and the tables it references are
    loaded, while the transform goes on (the tables referencing it may still be deriving): here
    the transform of days_logbooks_links waits until PostgreSQL holds `users_quizzs`, which it
    references, then fails. The run raises that failure; users_quizzs stays loaded and
    days_logbooks_links is not written. The next run completes: it equals a first run."""
    run = Target({**DUMP_ENV, **target}, tmp_path / "staging")
    failing, loaded_first = "days_logbooks_links", "users_quizzs"
    derive = runner._Run.group

    def committed(table: str) -> bool:
        return run.query("SELECT to_regclass('public.loader_sync_state') IS NOT NULL")[0][0] and bool(
            run.query("SELECT count(*) FROM loader_sync_state WHERE table_name = %s", table)[0][0])

    def group_failing_once_loaded(self, tables, full):
        if tables[0].name != failing:
            return derive(self, tables, full)
        wait_until(lambda: committed(loaded_first))
        raise RuntimeError(f"{failing} failed on purpose")

    monkeypatch.setattr(runner._Run, "group", group_failing_once_loaded)
    with pytest.raises(RuntimeError, match=f"{failing} failed on purpose"):
        run_in_process(run, monkeypatch, dumps["folder"])
    assert run.query(f"SELECT count(*) FROM {loaded_first}")[0][0] > 0
    assert run.query(f"SELECT to_regclass('public.{failing}')") == [(None,)]
    monkeypatch.undo()

    result = run_loader("run", "--staging", str(run.staging), "--no-progress", "--from-dump", str(dumps["folder"]), env=run.env)
    assert result.returncode == 0, result.stderr
    fresh = Target({**DUMP_ENV, **create_database(postgres)}, tmp_path / "fresh")
    result = run_loader("run", "--staging", str(fresh.staging), "--no-progress", "--from-dump", str(dumps["folder"]), env=fresh.env)
    assert result.returncode == 0, result.stderr
    problems = differences(table_contents(run), table_contents(fresh))
    assert not problems, "the run after the failed one (+) and a first run (-) differ:\n" + "\n".join(problems)


def test_a_failing_load_stops_the_transform_from_starting_tables(dumps, target, tmp_path, monkeypatch):
    """PostgreSQL refuses the load of a `loader run` (an `ingredients` table of other columns:
    schema drift, nothing written) while the transform goes on: here the transform of `users`
    waits until the load has failed. The run raises the load's error once `users` is derived;
    the tables referencing users are not derived (their groups never start); what was derived
    stays staged, and the run after the drift is mended completes."""
    run = Target({**DUMP_ENV, **target}, tmp_path / "staging")
    with connect(run.env) as conn:
        conn.execute("CREATE TABLE ingredients (id VARCHAR PRIMARY KEY, name INTEGER)")
    load, derive, failed = pipeline.load, runner._Run.group, threading.Event()

    def load_noting_its_failure(*args, **kwargs):
        try:
            return load(*args, **kwargs)
        except Exception:
            failed.set()
            raise

    def group_waiting_for_the_failure(self, tables, full):
        if tables[0].name == "users":
            assert failed.wait(60), "the load did not fail"
        return derive(self, tables, full)

    monkeypatch.setattr(pipeline, "load", load_noting_its_failure)
    monkeypatch.setattr(runner._Run, "group", group_waiting_for_the_failure)
    with pytest.raises(writer.DestinationError, match="differs from the config"):
        run_in_process(run, monkeypatch, dumps["folder"])
    staged = Staging(run.staging)
    assert staged.table_file("users").exists() and staged.table_file("companies").exists()
    assert [t for t in ("user_events", "messages", "users_logbook", "coachings") if staged.table_file(t).exists()] == []
    monkeypatch.undo()

    with connect(run.env) as conn:
        conn.execute("DROP TABLE ingredients")
    result = run_loader("run", "--staging", str(run.staging), "--no-progress", "--from-dump", str(dumps["folder"]), env=run.env)
    assert result.returncode == 0, result.stderr
    assert run.query("SELECT count(*) FROM days_logbooks_links")[0][0] > 0


# --------------------------------------------------------------------------- failures

# Each broken dump: (path, MONGODB_DATABASE, the message expected on stderr).
Broken = tuple[Path, str, str]


def truncated_bson(dumps: dict[str, Path], raw_collections: dict[str, list[bytes]], here: Path) -> Broken:
    copy = shutil.copytree(dumps["folder"], here / "dump")
    users = copy / SOURCE_DATABASE / "users.bson"
    users.write_bytes(users.read_bytes()[:-7])  # the last document cut short
    return copy, SOURCE_DATABASE, f"{users}: truncated or corrupt BSON"


def wrong_magic(dumps: dict[str, Path], raw_collections: dict[str, list[bytes]], here: Path) -> Broken:
    archive = here / "smartdiet.archive"
    archive.write_bytes(b"\x00" + dumps["archive"].read_bytes()[1:])
    return archive, SOURCE_DATABASE, f"{archive} is not a mongodump"


def archive_cut_in_a_document(dumps: dict[str, Path], raw_collections: dict[str, list[bytes]], here: Path) -> Broken:
    archive = here / "smartdiet.archive"
    archive.write_bytes(dumps["archive"].read_bytes()[:-1000])
    return archive, SOURCE_DATABASE, f"{archive}: truncated or corrupt BSON"


def archive_cut_between_blocks(dumps: dict[str, Path], raw_collections: dict[str, list[bytes]], here: Path) -> Broken:
    blocks = archive_blocks(raw_collections)
    archive = here / "smartdiet.archive"
    archive.write_bytes(b"".join(blocks[:len(blocks) // 2]))  # whole blocks, but not every collection's end
    return archive, SOURCE_DATABASE, f"{archive}: the archive ends before the end of {SOURCE_DATABASE}."


def gzipped_archive_cut(dumps: dict[str, Path], raw_collections: dict[str, list[bytes]], here: Path) -> Broken:
    archive = here / "smartdiet.dump"
    data = dumps["gzipped archive"].read_bytes()
    archive.write_bytes(data[:len(data) // 2])
    return archive, SOURCE_DATABASE, f"cannot read {archive}: Compressed file ended"


def folder_without_the_database(dumps: dict[str, Path], raw_collections: dict[str, list[bytes]], here: Path) -> Broken:
    return dumps["folder"], "other", f"{dumps['folder']}: no database 'other' (MONGODB_DATABASE) in this dump; databases found: smartdiet"


def tar_without_the_database(dumps: dict[str, Path], raw_collections: dict[str, list[bytes]], here: Path) -> Broken:
    return dumps["tar.gz"], "other", f"{dumps['tar.gz']}: no database 'other' (MONGODB_DATABASE) in this dump; databases found: smartdiet"


@pytest.mark.parametrize("broken", [truncated_bson, wrong_magic, archive_cut_in_a_document, archive_cut_between_blocks,
                                    gzipped_archive_cut, folder_without_the_database, tar_without_the_database])
def test_a_broken_dump_fails_with_one_line_naming_it(broken, dumps, raw_collections, tmp_path):
    path, database, message = broken(dumps, raw_collections, tmp_path)
    result = run_loader("extract", "--staging", str(tmp_path / "staging"), "--no-progress", "--from-dump", str(path),
                        env={**DUMP_ENV, "MONGODB_DATABASE": database})
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
    assert message in result.stderr
    # Snapshots are atomic: other collections of a dump folder may be staged, never a broken one.
    assert "users" not in Staging(tmp_path / "staging").collections(), "a snapshot was recorded from a broken file"


# --------------------------------------------------------------------------- in process

def test_a_collection_missing_from_the_dump_is_staged_empty_and_each_extract_is_full(tmp_path):
    folder = tmp_path / "dump" / "shop"
    folder.mkdir(parents=True)
    (folder / "users.bson").write_bytes(b"".join(bson.encode({"_id": i, "name": f"user {i}"}) for i in range(3)))
    settings = Settings(_env_file=None, mongodb_database="shop", staging_dir=tmp_path / "staging")
    staging = Staging(settings.staging_dir)
    for _ in range(2):
        snapshots = dump.extract(settings, staging, ["users", "menus"], tmp_path / "dump")
        assert {(s.collection, s.kind, s.documents, s.source_missing) for s in snapshots} == {
            ("users", FULL, 3, False), ("menus", FULL, 0, True)}
    assert [s.kind for s in staging.snapshots("users")] == [FULL, FULL]


def test_a_dump_is_only_read_whole(tmp_path):
    source = dump.DumpSource("users", dump.DumpFile(tmp_path / "users.bson", "users.bson"), batch_size=10)
    with pytest.raises(dump.DumpError, match="staged whole"):
        next(source.read({"creation_date": {"$gte": 0}}))
