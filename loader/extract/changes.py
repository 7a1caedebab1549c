"""What the database's change stream says changed since the previous extract, where the server
keeps one (a replica set; SecantusDB): reading it costs the changes, not the collections.

Every extract records with each collection it stages the stream's position taken before any of
its reads (staging manifest, `positions`). The next extract reads the stream from there to its
end, once for all the collections recorded at the same position, and gives each collection the
`_id`s whose last event deleted the document (its tombstones) and those inserted, updated or
replaced (fetched when the delta queries missed them: a change that set no timestamp). A
collection without an event has not changed: its delta queries are not sent.
The stream is read until the server returns an empty batch, and the position recorded next is
where the read stopped (the last batch's resume token): an event the server had not delivered by
then (a write during the extract, or events a server holds back past its await time) is read by
the next extract, never skipped.

A collection gets no Changes, and its deletions are found by counting (mongo._detect_deletions),
when no position is recorded for it (its first delta, a snapshot staged from a dump), when the
server keeps no change stream (a standalone mongod, a user without the changeStream privilege),
when the history since the position is gone (the oplog rolled over), or when it was dropped or
renamed since.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import bson
from bson import json_util
from pymongo.errors import PyMongoError

# No pipeline stage: the events come as the server keeps them (an insert's carries its document).
# A `$project` keeping the four fields the extract reads doubled the read on SecantusDB, which
# applies a stage to each event in Python (1M, 20,000 events: 1.8-2.1 s against 0.8-1.5 s).
_PIPELINE: list[dict] = []
# How long a read at the end of the stream waits for more events (ms).
_AWAIT_MS = 10
_DOCUMENT_EVENTS = {"insert", "update", "replace", "delete"}


@dataclass
class Changes:
    """One collection's changes since its recorded position, each `_id` as the BSON document
    {"_id": value} (hashable, and what the extract's part writers read)."""

    deleted: list[bytes] = field(default_factory=list)  # the last event deleted the document
    touched: list[bytes] = field(default_factory=list)  # the last event inserted, updated or replaced it

    @property
    def events(self) -> int:
        """The documents the events name (each once, by its last event)."""
        return len(self.deleted) + len(self.touched)

    @property
    def none(self) -> bool:
        """No document event: nothing in the collection changed since the position."""
        return not self.events


@dataclass
class Feed:
    changes: dict[str, Changes]  # the collections whose changes the stream told
    positions: dict[str, str | None]  # what to record with each collection once it is staged


def read(db, positions: dict[str, str | None], collections: list[str]) -> Feed:
    """The changes of each collection since its recorded position, and the positions to record."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in collections:
        if positions.get(name):
            groups[positions[name]].append(name)
    changes: dict[str, Changes] = {}
    new_positions: dict[str, str | None] = {}
    for position, names in groups.items():
        read_ = _read_stream(db, position, set(names))
        if read_ is not None:
            told, end = read_
            changes |= told
            new_positions |= dict.fromkeys(names, end)
    # The others start from a position taken now: before their counts and reads.
    now = next(iter(new_positions.values()), None) or current_position(db)
    return Feed(changes, {name: new_positions.get(name, now) for name in collections})


def current_position(db) -> str | None:
    """The stream's position now (None: the server keeps no change stream)."""
    try:
        with db.watch(_PIPELINE) as stream:
            return json_util.dumps(stream.resume_token)
    except PyMongoError:
        return None


def _read_stream(db, position: str, names: set[str]) -> tuple[dict[str, Changes], str] | None:
    """The events of the collections `names` from `position` to the stream's end: their changes
    (not for a collection dropped or renamed since) and the end position; None if the stream
    cannot be read from there."""
    last: dict[str, dict[bytes, bool]] = {name: {} for name in names}  # per _id: did its last event delete it?
    gone: set[str] = set()
    try:
        with db.watch(_PIPELINE, resume_after=json_util.loads(position), max_await_time_ms=_AWAIT_MS) as stream:
            while (event := stream.try_next()) is not None:
                kind, collection = event["operationType"], event.get("ns", {}).get("coll")
                if kind in ("dropDatabase", "invalidate"):
                    gone |= names
                    break
                if kind in ("drop", "rename"):
                    gone |= {collection, event.get("to", {}).get("coll")}
                elif kind in _DOCUMENT_EVENTS and collection in last:
                    key = bson.encode({"_id": event["documentKey"]["_id"]})
                    last[collection][key] = kind == "delete"
            end = json_util.dumps(stream.resume_token)
    except PyMongoError:
        return None
    return {
        name: Changes([k for k, deleted in ids.items() if deleted], [k for k, deleted in ids.items() if not deleted])
        for name, ids in last.items() if name not in gone
    }, end
