"""Sessions by user: which sessions a message "to alice" goes to, and alice's presence.

One key `<user>.<session>` per session, in a bucket whose entries expire like
the records do (a session TTL after their last write). The gateway holding a
session writes its key whenever it writes the record (open, resume, refresh,
detach) and deletes it on `bye`; a reader checks each session's record, so
an entry that outlived its session by a moment is harmless.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors


class UserSessions:
    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self._js = js
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> UserSessions:
        return cls(js, await js.key_value(subjects.USER_SESSIONS_BUCKET))

    async def keep(self, user: str, session_id: str) -> None:
        with bus_errors(f"listing {session_id} under its user"):
            await self._kv.put(subjects.user_session_key(user, session_id), b"")

    async def forget(self, user: str, session_id: str) -> None:
        with bus_errors(f"unlisting {session_id}"):
            await self._kv.delete(subjects.user_session_key(user, session_id))

    async def of(self, user: str) -> list[str]:
        """The ids of the user's sessions that may still be resumable (and of some that are
        not: one forgotten or expired a moment ago; the reader checks each record).

        One question to the bucket's stream: which of the user's keys hold a message. (A
        KV watch would be one too, but nats-py may signal the end of its current entries
        before the entry already on its way, under load, and a key being rewritten, as a
        resume does, then went missing: a message "to alice" found nobody.)"""
        prefix = subjects.user_token(user) + "."
        base = f"$KV.{subjects.USER_SESSIONS_BUCKET}."
        with bus_errors(f"listing the sessions of {user}"):
            info = await self._js.stream_info(
                f"KV_{subjects.USER_SESSIONS_BUCKET}", subjects_filter=base + prefix + "*"
            )
        return sorted(subject.removeprefix(base + prefix) for subject in info.state.subjects or {})
