"""Every subject, stream, bucket and key name the suite uses, built in one place.

Names that carry client-influenced input (user ids, session ids, service
names) pass through a validator or an injective encoding here, so that no
client input can put `.`, `*`, `>` or whitespace into a subject or a key.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from ackwire.wire.topics import topic_name

PREFIX = "ackwire"

#: KV bucket of session records, one key per session: who holds it, and how to resume it.
SESSIONS_BUCKET = "ackwire_sessions"
#: KV bucket indexing sessions by user, one key `<user>.<session>` per resumable session.
USER_SESSIONS_BUCKET = "ackwire_user_sessions"
#: KV bucket of gateway leases, one key per gateway, refreshed by its heartbeat.
GATEWAYS_BUCKET = "ackwire_gateways"
#: KV bucket of registered nodes, one key per node, refreshed by its heartbeat.
NODES_BUCKET = "ackwire_nodes"

#: The stream holding every session's queue, one subject per session.
SESSIONS_STREAM = "ACKWIRE_SESSIONS"
SESSION_SUBJECTS = f"{PREFIX}.session.>"
#: Where the stream republishes each stored message, for the gateway holding the session.
LIVE_SUBJECTS = f"{PREFIX}.live.session.>"

#: The stream of topic events, one subject per topic; it republishes each to the live
#: subject of its topic, for the gateways whose clients subscribed.
TOPICS_STREAM = "ACKWIRE_TOPICS"
TOPIC_SUBJECTS = f"{PREFIX}.topic.>"
LIVE_TOPIC_SUBJECTS = f"{PREFIX}.live.topic.>"
#: KV bucket of each topic's latest snapshot (the event and its seq), one key per topic.
SNAPSHOTS_BUCKET = "ackwire_snapshots"

#: Receipts for producers: a message was delivered (the client's ack reached the bus) or
#: expired undelivered. `ackwire.receipt.<producer>.<message id>.<session>`.
RECEIPTS_STREAM = "ACKWIRE_RECEIPTS"
RECEIPT_SUBJECTS = f"{PREFIX}.receipt.>"

#: Every job's two subjects, `ackwire.jobs.work.<kind>.<job>` and
#: `ackwire.jobs.record.<kind>.<job>`, one message each (the stream keeps the last):
#: - its work, as a gateway stored it, read by the durable consumer of the nodes serving
#:   its kind (a redelivery is a new attempt) and swept by the schedulers once it outlived
#:   its pending timeout; deleted once the job's terminal delivery is stored;
#: - its record (the ledger's), written by compare-and-set (the expected last sequence
#:   of the subject), kept as long as the stream keeps messages: a job id once stored is
#:   never stored again, whatever became of the job.
JOBS_STREAM = "ACKWIRE_JOBS"
JOB_SUBJECTS = f"{PREFIX}.jobs.>"
WORK_SUBJECTS = f"{PREFIX}.jobs.work.>"

_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SESSION_ID = re.compile(r"s-[A-Za-z0-9_-]{16,64}")
_USER_ID_MAX = 256


class InvalidNameError(ValueError):
    """A name that cannot be placed into a subject or a key."""


def new_session_id() -> str:
    """A fresh, unguessable session id (`s-` and 128 random bits)."""
    return "s-" + secrets.token_urlsafe(16)


def session_token(session_id: str) -> str:
    """The session id as one subject token; raises `InvalidNameError` if it is not one of ours."""
    if not _SESSION_ID.fullmatch(session_id):
        raise InvalidNameError(f"not a session id: {session_id[:80]!r}")
    return session_id


def service_token(name: str) -> str:
    """A gateway, scheduler or node name as one subject token."""
    if not _SAFE_TOKEN.fullmatch(name):
        raise InvalidNameError(f"service names are 1-64 of A-Z a-z 0-9 _ -, not {name[:80]!r}")
    return name


def user_token(user_id: str) -> str:
    """A user id as one subject token and KV key part; injective.

    Ids made of `[A-Za-z0-9_-]` (up to 64) stand for themselves, so operators
    can read them; any other id (an e-mail address, say) is `=` followed by
    the base32 of its UTF-8 bytes. `=` never appears in a plain id, so two
    users never share a token.
    """
    if not user_id or len(user_id) > _USER_ID_MAX:
        raise InvalidNameError(f"a user id is 1-{_USER_ID_MAX} characters")
    if _SAFE_TOKEN.fullmatch(user_id):
        return user_id
    encoded = base64.b32encode(user_id.encode("utf-8", "surrogatepass")).decode("ascii")
    return "=" + encoded.rstrip("=").lower()


def session_key(session_id: str) -> str:
    """The key of a session's record in `SESSIONS_BUCKET`."""
    return session_token(session_id)


