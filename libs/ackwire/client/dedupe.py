"""The delivery ids a client has handed to its application: bounded, optionally on disk.

docs/protocol.md, Delivery: a message may come again (after a resume, or after
`ack_wait`), always with the same `id`; "dedupe on `id`". The most recent
`capacity` ids are kept (least recently seen first out). With a `path`, they are
kept in an SQLite file too, so that a process started again on the same file
does not hand the application a result it already had.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from pathlib import Path

DEFAULT_CAPACITY = 10_000


class SeenIds:
    """Ids seen, the oldest forgotten first once more than `capacity` are kept."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, path: Path | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be 1 or more")
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: each add lands
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS seen (n INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL)"
            )
            rows = self._db.execute("SELECT id FROM seen ORDER BY n DESC LIMIT ?", (capacity,))
            for (seen_id,) in reversed(rows.fetchall()):
                self._ids[seen_id] = None

    def __contains__(self, delivery_id: object) -> bool:
        return delivery_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, delivery_id: str) -> None:
        if delivery_id in self._ids:
            self._ids.move_to_end(delivery_id)
            return
        self._ids[delivery_id] = None
        forgotten = None
        if len(self._ids) > self._capacity:
            forgotten, _ = self._ids.popitem(last=False)
        if self._db is not None:
            self._db.execute("INSERT OR IGNORE INTO seen (id) VALUES (?)", (delivery_id,))
            if forgotten is not None:
                self._db.execute("DELETE FROM seen WHERE id = ?", (forgotten,))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
