"""Client programs run in processes of their own; what they measure comes back to the
bench, and a program that fails ends the bench with one line, never a traceback."""

import pytest

from ackwire.bench import BenchFailedError, programs
from ackwire.bench.baselines import Load, PeerParams, websockets_round_trips, websockets_server
from ackwire.bus.embedded import free_port


async def test_a_client_program_measures_in_its_own_process_against_a_server_in_another() -> None:
    async with programs.started("server", websockets_server, None) as server:
        url = await server.ready(str, 30)
        params = PeerParams(url, Load(count=50, connections=2, in_flight=5))
        trips = await programs.run("client", websockets_round_trips, params, 30)
        server.tell()
        await server.result(30)
    assert len(trips.latencies) == 50
    assert all(latency > 0 for latency in trips.latencies)
    assert trips.ended > trips.began


async def test_a_program_that_fails_ends_in_one_line_naming_its_error() -> None:
    params = PeerParams(f"ws://127.0.0.1:{free_port()}", Load(count=1))
    with pytest.raises(BenchFailedError) as failed:
        await programs.run("the client", websockets_round_trips, params, 30)
    message = str(failed.value)
    assert message.startswith("the client: ConnectionRefusedError: ")
    assert "\n" not in message
