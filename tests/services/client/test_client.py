"""`ackwire.client.Client` against a real gateway, scheduler and node (no mocks): a job's
result once, a submit made while the network is cut, a token that expires mid-session."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from ackwire.client import Backoff, Client, Deliver, Event, JobFailedError, Phase, StateChanged
from ackwire.publisher import Publisher
from services.jobs.conftest import Stack
from support.proxy import TcpProxy

WAIT_S = 20.0


class StateLog:
    """Every state change of a client, awaitable."""

    def __init__(self) -> None:
        self.seen: list[StateChanged] = []
        self._changed = asyncio.Event()

    def append(self, change: StateChanged) -> None:
        self.seen.append(change)
        self._changed.set()

    async def until(self, phase: Phase, *, times: int) -> None:
        while sum(c.phase is phase for c in self.seen) < times:
            self._changed.clear()
            await self._changed.wait()


@dataclass
class CuttableClient:
    client: Client
    proxy: TcpProxy
    """The client's only network path to the gateway: the test cuts and restores it."""
    changes: StateLog


@contextlib.asynccontextmanager
async def cuttable_client(
    stack: Stack, token: str, backoff: Backoff
) -> AsyncIterator[CuttableClient]:
    host, port = stack.gateway.url.removeprefix("ws://").rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    changes = StateLog()
    try:
        async with Client(
            f"ws://127.0.0.1:{proxy.port}",
            token=token,
            backoff=backoff,
            on_state_change=changes.append,
        ) as client:
            yield CuttableClient(client, proxy, changes)
    finally:
        await proxy.stop()


async def test_run_returns_the_result_and_its_progress(
    stack: Stack, make_token: Callable[..., str]
) -> None:
    progress: list[Deliver] = []
    async with asyncio.timeout(WAIT_S), Client(stack.gateway.url, token=make_token()) as client:
        result = await client.run("sleep", {"seconds": 2}, on_progress=progress.append)
        assert result == {"slept": 2.0}
        assert [p.data for p in progress] == [{"percent": 0.0}, {"percent": 50.0}]
        assert client.state is Phase.WELCOMED
        assert client.gateway == "gw-t"
        with pytest.raises(JobFailedError) as failed:
            await client.run("fail", {})
        assert failed.value.code == "failed"
    assert client.state is Phase.CLOSED


async def test_a_submit_made_while_the_network_is_cut_succeeds_after_the_resume(
    stack: Stack, make_token: Callable[..., str], quick_backoff: Backoff
) -> None:
    async with (
        asyncio.timeout(WAIT_S),
        cuttable_client(stack, make_token(), quick_backoff) as cut,
    ):
        client = cut.client
        await client.wait_connected()
        session = client.session_id
        await cut.proxy.cut()
        await cut.changes.until(Phase.BACKING_OFF, times=1)  # the client saw the loss
        submitted = asyncio.create_task(client.run("echo", {"while": "cut"}, timeout=15))
        await cut.changes.until(Phase.BACKING_OFF, times=3)  # queued through failed attempts
        assert not submitted.done()
        await cut.proxy.restore()
        assert await submitted == {"while": "cut"}
        assert client.session_id == session  # resumed, not a new session
    phases = [c.phase for c in cut.changes.seen]
    assert phases[:2] == [Phase.WELCOMED, Phase.BACKING_OFF]
    assert Phase.RESUMING in phases
    assert phases[-2:] == [Phase.WELCOMED, Phase.CLOSED]


async def test_a_token_expiring_mid_session_is_refreshed_with_no_gap(
    stack: Stack, make_token: Callable[..., str]
) -> None:
    renewals = 0

    async def fresh_token() -> str:
        nonlocal renewals
        renewals += 1
        return make_token(ttl_s=3600)

    changes: list[StateChanged] = []
    results = []
    async with (
        asyncio.timeout(WAIT_S),
        Client(
            stack.gateway.url,
            token=make_token(ttl_s=6),  # refreshed 2 s ahead of its exp
            refresh=fresh_token,
            on_state_change=changes.append,
        ) as client,
    ):
        loop = asyncio.get_running_loop()
        past_exp = loop.time() + 9  # the gateway closes 4401 within a few seconds of exp
        n = 0
        while loop.time() < past_exp:
            results.append(await client.run("echo", {"n": n}, timeout=10))
            n += 1
            await asyncio.sleep(0.8)  # the stack's submit budget is 1 a second
        assert client.state is Phase.WELCOMED
    assert renewals == 1
    assert results == [{"n": i} for i in range(n)]  # each once, in order
    # One connection throughout: welcomed once, never backing off, then the app's close.
    assert [c.phase for c in changes] == [Phase.WELCOMED, Phase.CLOSED]


async def test_a_subscription_gives_the_snapshot_then_live_events_and_survives_a_resume(
    stack: Stack, make_token: Callable[..., str], quick_backoff: Backoff
) -> None:
    publisher = await Publisher.connect(stack.settings.nats_url)
    try:
        first = await publisher.publish("pipeline.42", {"percent": 10}, snapshot=True)
        async with (
            asyncio.timeout(WAIT_S),
            cuttable_client(stack, make_token(topics=["pipeline.>"]), quick_backoff) as cut,
        ):
            events = aiter(cut.client.subscribe("pipeline.42"))
            snapshot = await anext(events)
            assert isinstance(snapshot, Event)
            assert (snapshot.seq, snapshot.data, snapshot.snapshot) == (
                first,
                {"percent": 10},
                True,
            )
            live = await publisher.publish("pipeline.42", {"percent": 20}, snapshot=True)
            assert await anext(events) == Event(
                topic="pipeline.42", seq=live, data={"percent": 20}, snapshot=False
            )
            await cut.proxy.cut()
            await cut.changes.until(Phase.BACKING_OFF, times=1)
            await cut.proxy.restore()
            await cut.changes.until(Phase.WELCOMED, times=2)  # resumed: the gateway restores it
            after = await publisher.publish("pipeline.42", {"percent": 30})
            # The snapshot sent again (seq `live`) is not handed over twice: next is new.
            assert await anext(events) == Event(
                topic="pipeline.42", seq=after, data={"percent": 30}, snapshot=False
            )
    finally:
        await publisher.close()


async def test_messages_reach_the_application_once_each_across_a_resume(
    stack: Stack, make_token: Callable[..., str], quick_backoff: Backoff
) -> None:
    publisher = await Publisher.connect(stack.settings.nats_url)
    try:
        async with (
            asyncio.timeout(WAIT_S),
            cuttable_client(stack, make_token(), quick_backoff) as cut,
        ):
            await cut.client.wait_connected()
            messages = aiter(cut.client.messages())
            await publisher.send({"n": 1}, user="alice")
            assert (await anext(messages)).data == {"n": 1}
            await publisher.send({"n": 2}, user="alice")
            second = await anext(messages)  # acks the first; the second is in hand
            await cut.proxy.cut()  # the second's ack, once handled, waits for the resume
            await cut.changes.until(Phase.BACKING_OFF, times=1)
            await publisher.send({"n": 3}, user="alice")
            await cut.proxy.restore()
            third = await anext(messages)  # the second came again: not handed over twice
            assert [second.data, third.data] == [{"n": 2}, {"n": 3}]
            await publisher.send({"n": 4}, user="alice")
            assert (await anext(messages)).data == {"n": 4}
    finally:
        await publisher.close()
