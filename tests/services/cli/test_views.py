"""`ackwire sessions` and `ackwire undelivered`: who is connected where, what is owed to
whom, as a table or one JSON object a line; an unreachable NATS is one line and exit 1."""

import json
import time
from collections.abc import Callable

import nats

from ackwire.bus.embedded import EmbeddedNats, free_port
from ackwire.bus.models import Delivery
from ackwire.bus.session_queue import SessionQueue
from ackwire.gateway.server import Gateway
from ackwire.wire.frames import Bye
from support.client import closed_with, next_deliver, send, welcomed
from support.processes import AckwireProcess


async def run(*args: str) -> AckwireProcess:
    process = await AckwireProcess.start(*args)
    assert await process.exit_code() == 0, process.stderr_text
    return process


async def test_sessions_shows_who_is_connected_where(
    nats_server: EmbeddedNats, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    online, first = await welcomed(gateway.url, make_token("alice"))
    gone, second = await welcomed(gateway.url, make_token("bob@example.com"))
    await gone.close()
    await closed_with(gone)
    listed = await run("sessions", "--json", "--nats-url", nats_server.url)
    rows = {row["session_id"]: row for row in map(json.loads, listed.stdout_lines)}
    assert rows[first.session_id]["user"] == "alice"
    assert rows[first.session_id]["gateway"] == "gw-test"
    assert rows[first.session_id]["connected"] is True
    assert rows[second.session_id]["user"] == "bob@example.com"
    assert rows[second.session_id]["connected"] is False
    assert rows[second.session_id]["state"] == "detached"

    table = await run("sessions", "--nats-url", nats_server.url)
    assert table.stdout_lines[0].split() == [
        "SESSION", "USER", "STATE", "GATEWAY", "CONNECTED", "SINCE", "OWED"
    ]  # fmt: skip
    assert any(first.session_id in line and " yes " in line for line in table.stdout_lines)
    await online.close()


async def test_undelivered_lists_what_is_owed_how_long_and_to_whom(
    nats_server: EmbeddedNats, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    ws, welcome = await welcomed(gateway.url, make_token("carol"))
    nc = await nats.connect(nats_server.url)
    queue = SessionQueue(nc, nc.jetstream())
    seq = await queue.put(
        Delivery(id="m-1", kind="message", session_id=welcome.session_id, data={"x": 1})
    )
    await next_deliver(ws)
    await send(ws, Bye())  # ended with the message unacked: kept, and listed
    await closed_with(ws)
    await nc.close()
    listed = await run(
        "undelivered", "--session", welcome.session_id, "--json", "--nats-url", nats_server.url
    )
    [row] = [json.loads(line) for line in listed.stdout_lines]
    assert row["session_id"] == welcome.session_id
    assert row["user"] == "carol"  # from the session's record
    assert (row["id"], row["seq"], row["kind"]) == ("m-1", seq, "message")
    assert row["age_s"] >= 0
    everything = await run("undelivered", "--nats-url", nats_server.url)
    assert any("m-1" in line and "carol" in line for line in everything.stdout_lines[1:])


async def test_an_unreachable_nats_is_one_line_and_exit_1_within_5_s() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    for command in ("sessions", "undelivered"):
        began = time.monotonic()
        process = await AckwireProcess.start(command, "--nats-url", url)
        assert await process.exit_code() == 1
        assert time.monotonic() - began < 5 + 2  # the start of Python itself included
        assert process.stdout_lines == []
        [line] = process.stderr_text
        assert "NATS unreachable" in line
        assert "Traceback" not in line


async def test_a_bad_session_id_exits_2() -> None:
    process = await AckwireProcess.start("undelivered", "--session", "s-../>")
    assert await process.exit_code() == 2
    assert "not a session id" in "".join(process.stderr_text)


async def test_the_views_print_no_log_lines(nats_server: EmbeddedNats, gateway: Gateway) -> None:
    listed = await run("sessions", "--nats-url", nats_server.url)
    assert listed.stderr_text == []
