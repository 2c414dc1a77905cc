"""Where nats-py's exceptions become ackwire's (`ackwire.errors`), once.

Every module that calls NATS wraps the call in `bus_errors(...)`, so what a bus
call raises is a `BusError` (or a `ConflictError`: a compare-and-set lost, or one
the module raises itself),
whatever went wrong underneath: a refused connection, no responders, a request
that timed out, nats-py's outbound buffer filling during a reconnect, or an
error answer from JetStream.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from nats.errors import Error as NatsError
from nats.js.errors import APIError
from nats.js.errors import Error as JetStreamError

from ackwire.bus.telemetry import BUS_ERRORS
from ackwire.errors import BusUnavailableError, SequenceConflictError, StoreRejectedError

_SERVICE_UNAVAILABLE = 503
#: JetStream's "wrong last sequence": a publish's expected last subject sequence failed.
_WRONG_LAST_SEQUENCE = 10071

P = ParamSpec("P")
T = TypeVar("T")


@contextmanager
def bus_errors(doing: str) -> Iterator[None]:
    """Translate what a NATS call inside raises; `doing` names it for the message."""
    try:
        yield
    except APIError as exc:
        if exc.err_code == _WRONG_LAST_SEQUENCE:
            raise SequenceConflictError(f"{doing}: {exc.description or exc}") from exc
        if exc.code == _SERVICE_UNAVAILABLE:  # JetStream is there but not answering
            BUS_ERRORS.labels(error="unavailable").inc()
            raise BusUnavailableError(f"{doing}: {exc.description or exc}") from exc
        BUS_ERRORS.labels(error="rejected").inc()
        raise StoreRejectedError(f"{doing}: {exc.description or exc}") from exc
    except (NatsError, JetStreamError, TimeoutError, OSError) as exc:
        BUS_ERRORS.labels(error="unavailable").inc()
        raise BusUnavailableError(f"{doing}: {str(exc) or type(exc).__name__}") from exc


def translated(
    doing: str,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """`bus_errors` around a whole coroutine function (a method that only calls NATS)."""

    def wrap(call: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(call)
        async def translating(*args: P.args, **kwargs: P.kwargs) -> T:
            with bus_errors(doing):
                return await call(*args, **kwargs)

        return translating

    return wrap
