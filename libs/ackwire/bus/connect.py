"""Connecting to NATS the way a long-running service should.

A service started before NATS is reachable (the seeds' worker that
crash-looped on ECONNREFUSED) waits and retries with capped exponential
back-off and jitter, logging one clear line per attempt, and carries on as
soon as NATS is up. After the first connection, nats-py reconnects by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import stamina
import structlog
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoServersError, SlowConsumerError

from ackwire.bus.telemetry import NATS_DISCONNECTS, NATS_RECONNECTS

T = TypeVar("T")

UNREACHABLE = (OSError, TimeoutError, NoServersError)
"""What a failed first connection raises: refused, unresolvable, timed out, no server left."""

_log = structlog.get_logger("ackwire.bus")


class Overflows:
    """Who to tell when NATS drops messages of a subscription that fell behind (a slow
    consumer): its follower reads what it missed from the store."""

    def __init__(self) -> None:
        self._followers: dict[Subscription, Callable[[], None]] = {}

    def watch(self, subscription: Subscription, dropped: Callable[[], None]) -> None:
        self._followers[subscription] = dropped

    def forget(self, subscription: Subscription) -> None:
        self._followers.pop(subscription, None)

    def dropped(self, subscription: Subscription) -> None:
        follower = self._followers.get(subscription)
        if follower is not None:
            follower()


def client_options(
    servers: list[str],
    name: str,
    stopping: Callable[[], bool] = lambda: False,
    reconnected: Callable[[], None] = lambda: None,
    overflows: Overflows | None = None,
) -> dict[str, Any]:
    """Options for `nats.connect` (and FastStream's `NatsBroker`) shared by every service.

    `stopping` tells a deliberate disconnect (the service drains) from a lost one;
    `reconnected` runs each time the connection is back after a loss; `overflows` hears
    of every subscription whose messages NATS dropped.
    """

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError) and overflows is not None:
            overflows.dropped(exc.sub)
        # A refused or lost socket is reported as `nats.unreachable` / `nats.disconnected`.
        log = _log.debug if isinstance(exc, UNREACHABLE) else _log.warning
        log("nats.error", error=str(exc) or type(exc).__name__)

    async def on_disconnected() -> None:
        if not stopping():
            NATS_DISCONNECTS.inc()
            _log.warning("nats.disconnected")

    async def on_reconnected() -> None:
        NATS_RECONNECTS.inc()
        _log.info("nats.reconnected")
        reconnected()

    return {
        "servers": servers,
        "name": name,
        "connect_timeout": 2,
        "reconnect_time_wait": 1,
        "drain_timeout": 5,  # a drain that cannot finish must not hold up a shutdown
        # The first connection gives up after two tries of each server, so that
        # `until_connected` backs off and says so; `keep_reconnecting` lifts the limit
        # once connected. (Unlimited from the start, nats-py would retry the first
        # connection itself, silently and without back-off.)
        "max_reconnect_attempts": 1,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
    }


async def until_connected(connect: Callable[[], Awaitable[T]], servers: list[str]) -> T:
    """Run `connect` until it succeeds, backing off between attempts; never gives up."""
    async for attempt in stamina.retry_context(
        on=UNREACHABLE, attempts=None, timeout=None, wait_initial=0.2, wait_max=5.0
    ):
        with attempt:
            try:
                connected = await connect()
            except UNREACHABLE as exc:
                _log.warning(
                    "nats.unreachable",
                    servers=servers,
                    attempt=attempt.num,
                    retry_in_s=round(attempt.next_wait, 2),
                    error=str(exc) or type(exc).__name__,
                    hint="waiting for NATS; retrying with back-off",
                )
                raise
            _log.info("nats.connected", servers=servers, attempts=attempt.num)
            return connected
    raise AssertionError("stamina stopped retrying without attempts or timeout")  # pragma: no cover


def keep_reconnecting(nc: Client) -> None:
    """From now on, let nats-py reconnect by itself after any loss of connection."""
    nc.options["max_reconnect_attempts"] = -1


async def connect_nats(
    servers: list[str],
    name: str,
    stopping: Callable[[], bool] = lambda: False,
    reconnected: Callable[[], None] = lambda: None,
    overflows: Overflows | None = None,
) -> Client:
    """A nats-py client, waiting for NATS as long as it takes."""
    options = client_options(servers, name, stopping, reconnected, overflows)
    nc = await until_connected(lambda: nats.connect(**options), servers)
    keep_reconnecting(nc)
    return nc


async def leave_nats(nc: Client) -> None:
    """Drain the connection (flushing what is pending); if NATS is away, just close."""
    if nc.is_closed:
        return
    try:
        await nc.drain()
    except (NatsError, TimeoutError):
        with contextlib.suppress(OSError):  # the socket is already gone
            await nc.close()
