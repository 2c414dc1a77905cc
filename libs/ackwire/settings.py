"""Every setting of the suite, read from `ACKWIRE_*` environment variables.

docs/operations.md lists the variables tools rely on; a command-line flag
overrides its variable.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The HS256 secret used when none is configured. Anyone can mint tokens with it.
DEVELOPMENT_SECRET = "ackwire-development-secret-do-not-use-in-production"  # noqa: S105

Seconds = Annotated[float, Field(gt=0)]


class JwtAlgorithm(StrEnum):
    HS256 = "HS256"
    RS256 = "RS256"
    ES256 = "ES256"


class LogFormat(StrEnum):
    AUTO = "auto"
    """JSON when stderr is not a terminal, readable columns when it is."""
    JSON = "json"
    CONSOLE = "console"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACKWIRE_", extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    replicas: Annotated[int, Field(ge=1, le=5)] = 1

    gateway_port: Annotated[int, Field(ge=0, le=65535)] = 8765
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080

    jwt_secret: SecretStr = SecretStr(DEVELOPMENT_SECRET)
    jwt_algorithm: JwtAlgorithm = JwtAlgorithm.HS256
    jwt_public_key: str | None = None
    """PEM text of the public key that verifies RS256/ES256 tokens."""
    jwt_audience: Annotated[str, Field(min_length=1)] | None = None
    """When set, a token must carry this `aud`; unset, a token carrying any `aud` is refused
    (RFC 7519 4.1.3: it was meant for someone else)."""
    jwt_issuer: Annotated[str, Field(min_length=1)] | None = None
    """When set, a token must carry this `iss`."""

    heartbeat_s: Seconds = 15.0
    hello_timeout_s: Seconds = 10.0
    ack_wait_s: Seconds = 30.0
    window: Annotated[int, Field(ge=1, le=10_000)] = 64
    max_frame_bytes: Annotated[int, Field(ge=1024)] = 65536
    ws_compression: bool = False
    """permessage-deflate: ~64 KiB per connection instead of ~14 KiB (see docs/architecture.md)."""

    submit_rate_per_s: Annotated[float, Field(gt=0)] = 20.0
    """Submits a session may make per second, on average; past it: `rate_limited`."""
    submit_burst: Annotated[int, Field(ge=1)] = 40

    topic_buffer: Annotated[int, Field(ge=1, le=100_000)] = 256
    """Live events queued per subscription; past it a subscriber catches up from the store."""
    send_stall_s: Seconds = 10.0
    """A subscriber whose socket accepts nothing for this long is too slow: closed 4429."""
    max_topics: Annotated[int, Field(ge=1, le=10_000)] = 100
    """Subscriptions one session may hold."""
    subscribe_rate_per_s: Annotated[float, Field(gt=0)] = 5.0
    """Subscribes and unsubscribes a connection may make per second, on average (each
    writes the session's record); past it: `rate_limited`."""
    subscribe_burst: Annotated[int, Field(ge=1)] = 50
    topic_events_kept: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    """Events the store keeps per topic (the oldest go first): what bridges a topic's
    snapshot and the events after it."""

    session_ttl_s: Seconds = 3600.0
    retention_s: Seconds = 7 * 86400.0
    """How long a message waits for its ack; then it expires undelivered, and its producer
    gets an `expired` receipt."""
    expiry_sweep_s: Seconds = 60.0
    """How often each scheduler expires what outlived the retention (at least four times per
    retention) and sets the gauges of what is owed and of the sessions."""
    pending_timeout_s: Seconds = 10.0
    job_timeout_s: Seconds = 300.0
    max_attempts: Annotated[int, Field(ge=1)] = 3
    node_drain_s: Seconds = 20.0
    """How long a node stopping (SIGTERM) lets its running attempts finish; the rest are
    handed back to JetStream and start on another node at once."""

    lease_heartbeat_s: Seconds = 2.0
    """How often a node or gateway refreshes its lease; it expires after three missed."""

    log_format: LogFormat = LogFormat.AUTO
    log_level: str = "info"

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def uses_development_secret(self) -> bool:
        return (
            self.jwt_algorithm is JwtAlgorithm.HS256
            and self.jwt_secret.get_secret_value() == DEVELOPMENT_SECRET
        )
