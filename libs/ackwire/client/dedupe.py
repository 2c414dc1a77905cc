"""The delivery ids a client has handed to its application: bounded, optionally on disk.

docs/protocol.md, Delivery: a message may come again (after a resume, or after
`ack_wait`), always with the same `id`; "dedupe on `id`". The most recent
`capacity` ids are kept (least recently seen first out). With a `ClientState`,
they are kept on disk too, so that a process started again on the same file
does not hand the application a result it already had.
"""

from __future__ import annotations

from collections import OrderedDict

from ackwire.client.store import ClientState

DEFAULT_CAPACITY = 10_000


class SeenIds:
    """Ids seen, the oldest forgotten first once more than `capacity` are kept."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, state: ClientState | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be 1 or more")
        self._capacity = capacity
        self._state = state
        self._ids: OrderedDict[str, None] = OrderedDict.fromkeys(
            [] if state is None else state.seen_ids(capacity)
        )

    def __contains__(self, delivery_id: object) -> bool:
        return delivery_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, delivery_id: str) -> None:
        if delivery_id in self._ids:
            self._ids.move_to_end(delivery_id)
            return
        self._ids[delivery_id] = None
        forgotten = None
        if len(self._ids) > self._capacity:
            forgotten, _ = self._ids.popitem(last=False)
        if self._state is not None:
            self._state.add_seen(delivery_id, forgotten)
