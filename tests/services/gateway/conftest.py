from collections.abc import AsyncIterator

import pytest

from ackwire.gateway.server import Gateway
from ackwire.settings import Settings


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async with Gateway(settings, name="gw-test", host="127.0.0.1", port=0) as gw:
        yield gw
