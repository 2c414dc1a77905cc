"""`retried`: a plain call while the bus answers, stamina's bounds once it does not."""

import asyncio
import time
from collections.abc import Iterator

import pytest
import stamina

from ackwire.bus.retry import retried
from ackwire.errors import BusUnavailableError, InternalError


class Flaky:
    """Fails its first `failures` calls with a `BusError`, then answers; times each call."""

    def __init__(self, failures: int, *, takes_s: float = 0.0) -> None:
        self.failures = failures
        self.takes_s = takes_s
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(time.monotonic())
        await asyncio.sleep(self.takes_s)
        if len(self.calls) <= self.failures:
            raise BusUnavailableError(f"failure {len(self.calls)}")
        return "answer"


@pytest.fixture
def no_waits() -> Iterator[None]:
    """stamina's test mode: the attempts asked for (up to 10), without the back-off."""
    with stamina.set_testing(True, attempts=10, cap=True):
        yield


async def test_a_call_that_succeeds_never_enters_the_retry_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_retry_context(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the retry loop was entered")

    monkeypatch.setattr(stamina, "retry_context", no_retry_context)
    call = Flaky(0)
    assert await retried(call, attempts=3, within_s=5.0) == "answer"
    assert len(call.calls) == 1


@pytest.mark.usefixtures("no_waits")
async def test_failures_are_retried_within_the_attempts() -> None:
    call = Flaky(2)
    assert await retried(call, attempts=3, within_s=5.0) == "answer"
    assert len(call.calls) == 3


@pytest.mark.usefixtures("no_waits")
async def test_the_first_failure_counts_as_an_attempt() -> None:
    call = Flaky(3)
    with pytest.raises(BusUnavailableError, match="failure 3"):
        await retried(call, attempts=3, within_s=5.0)
    assert len(call.calls) == 3


async def test_the_second_call_waits_out_stamina_s_first_back_off() -> None:
    call = Flaky(1)
    assert await retried(call, attempts=3, within_s=5.0) == "answer"
    first, second = call.calls
    assert second - first >= 0.1  # stamina's first wait: 0.1 s, plus jitter


async def test_a_first_call_that_took_the_whole_timeout_is_not_retried() -> None:
    call = Flaky(1, takes_s=0.2)
    with pytest.raises(BusUnavailableError, match="failure 1"):
        await retried(call, attempts=None, within_s=0.1)
    assert len(call.calls) == 1


async def test_anything_but_a_bus_error_is_not_retried() -> None:
    async def buggy() -> None:
        raise InternalError("a bug")

    with pytest.raises(InternalError):
        await retried(buggy, attempts=3, within_s=5.0)
