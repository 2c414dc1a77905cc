"""The gateway's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTIONS = Gauge("ackwire_gateway_connections", "Client connections past welcome, now open")
CLOSES = Counter(
    "ackwire_gateway_closes_total",
    "Client connections closed by the gateway, by close code",
    ["code"],
)
REFUSALS = Counter(
    "ackwire_gateway_refusals_total",
    "Client requests answered with an error frame, by code (rate_limited, no_such_kind…)",
    ["code"],
)
DELIVERED = Counter(
    "ackwire_gateway_delivered_total",
    "Messages the client acked and the store confirmed removing, by kind",
    ["kind"],
)
REDELIVERIES = Counter("ackwire_gateway_redeliveries_total", "Deliveries sent again")
SESSIONS_OPENED = Counter(
    "ackwire_gateway_sessions_opened_total",
    "Sessions welcomed: resumed, or new with the reason (new, unknown, expired)",
    ["outcome"],
)
TAKEOVERS = Counter(
    "ackwire_gateway_takeovers_total",
    "Connections of this gateway closed 4409 because another connection took their session",
)
