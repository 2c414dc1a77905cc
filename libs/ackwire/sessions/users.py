"""Sessions by user: which sessions a message "to alice" goes to, and alice's presence.

One key `<user>.<session>` per session, in a bucket whose entries expire like
the records do (a session TTL after their last write). The gateway holding a
session writes its key whenever it writes the record (open, resume, refresh,
detach) and deletes it on `bye`; a reader checks each session's record, so
an entry that outlived its session by a moment is harmless.
"""

from __future__ import annotations

import contextlib

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors


class UserSessions:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> UserSessions:
        return cls(await js.key_value(subjects.USER_SESSIONS_BUCKET))

    async def keep(self, user: str, session_id: str) -> None:
        with bus_errors(f"listing {session_id} under its user"):
            await self._kv.put(subjects.user_session_key(user, session_id), b"")

    async def forget(self, user: str, session_id: str) -> None:
        with bus_errors(f"unlisting {session_id}"):
            await self._kv.delete(subjects.user_session_key(user, session_id))

    async def of(self, user: str) -> list[str]:
        """The ids of the user's sessions that may still be resumable."""
        prefix = subjects.user_token(user) + "."
        # A watch filtered by the server; nats-py's `keys(filters=…)` reads every key
        # of the bucket and filters them here.
        watcher = await self._kv.watch(prefix + "*", ignore_deletes=True, meta_only=True)
        sessions: list[str] = []
        try:
            async for entry in watcher:
                if entry is None:  # the end of the current entries
                    break
                sessions.append(entry.key.removeprefix(prefix))
        finally:
            with contextlib.suppress(NatsError):
                await watcher.stop()  # type: ignore[no-untyped-call]
        return sorted(sessions)
