"""The JSON log lines: one object a line, with the bound context, the level and the time."""

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from ackwire.logs import configure_logging
from ackwire.settings import LogFormat


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    """What `configure_logging(LogFormat.JSON)` writes; the test's own set-up restored."""
    written = io.BytesIO()
    # Held here: pytest puts its own capture back on sys.stderr between set-up and the
    # test, and a wrapper collected closes `written`.
    text = io.TextIOWrapper(written, encoding="utf-8")
    monkeypatch.setattr("sys.stderr", text)
    previous = structlog.get_config()
    configure_logging(LogFormat.JSON)
    try:
        yield written
    finally:
        structlog.configure(**previous)
        structlog.contextvars.clear_contextvars()


def lines(written: io.BytesIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in written.getvalue().decode().splitlines()]


def test_a_line_carries_its_fields_the_bound_context_level_and_time(stderr: io.BytesIO) -> None:
    structlog.contextvars.bind_contextvars(gateway="gw-1", user="zoë")
    structlog.get_logger("test").info("delivery.delivered", seq=12, redelivered=False, id=None)
    [line] = lines(stderr)
    timestamp = line.pop("timestamp")
    assert line == {
        "gateway": "gw-1",
        "user": "zoë",
        "event": "delivery.delivered",
        "seq": 12,
        "redelivered": False,
        "id": None,
        "level": "info",
    }
    assert timestamp.endswith("Z")
    assert abs(datetime.fromisoformat(timestamp) - datetime.now(UTC)).total_seconds() < 60
    assert "zoë".encode() in stderr.getvalue()  # UTF-8, not escaped


def test_values_json_has_no_form_for_are_written_by_their_repr(stderr: io.BytesIO) -> None:
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    structlog.get_logger("test").info("odd.values", at=at, where={1, 2} - {2})
    [line] = lines(stderr)
    assert line["at"] == repr(at)
    assert line["where"] == "{1}"


def test_what_orjson_refuses_is_still_written(stderr: io.BytesIO) -> None:
    log = structlog.get_logger("test")
    log.info("big.number", n=2**70)
    log.info("odd.client", user="\ud800")  # a lone surrogate, as JSON from a client allows
    big, odd = lines(stderr)
    assert big["n"] == 2**70
    assert odd["event"] == "odd.client"


def test_an_exception_is_written_as_structured_frames(stderr: io.BytesIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("test").exception("it.failed")
    [line] = lines(stderr)
    assert line["event"] == "it.failed"
    [exception] = line["exception"]
    assert exception["exc_type"] == "ValueError"
    assert exception["exc_value"] == "boom"
