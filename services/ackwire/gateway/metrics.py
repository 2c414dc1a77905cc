"""The gateway's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
SENT = Counter(
    "ackwire_gateway_deliveries_sent_total",
    "Deliver frames sent for the first time, by kind (sent again: redeliveries_total)",
    ["kind"],
)
REDELIVERIES = Counter("ackwire_gateway_redeliveries_total", "Deliveries sent again")
ACK_LATENCY = Histogram(
    "ackwire_gateway_ack_latency_seconds",
    "From a delivery's first send on its connection to the client's ack, by kind. The first"
    " send, not the latest: a client slower than the ack wait, acking just after the"
    " redelivery, must not look fast",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SESSIONS_OPENED = Counter(
    "ackwire_gateway_sessions_opened_total",
    "Sessions welcomed: resumed, or new with the reason (new, unknown, expired)",
    ["outcome"],
)
TAKEOVERS = Counter(
    "ackwire_gateway_takeovers_total",
    "Connections of this gateway closed 4409 because another connection took their session",
)
