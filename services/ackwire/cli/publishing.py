"""`ackwire publish` and `ackwire send`: thin wrappers over the publisher API."""

from __future__ import annotations

from pydantic import JsonValue

from ackwire.cli.bus import connect_briefly
from ackwire.publisher import Publisher
from ackwire.settings import Settings


async def publish(settings: Settings, topic: str, data: JsonValue, *, snapshot: bool) -> int:
    """The event's seq, once stored."""
    nc = await connect_briefly(settings)
    try:
        publisher = Publisher(nc, max_frame_bytes=settings.max_frame_bytes)
        return await publisher.publish(topic, data, snapshot=snapshot)
    finally:
        await nc.close()


async def send(
    settings: Settings, data: JsonValue, *, user: str | None, session: str | None
) -> str:
    """The message's id, once stored for every addressed session."""
    nc = await connect_briefly(settings)
    try:
        publisher = Publisher(nc, max_frame_bytes=settings.max_frame_bytes)
        return (await publisher.send(data, user=user, session=session)).id
    finally:
        await nc.close()
