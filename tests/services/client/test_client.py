"""`ackwire.client.Client` against a real gateway, scheduler and node (no mocks): a job's
result once, a submit made while the network is cut, a token that expires mid-session."""

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ackwire.client import Backoff, Client, Deliver, Event, JobFailedError, Phase, StateChanged
from ackwire.publisher import Publisher
from services.jobs.conftest import Stack
from support.logs import LogWatch
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


#: A client process that runs until killed: it prints its session, then each message
#: (on lines of their own: the SDK's log lines go to stdout too).
CLIENT_PROCESS = """
import asyncio, json, sys
from pathlib import Path
from ackwire.client import Client

async def main() -> None:
    url, token, path = sys.argv[1:]
    async with Client(url, token=token, state_path=Path(path)) as client:
        await client.wait_connected()
        print("out", json.dumps({"session": client.session_id}), flush=True)
        async for message in client.messages():
            print("out", json.dumps(message.data), flush=True)

asyncio.run(main())
"""


async def printed(stdout: asyncio.StreamReader) -> object:
    while not (line := await stdout.readline()).startswith(b"out "):
        assert line, "the client process ended"
    return json.loads(line.removeprefix(b"out "))


async def test_a_process_killed_and_started_again_resumes_its_session_and_gets_what_it_is_owed(
    stack: Stack, make_token: Callable[..., str], logs: LogWatch, tmp_path: Path
) -> None:
    state = tmp_path / "client.db"
    token = make_token()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT_PROCESS, stack.gateway.url, token, str(state),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    publisher = await Publisher.connect(stack.settings.nats_url)
    try:
        async with asyncio.timeout(WAIT_S):
            session_id = (await printed(process.stdout))["session"]  # type: ignore[index]
            first = await publisher.send({"n": 0}, user="alice")
            assert await printed(process.stdout) == {"n": 0}
            await logs.wait_for("delivery.delivered", id=first.id, timeout=WAIT_S)
            process.kill()  # no bye, no close: a crash
            await process.wait()
            await logs.wait_for("session.let_go", session_id=session_id, state="detached")
            for n in (1, 2):  # owed to the session while no process holds it
                await publisher.send({"n": n}, user="alice")
            async with Client(stack.gateway.url, token=token, state_path=state) as again:
                await again.wait_connected()
                assert again.session_id == session_id
                messages = aiter(again.messages())
                assert [(await anext(messages)).data for _ in range(2)] == [{"n": 1}, {"n": 2}]
    finally:
        await publisher.close()
        with contextlib.suppress(ProcessLookupError):
            process.kill()


async def test_a_client_closed_keeping_its_session_is_resumed_by_the_next_one(
    stack: Stack, make_token: Callable[..., str], logs: LogWatch, tmp_path: Path
) -> None:
    state = tmp_path / "client.db"
    publisher = await Publisher.connect(stack.settings.nats_url)
    try:
        async with asyncio.timeout(WAIT_S):
            first = Client(stack.gateway.url, token=make_token(), state_path=state)
            await first.__aenter__()
            await first.wait_connected()
            session_id = first.session_id
            await first.close(end_session=False)  # a deploy's restart: no bye
            await logs.wait_for("session.let_go", session_id=session_id, state="detached")
            await publisher.send({"n": 1}, user="alice")
            async with Client(stack.gateway.url, token=make_token(), state_path=state) as again:
                await again.wait_connected()
                assert again.session_id == session_id
                assert (await anext(aiter(again.messages()))).data == {"n": 1}
            # That one said bye: the next process starts a session of its own.
            async with Client(stack.gateway.url, token=make_token(), state_path=state) as third:
                await third.wait_connected()
                assert third.session_id != session_id
    finally:
        await publisher.close()


async def test_submits_past_the_rate_limit_are_retried_and_all_run_once(
    stack: Stack, make_token: Callable[..., str], logs: LogWatch
) -> None:
    """The stack lets a session submit 5 at once, then 1 a second: the SDK submits the
    rest again, with their keys, until they are stored, and each job runs once."""
    async with (
        asyncio.timeout(WAIT_S),
        Client(stack.gateway.url, token=make_token()) as client,
    ):
        results = await asyncio.gather(
            *(client.run("echo", {"i": i}, timeout=WAIT_S) for i in range(7))
        )
    assert results == [{"i": i} for i in range(7)]
    assert logs.named("client.submit_retried"), "nothing was refused: the test tests nothing"
    assert len(logs.named("job.accepted")) == 7
