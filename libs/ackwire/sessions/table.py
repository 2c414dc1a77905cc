"""Session records on the bus: one KV key per session, changed only by compare-and-set.

A successful compare-and-set *is* a claim: two connections racing to resume
a session both write against the revision they read, and exactly one write
lands. The bucket's max age is the session TTL: a detached record expires
on its own, and a live one is refreshed by the gateway holding it. An
expired record leaves a tombstone (JetStream's limit marker) for another TTL,
so a late resume hears `expired`, not `unknown`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue
from pydantic import ValidationError

from ackwire.bus import subjects
from ackwire.bus.boundary import bus_errors
from ackwire.errors import SessionChangedError
from ackwire.sessions.record import Found, Gone, Lookup, SessionRecord

#: Header of a marker the server leaves where a message expired or was removed.
_MARKER_REASON = "Nats-Marker-Reason"


class SessionTable:
    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self._js = js
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> SessionTable:
        return cls(js, await js.key_value(subjects.SESSIONS_BUCKET))

    async def lookup(self, session_id: str) -> Lookup:
        """The session's record, its tombstone, or `None` when there is no trace of it.

        Read from the stream's leader, not a replica: a claim must start from the
        latest revision (a stale one would only fail its compare-and-set, but a
        verdict of `unknown` from a lagging replica would be wrong)."""
        key = subjects.session_key(session_id)
        with bus_errors(f"looking up {session_id}"):
            try:
                msg = await self._js.get_msg(
                    f"KV_{subjects.SESSIONS_BUCKET}",
                    subject=f"$KV.{subjects.SESSIONS_BUCKET}.{key}",
                )
            except NotFoundError:
                return None
        headers = msg.headers or {}
        if _MARKER_REASON in headers or headers.get(KV_OP) in (KV_DEL, KV_PURGE):
            return Gone()
        try:
            record = SessionRecord.model_validate_json(msg.data or b"")
        except ValidationError:
            return Gone()  # not a record we can honour; treat it as gone
        return Found(record, msg.seq or 0)

    async def create(self, record: SessionRecord) -> int:
        """Store a new session's record; its revision. Raises `BusError`."""
        with bus_errors(f"creating {record.session_id}"):
            return await self._kv.create(subjects.session_key(record.session_id), record.to_bytes())

    async def replace(self, record: SessionRecord, *, revision: int) -> int:
        """Write `record` over `revision`; its new revision. Raises `SessionChangedError` if
        the record is no longer at `revision`, `BusError` if the store did not confirm."""
        with bus_errors(f"writing {record.session_id}"):
            try:
                return await self._kv.update(
                    subjects.session_key(record.session_id), record.to_bytes(), last=revision
                )
            except KeyWrongLastSequenceError as exc:
                raise SessionChangedError(record.session_id) from exc

    async def every(self) -> AsyncIterator[Found]:
        """Every session record there is now (an operator's view; it reads them all)."""
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    return
                if entry.operation is not None or not entry.value:
                    continue  # a tombstone
                try:
                    yield Found(SessionRecord.model_validate_json(entry.value), entry.revision)
                except ValidationError:
                    continue
        finally:
            with contextlib.suppress(NatsError):
                await watcher.stop()  # type: ignore[no-untyped-call]
