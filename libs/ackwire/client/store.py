"""What a client keeps on disk across process restarts: one SQLite file of its own.

Two things, so that a process started again on the same file carries on where the
last one stopped: the delivery ids it handed to the application (`SeenIds`
dedupes with them), and the session to resume with its resume token (the
contract keeps a session resumable for its TTL after any close but `bye`), so the
new process is sent what the session is owed. The resume token is a secret: the
file is readable by its owner only.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SavedSession:
    """A session to resume: its id, and the resume token its `welcome` gave."""

    session_id: str
    resume_token: str


class ClientState:
    def __init__(self, path: Path) -> None:
        path.touch(mode=0o600, exist_ok=True)
        os.chmod(path, 0o600)  # an existing file too: it holds a resume token
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: each write lands
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS seen (n INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL);"
            "CREATE TABLE IF NOT EXISTS session ("
            " one INTEGER PRIMARY KEY CHECK (one = 1),"
            " session_id TEXT NOT NULL, resume_token TEXT NOT NULL)"
        )

    def seen_ids(self, most: int) -> list[str]:
        """The `most` ids seen last, oldest first."""
        rows = self._db.execute("SELECT id FROM seen ORDER BY n DESC LIMIT ?", (most,))
        return [seen_id for (seen_id,) in reversed(rows.fetchall())]

    def add_seen(self, delivery_id: str, forgotten: str | None) -> None:
        """One transaction (one write to disk) per delivery handled."""
        self._db.execute("BEGIN")
        self._db.execute("INSERT OR IGNORE INTO seen (id) VALUES (?)", (delivery_id,))
        if forgotten is not None:
            self._db.execute("DELETE FROM seen WHERE id = ?", (forgotten,))
        self._db.execute("COMMIT")

    def session(self) -> SavedSession | None:
        row = self._db.execute("SELECT session_id, resume_token FROM session").fetchone()
        return None if row is None else SavedSession(*row)

    def keep_session(self, session: SavedSession | None) -> None:
        if session is None:
            self._db.execute("DELETE FROM session")
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO session VALUES (1, ?, ?)",
                (session.session_id, session.resume_token),
            )

    def close(self) -> None:
        self._db.close()
