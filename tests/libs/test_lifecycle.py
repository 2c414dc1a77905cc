"""cancel_and_wait ends a background task even when a cancellation gets lost."""

import asyncio

import pytest

from ackwire.lifecycle import cancel_and_wait


async def test_a_task_that_swallowed_a_cancellation_is_cancelled_again() -> None:
    swallowed = asyncio.Event()
    began = asyncio.Event()

    async def stubborn() -> None:
        began.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            # What `asyncio.wait_for` does on 3.11 when the awaited answer arrives
            # together with the cancellation: it returns instead of raising.
            swallowed.set()
        await asyncio.sleep(30)  # a loop going on; only a second cancellation ends it

    task = asyncio.create_task(stubborn())
    await began.wait()
    async with asyncio.timeout(2):
        await cancel_and_wait(task)
    assert swallowed.is_set()
    assert task.cancelled()


async def test_what_the_task_raised_is_raised_again() -> None:
    async def failing() -> None:
        raise LookupError("boom")

    task = asyncio.create_task(failing())
    await asyncio.wait({task})
    with pytest.raises(LookupError, match="boom"):
        await cancel_and_wait(task)
