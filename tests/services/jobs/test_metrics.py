"""`/metrics` under real traffic: the counters and histograms move as the jobs do."""

import asyncio
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from ackwire.wire.codes import ErrorCode
from ackwire.wire.frames import Accepted, Error, Submit
from support.client import receive
from support.logs import LogWatch

from .conftest import Stack
from .test_jobs import connect

MakeToken = Callable[..., str]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(ws_url: str) -> Samples:
    """Every sample of the gateway's `/metrics` (a plain HTTP GET on its WebSocket port)."""
    host, port = ws_url.removeprefix("ws://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(5):
        response = await reader.read()
    writer.close()
    head, _, body = response.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_job_and_delivery_metrics_count_what_happened(
    stack: Stack, make_token: MakeToken, logs: LogWatch
) -> None:
    before = await scrape(stack.gateway.url)
    client = await connect(stack.gateway.url, make_token())
    during = await scrape(stack.gateway.url)
    assert value(during, "ackwire_gateway_connections") == (
        value(before, "ackwire_gateway_connections") + 1
    )
    frames = [Submit(ref=f"e-{i}", kind="echo", payload={"i": i}) for i in range(3)]
    frames.append(Submit(ref="f", kind="fail", payload={"message": "no"}))
    refused = await client.submit(Submit(ref="t", kind="teleport", payload={}))
    assert isinstance(refused, Error)
    await client.ws.send("{not json")
    bad = await receive(client.ws)
    assert isinstance(bad, Error)
    assert bad.code is ErrorCode.BAD_FRAME
    for frame in frames:
        accepted = await client.submit(frame)
        assert isinstance(accepted, Accepted)
        await client.until_terminal(accepted.job_id)
        # Counted once the client's ack is confirmed; the scrape must see it.
        await logs.wait_for("delivery.delivered", job_id=accepted.job_id)
    after = await scrape(stack.gateway.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ackwire_jobs_ended_total", state="done") == 3
    assert moved("ackwire_jobs_ended_total", state="failed") == 1
    assert moved("ackwire_job_duration_seconds_count", state="done") == 3
    assert moved("ackwire_job_duration_seconds_bucket", state="done", le="+Inf") == 3
    # Three echo attempts, and every attempt of the failing job.
    assert moved("ackwire_job_attempts_started_total") == 3 + stack.settings.max_attempts
    assert moved("ackwire_gateway_delivered_total", kind="result") == 3
    assert moved("ackwire_gateway_delivered_total", kind="error") == 1
    assert moved("ackwire_gateway_sessions_opened_total", outcome="new") == 1
    assert moved("ackwire_bus_errors_total", error="unavailable") == 0
    assert moved("ackwire_gateway_refusals_total", code="no_such_kind") == 1
    assert moved("ackwire_gateway_refusals_total", code="bad_frame") == 1
    await client.ws.close()
