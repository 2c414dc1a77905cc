"""W3C trace context (https://www.w3.org/TR/trace-context/), as the protocol carries it:
a `traceparent` value, parsed and made, with no tracing library."""

from __future__ import annotations

import re
import secrets

#: `version-trace_id-parent_id-flags`, version 00.
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def traceparent_problem(value: str) -> str | None:
    """Why `value` is not a usable `traceparent` (None: it is)."""
    match = TRACEPARENT.fullmatch(value)
    if match is None:
        return "traceparent must be 00-<32 hex>-<16 hex>-<2 hex>, lowercase"
    if match.group(1) == _ZERO_TRACE or match.group(2) == _ZERO_SPAN:
        return "traceparent has an all-zero trace id or parent id"
    return None


def usable_traceparent(value: str) -> str:
    """`value`, if it is a usable `traceparent` (a pydantic validator)."""
    problem = traceparent_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def usable_or_none(value: str | None) -> str | None:
    """`value` if it is a usable `traceparent` (a header from the bus), else None."""
    return value if value is not None and traceparent_problem(value) is None else None


def trace_id_of(traceparent: str) -> str:
    return traceparent.split("-")[1]


def new_traceparent(trace_id: str | None = None) -> str:
    """A context to start from: in `trace_id`'s trace if that is a W3C trace id, else in
    a new one."""
    if trace_id is None or not _TRACE_ID.fullmatch(trace_id) or trace_id == _ZERO_TRACE:
        trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"
