"""The Python SDK against a running stack (run after `make up`): a job with its progress,
then a topic's snapshot and live events, with reconnects left to the SDK.

.venv/bin/python docs/examples/sdk_client.py \
    "$(.venv/bin/ackwire token --sub alice --topics 'pipeline.>')"

Kill a gateway meanwhile (`kill -9` its pid from `make up`): the client resumes on
the other one by itself, and the job's result is printed once. Publish to the topic
from another terminal to see live events:

.venv/bin/ackwire publish --topic pipeline.42 --data '{"percent": 40}' --snapshot
"""

import asyncio
import contextlib
import sys

from ackwire.client import Client, Deliver, Gap, StateChanged

GATEWAYS = ["ws://127.0.0.1:8765", "ws://127.0.0.1:8766"]


def show_state(change: StateChanged) -> None:
    print(f"[{change.phase.value}] {change.gateway or ''} {change.why}")


def show_progress(progress: Deliver) -> None:
    print("progress", progress.data)


async def main(token: str) -> None:
    async with Client(GATEWAYS, token=token, on_state_change=show_state) as client:
        result = await client.run("sleep", {"seconds": 5}, timeout=60, on_progress=show_progress)
        print("result", result)
        with contextlib.suppress(TimeoutError):  # follow the topic for half a minute
            async with asyncio.timeout(30):
                async for event in client.subscribe("pipeline.42"):
                    if isinstance(event, Gap):
                        print(f"events {event.after} < seq < {event.before} were lost")
                    else:
                        print("snapshot" if event.snapshot else "event", event.seq, event.data)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
