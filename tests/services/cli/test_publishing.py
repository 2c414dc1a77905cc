"""`ackwire publish` and `ackwire send`: one line out (the seq, the id) once stored."""

import json
from collections.abc import Callable

import pytest

from ackwire.bus.embedded import EmbeddedNats, free_port
from ackwire.gateway.server import Gateway
from ackwire.wire.frames import Event, Subscribe, Subscribed
from support.client import next_deliver, receive, send, welcomed
from support.processes import AckwireProcess


async def test_publish_prints_the_seq_and_a_snapshot_reaches_later_subscribers(
    nats_server: EmbeddedNats, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    process = await AckwireProcess.start(
        "publish", "--topic", "pipeline.42", "--data", '{"percent": 40}', "--snapshot",
        "--nats-url", nats_server.url,
    )  # fmt: skip
    assert await process.exit_code() == 0, process.stderr_text
    [seq] = process.stdout_lines
    ws, _ = await welcomed(gateway.url, make_token(topics=["pipeline.>"]))
    await send(ws, Subscribe(ref="1", topic="pipeline.42"))
    assert isinstance(await receive(ws), Subscribed)
    snapshot = await receive(ws)
    assert isinstance(snapshot, Event)
    assert (snapshot.seq, snapshot.data, snapshot.snapshot) == (int(seq), {"percent": 40}, True)
    await ws.close()


async def test_send_prints_the_id_of_the_deliver_frame(
    nats_server: EmbeddedNats, gateway: Gateway, make_token: Callable[..., str]
) -> None:
    ws, _ = await welcomed(gateway.url, make_token("alice"))
    process = await AckwireProcess.start(
        "send", "--user", "alice", "--data", '{"text": "hi"}', "--nats-url", nats_server.url
    )
    assert await process.exit_code() == 0, process.stderr_text
    [message_id] = process.stdout_lines
    deliver = await next_deliver(ws)
    assert (deliver.id, deliver.kind, deliver.data) == (message_id, "message", {"text": "hi"})
    await ws.close()


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["publish", "--topic", "a", "--data", "{nope"], 2, "not JSON"),
        (["publish", "--topic", "a.>", "--data", "{}"], 2, "wildcards"),
        (["send", "--data", "{}"], 2, "--user"),
        (["send", "--user", "a", "--session", "s-x", "--data", "{}"], 2, "not allowed with"),
        (["send", "--user", "nobody", "--data", "{}"], 1, "no live or resumable session"),
    ],
)
async def test_bad_input_is_one_line_and_no_traceback(
    nats_server: EmbeddedNats, gateway: Gateway, args: list[str], code: int, says: str
) -> None:
    process = await AckwireProcess.start(*args, "--nats-url", nats_server.url)
    assert await process.exit_code() == code
    stderr = "".join(process.stderr_text)
    assert says in stderr
    assert "Traceback" not in stderr
    assert process.stdout_lines == []


@pytest.mark.parametrize(
    "args", [["send", "--user", "alice"], ["publish", "--topic", "pipeline.42"]]
)
async def test_data_larger_than_clients_accept_exits_2_in_one_line(
    nats_server: EmbeddedNats, args: list[str]
) -> None:
    process = await AckwireProcess.start(
        *args, "--data", json.dumps({"text": "x" * 2000}), "--nats-url", nats_server.url,
        env={"ACKWIRE_MAX_FRAME_BYTES": "1024"},
    )  # fmt: skip
    assert await process.exit_code() == 2
    [line] = process.stderr_text
    assert line.startswith(f"ackwire {args[0]}: the ")
    assert "too large" in line
    assert "clients accept at most 1024 (max_frame_bytes)" in line
    assert process.stdout_lines == []


async def test_an_unreachable_nats_exits_1() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    process = await AckwireProcess.start("send", "--user", "a", "--data", "{}", "--nats-url", url)
    assert await process.exit_code() == 1
    [line] = process.stderr_text
    assert "NATS unreachable" in line
