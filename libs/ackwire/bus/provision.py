"""Creating every stream and KV bucket the suite uses, idempotently.

Every service runs `provision` at start-up, so no start order is needed and a
configuration change (say, replicas 1 -> 3) is applied by the next service
that starts. Running it twice, or from many services at once, is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

import stamina
import structlog
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RePublish, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, ServiceUnavailableError

from ackwire.bus import subjects
from ackwire.settings import Settings

_MARKER_TTL_MIN_S = 60.0

#: JetStream's "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058

_log = structlog.get_logger("ackwire.bus")


@dataclass(frozen=True, slots=True)
class BucketSpec:
    bucket: str
    description: str
    ttl_s: float | None = None
    """Entries not rewritten within this time expire, and watchers see a purge marker."""

    @property
    def marker_ttl_s(self) -> float | None:
        """How long an expiry marker stays. At least a minute: a watcher whose consumer
        is being recreated (its server died) must still find the marker when it resumes,
        or it would never learn that the entry expired."""
        return None if self.ttl_s is None else max(self.ttl_s, _MARKER_TTL_MIN_S)


def buckets(settings: Settings) -> list[BucketSpec]:
    """Every KV bucket of the suite, as this deployment configures it."""
    return [
        BucketSpec(
            subjects.SESSIONS_BUCKET,
            "ackwire: session records, expiring a TTL after their last connection ended",
            ttl_s=settings.session_ttl_s,
        ),
        BucketSpec(
            subjects.USER_SESSIONS_BUCKET,
            "ackwire: sessions by user, expiring with the sessions' records",
            ttl_s=settings.session_ttl_s,
        ),
        BucketSpec(
            subjects.GATEWAYS_BUCKET,
            "ackwire: gateway leases, expiring after three missed heartbeats",
            ttl_s=3 * settings.lease_heartbeat_s,
        ),
        BucketSpec(
            subjects.NODES_BUCKET,
            "ackwire: registered nodes, expiring after three missed heartbeats",
            ttl_s=3 * settings.lease_heartbeat_s,
        ),
        BucketSpec(subjects.SNAPSHOTS_BUCKET, "ackwire: each topic's latest snapshot"),
    ]


def streams(settings: Settings) -> list[StreamConfig]:
    """Every stream of the suite (other than the buckets'), as this deployment configures it."""
    return [
        _stream(
            subjects.SESSIONS_STREAM,
            subjects.SESSION_SUBJECTS,
            "every session's queue of messages owed, until acked",
            settings,
            # A safety net: the scheduler expires a message (with a receipt) at the
            # retention; the store drops what no scheduler got to a little later.
            max_age=settings.retention_s * 1.25,
            live=subjects.LIVE_SUBJECTS,
        ),
        _stream(
            subjects.TOPICS_STREAM,
            subjects.TOPIC_SUBJECTS,
            "topic events, the last ones of each topic",
            settings,
            live=subjects.LIVE_TOPIC_SUBJECTS,
            max_msgs_per_subject=settings.topic_events_kept,
        ),
        _stream(
            subjects.RECEIPTS_STREAM,
            subjects.RECEIPT_SUBJECTS,
            "receipts for producers (delivered, expired undelivered)",
            settings,
        ),
        _stream(
            subjects.JOBS_STREAM,
            subjects.JOB_SUBJECTS,
            "every job's work (until it ended) and record (written by compare-and-set)",
            settings,
            # One message per subject: a job's work, or its record's latest version.
            max_msgs_per_subject=1,
            direct=True,  # the schedulers sweep the work with batch direct gets
        ),
    ]


def _stream(
    name: str,
    subject: str,
    what: str,
    settings: Settings,
    *,
    max_age: float | None = None,
    live: str | None = None,
    max_msgs_per_subject: int = -1,
    direct: bool = False,
) -> StreamConfig:
    """A stream of the suite, retention-bounded, with a duplicate window so a publish
    retried after a lost answer is stored once. With `live`, it republishes each stored
    message there (with the previous sequence of its subject); with `live` or `direct`, it
    serves reads in batches from any replica."""
    return StreamConfig(
        name=name,
        description=f"ackwire: {what}",
        subjects=[subject],
        retention=RetentionPolicy.LIMITS,
        max_age=settings.retention_s if max_age is None else max_age,
        max_msgs_per_subject=max_msgs_per_subject,
        storage=StorageType.FILE,
        num_replicas=settings.replicas,
        allow_direct=True if live or direct else None,
        duplicate_window=_dedupe_window(settings),
        republish=RePublish(src=subject, dest=live) if live else None,
    )


def _dedupe_window(settings: Settings) -> float:
    """Two minutes for a retried publish to be stored once, as long as JetStream allows
    (the window must fit within the stream's max age)."""
    return min(120.0, settings.retention_s)


class NoLeaderYetError(Exception):
    """A replicated stream has no leader yet (just created, or its leader died)."""


#: What JetStream answers while a cluster elects its leaders: wait and ask again.
_ELECTING = (TimeoutError, NoRespondersError, ServiceUnavailableError, NoLeaderYetError)


async def provision(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and bucket to match `settings`, and return once
    each has a leader, so the service's first write does not time out.

    A service starting while a cluster elects a leader (a server just died) waits
    for the election, with back-off, up to a minute; then the error is raised."""
    async for attempt in stamina.retry_context(on=_ELECTING, attempts=None, timeout=60.0):
        with attempt:
            if attempt.num > 1:
                _log.info("bus.provision_retry", attempt=attempt.num)
            for spec in buckets(settings):
                await _ensure_bucket(js, spec, settings.replicas)
            for config in streams(settings):
                await _ensure_stream(js, config)
            names = [f"KV_{spec.bucket}" for spec in buckets(settings)]
            names += [config.name for config in streams(settings) if config.name]
            for name in names:
                cluster = (await js.stream_info(name)).cluster
                if cluster is not None and not cluster.leader:
                    raise NoLeaderYetError(name)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        await js.update_stream(config)
        _log.info("bus.stream_updated", stream=config.name, replicas=config.num_replicas)


async def _ensure_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int) -> None:
    config = KeyValueConfig(
        bucket=spec.bucket,
        description=spec.description,
        ttl=spec.ttl_s,
        replicas=replicas,
        storage=StorageType.FILE,
        history=1,
        limit_marker_ttl=spec.marker_ttl_s,
    )
    try:
        await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        stream = f"KV_{spec.bucket}"
        current = (await js.stream_info(stream)).config
        await js.update_stream(
            current.evolve(
                description=spec.description,
                max_age=spec.ttl_s or 0.0,
                # JetStream requires the duplicate window to fit inside max_age.
                duplicate_window=min(current.duplicate_window or 120.0, spec.ttl_s or 120.0),
                num_replicas=replicas,
                subject_delete_marker_ttl=spec.marker_ttl_s,
            )
        )
        _log.info("bus.bucket_updated", bucket=spec.bucket, replicas=replicas, ttl_s=spec.ttl_s)
