"""Which nodes are registered now, and which kinds they serve: a view kept from the bucket."""

from __future__ import annotations

import json

from nats.js.kv import KeyValue

from ackwire.bus.bucket_view import BucketView
from ackwire.bus.models import NodeRegistration


class NodeDirectory:
    """Follows the nodes bucket: joins, leaves (drain), and expiries (a node killed)."""

    def __init__(self) -> None:
        self._view = BucketView(NodeRegistration, what="node", on_change=self._derive)
        # Derived when a registration changes, not on every submit.
        self._schemas: dict[str, str] = {}

    @property
    def nodes(self) -> dict[str, NodeRegistration]:
        return dict(self._view.entries)

    def payload_schema(self, kind: str) -> str | None:
        """The JSON text of the payload schema a node serving `kind` registered ("{}" when
        it registered none); `None` when no node serves `kind`."""
        return self._schemas.get(kind)

    async def follow(self, kv: KeyValue) -> None:
        await self._view.follow(kv)

    async def stop(self) -> None:
        await self._view.stop()

    def _derive(self) -> None:
        self._schemas = {
            kind: json.dumps(node.schemas.get(kind, {}), sort_keys=True)
            for node in self._view.entries.values()
            for kind in node.kinds
        }
