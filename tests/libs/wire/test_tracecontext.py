"""W3C trace context as the protocol carries it."""

import pytest

from ackwire.wire.tracecontext import (
    new_traceparent,
    trace_id_of,
    traceparent_problem,
    usable_or_none,
)

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_w3c_traceparent_is_usable_and_names_its_trace() -> None:
    assert traceparent_problem(GOOD) is None
    assert trace_id_of(GOOD) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert usable_or_none(GOOD) == GOOD


@pytest.mark.parametrize(
    "value",
    [
        "",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # another version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent
        GOOD + "-extra",
    ],
)
def test_anything_else_is_not(value: str) -> None:
    assert traceparent_problem(value) is not None
    assert usable_or_none(value) is None


def test_a_new_context_continues_a_trace_id_or_starts_a_trace() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    kept = new_traceparent(trace_id)
    assert traceparent_problem(kept) is None
    assert trace_id_of(kept) == trace_id
    assert new_traceparent(trace_id) != kept  # a new parent id each time
    for not_a_trace_id in (None, "t-race", "0" * 32):
        fresh = new_traceparent(not_a_trace_id)
        assert traceparent_problem(fresh) is None
        assert trace_id_of(fresh) != not_a_trace_id
