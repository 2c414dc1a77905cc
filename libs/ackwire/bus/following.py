"""A subscription's messages, parsed into models, for `async for`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

T = TypeVar("T")


class Following(Generic[T]):
    """`async for item in following: …`, then `await following.close()`. Subscribed when
    it is made, so nothing after that moment is missed."""

    def __init__(self, sub: Subscription, parse: Callable[[Msg], T]) -> None:
        self._sub = sub
        self._parse = parse

    def __aiter__(self) -> Following[T]:
        return self

    async def __anext__(self) -> T:
        return self._parse(await self._sub.messages.__anext__())

    async def close(self) -> None:
        await self._sub.unsubscribe()
