"""Prometheus metrics of every service's bus: its NATS connection, and what the bus failed."""

from __future__ import annotations

from prometheus_client import Counter

NATS_DISCONNECTS = Counter(
    "ackwire_nats_disconnects_total", "Times the NATS connection was lost (not drained)"
)
NATS_RECONNECTS = Counter("ackwire_nats_reconnects_total", "Times the NATS connection came back")
BUS_ERRORS = Counter(
    "ackwire_bus_errors_total",
    "Bus calls that failed: `unavailable` (no answer, no connection, a timeout) or `rejected`"
    " (the store answered with an error)",
    ["error"],
)