def user_session_key(user_id: str, session_id: str) -> str:
    """A session's key in `USER_SESSIONS_BUCKET`: `<user>.<session>`, so `<user>.*` lists
    a user's sessions."""
    return f"{user_token(user_id)}.{session_token(session_id)}"


def gateway_key(gateway_name: str) -> str:
    return service_token(gateway_name)


def release_subject(gateway_name: str) -> str:
    """Where a gateway is asked to let go of a session another connection has taken over."""
    return f"{PREFIX}.gateway.{service_token(gateway_name)}.release"


def node_key(node_name: str) -> str:
    return service_token(node_name)


def session_subject(session_id: str) -> str:
    """The subject of a session's queue in `SESSIONS_STREAM`."""
    return f"{PREFIX}.session.{session_token(session_id)}"


def live_subject(session_id: str) -> str:
    """The subject on which a session's newly stored messages are republished."""
    return f"{PREFIX}.live.session.{session_token(session_id)}"


def topic_subject(topic: str) -> str:
    """The subject of a topic's events in `TOPICS_STREAM`."""
    return f"{PREFIX}.topic.{topic_name(topic)}"


def live_topic_subject(topic: str) -> str:
    return f"{PREFIX}.live.topic.{topic_name(topic)}"


#: The topic of every user's presence changes: `presence.<user token>` (join, leave),
#: and `presence.gateways` (a gateway gone without goodbye: its sessions are offline).
PRESENCE_TOPIC_PREFIX = "presence"
GATEWAYS_GONE_TOPIC = "presence.gateways"
LIVE_PRESENCE_SUBJECTS = f"{PREFIX}.live.topic.{PRESENCE_TOPIC_PREFIX}.>"


def presence_topic(user_id: str) -> str:
    """The topic of one user's presence changes: `presence.<user token>`, or, for a user
    token longer than a topic token may be, `presence.=1<SHA-256 of the id, hex>` (`1`
    never occurs in base32, so the two forms never meet)."""
    token = user_token(user_id)
    if len(token) > 64:
        token = "=1" + hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:48]
    return f"{PRESENCE_TOPIC_PREFIX}.{token}"


def snapshot_key(topic: str) -> str:
    return topic_name(topic)


_MESSAGE_ID = re.compile(r"[A-Za-z0-9_:-]{1,128}")


def message_token(message_id: str) -> str:
    """A message id as one subject token: 1-128 of A-Z a-z 0-9 _ : -."""
    if not _MESSAGE_ID.fullmatch(message_id):
        raise InvalidNameError(
            f"message ids are 1-128 of A-Z a-z 0-9 _ : -, not {message_id[:80]!r}"
        )
    return message_id


def receipt_subject(producer: str, message_id: str, session_id: str) -> str:
    return (
        f"{PREFIX}.receipt.{service_token(producer)}.{message_token(message_id)}"
        f".{session_token(session_id)}"
    )


def receipts_of(producer: str, message_id: str | None = None) -> str:
    """The subjects of a producer's receipts (of one message, if given)."""
    if message_id is None:
        return f"{PREFIX}.receipt.{service_token(producer)}.>"
    return f"{PREFIX}.receipt.{service_token(producer)}.{message_token(message_id)}.*"


def kind_token(kind: str) -> str:
    """A job kind as one subject token (kinds are names chosen by node authors)."""
    return service_token(kind)


def work_subject(kind: str, job_id: str) -> str:
    """Where a job's work is stored."""
    return f"{PREFIX}.jobs.work.{kind_token(kind)}.{job_token(job_id)}"


def work_of_kind(kind: str) -> str:
    """The work of every job of `kind` (the filter of its nodes' consumer)."""
    return f"{PREFIX}.jobs.work.{kind_token(kind)}.*"


def record_subject(kind: str, job_id: str) -> str:
    """Where a job's record is kept."""
    return f"{PREFIX}.jobs.record.{kind_token(kind)}.{job_token(job_id)}"


def anything_of_job(job_id: str) -> str:
    """Every subject of a job (its work or its record), whatever its kind."""
    return f"{PREFIX}.jobs.*.*.{job_token(job_id)}"


def work_consumer(kind: str) -> str:
    """The durable consumer every node serving `kind` pulls from."""
    return f"work-{kind_token(kind)}"


_JOB_ID = re.compile(r"j-[A-Za-z0-9_-]{16,64}")


def job_token(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        raise InvalidNameError(f"not a job id: {job_id[:80]!r}")
    return job_id
