"""Large documents stay within DuckDB's memory limit (issue 6: bounded memory). The 5M-document
dataset's `contents` list their readers in `viewed_by`: hundreds of documents of ~170 KB, each
unnested into 1,700 rows of users_contents_reads. The same shape at a smaller scale, under a
lowered DUCKDB_MEMORY_LIMIT, must load whole (staged parts were read in vectors of up to 2,048
documents, and the unnesting held every element's JSON: it failed at 600 MB here)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from bson import ObjectId
from pymongo import MongoClient

from conftest import connect, run_loader

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=timezone.utc)
CONTENTS, READERS, USERS = 150, 1_700, 2_000


@pytest.fixture
def large_source(mongo):
    users = [{"_id": ObjectId(), "creation_date": T0, "update_date": T0, "firstname": "Ann", "lastname": f"Lee{i}",
              "email": f"ann{i}@example.org", "role": "customer"} for i in range(USERS)]
    contents = [{"_id": ObjectId(), "creation_date": T0, "update_date": T0, "name": f"Content {i}", "type": "article",
                 "viewed_by": [{"user": users[(i + k) % USERS]["_id"], "date": T0} for k in range(READERS)]}
                for i in range(CONTENTS)]
    name = "large_documents"
    with MongoClient(mongo.url) as client:
        client.drop_database(name)
        client[name].users.insert_many(users)
        client[name].contents.insert_many(contents)
        yield users, contents, {"MONGODB_URL": mongo.url, "MONGODB_DATABASE": name}
        client.drop_database(name)


def test_long_arrays_of_large_documents_load_under_a_small_memory_limit(large_source, target, tmp_path):
    _, contents, source = large_source
    env = {**source, **target, "LOADER_STAGING_DIR": str(tmp_path / "staging"), "DUCKDB_MEMORY_LIMIT": "450MB"}
    result = run_loader("run", "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    with connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM contents").fetchone()[0] == CONTENTS
        reads = conn.execute("SELECT content_id, count(DISTINCT user_id) FROM users_contents_reads GROUP BY 1").fetchall()
    assert dict(reads) == {str(c["_id"]): READERS for c in contents}


def test_a_delta_of_large_documents_loads_under_a_small_memory_limit(large_source, target, tmp_path):
    # Every content gains a reader (in the application, reading a content updates it): the
    # incremental run re-derives them all from a delta snapshot.
    users, contents, source = large_source
    env = {**source, **target, "LOADER_STAGING_DIR": str(tmp_path / "staging"), "DUCKDB_MEMORY_LIMIT": "450MB"}
    assert run_loader("run", "--no-progress", env=env).returncode == 0
    with MongoClient(source["MONGODB_URL"]) as client:
        collection = client[source["MONGODB_DATABASE"]].contents
        for i, content in enumerate(contents):  # its readers are users i to i + READERS - 1
            collection.update_one({"_id": content["_id"]}, {"$set": {"update_date": datetime.now(timezone.utc)},
                                                            "$push": {"viewed_by": {"user": users[(i + READERS) % USERS]["_id"], "date": T0}}})
    result = run_loader("run", "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    with connect(target) as conn:
        reads = conn.execute("SELECT content_id, count(DISTINCT user_id) FROM users_contents_reads GROUP BY 1").fetchall()
    assert dict(reads) == {str(c["_id"]): READERS + 1 for c in contents}
