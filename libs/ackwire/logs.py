"""structlog set-up shared by every service and command.

Logs go to stderr (stdout carries the `ackwire started …` lines that tools
parse), as JSON unless stderr is a terminal. Context such as `gateway`,
`session_id` or `trace_id` is bound with structlog's contextvars, so every
line logged inside a connection or a job carries it.

JSON lines are made by orjson, written as bytes: the standard library's encoder
was most of a line's cost (some 6.5 µs of 13.5), on every job's path.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import stamina.instrumentation
import structlog

from ackwire.settings import LogFormat

#: Datetimes and dataclasses go to structlog's fallback (`__structlog__`, else `repr`),
#: as they did with the standard library's encoder, rather than orjson's own forms.
_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _json_line(event: dict[str, Any], *, default: Callable[[Any], Any]) -> bytes:
    try:
        return orjson.dumps(event, default=default, option=_PASSTHROUGH)
    except orjson.JSONEncodeError:
        # What orjson refuses (an integer past 64 bits, a string with a lone surrogate
        # from a client, a key that is no string) is written as it always was, rather
        # than making the caller's log call raise.
        line = json.dumps(event, default=default, ensure_ascii=False)
        return line.encode("utf-8", "backslashreplace")


def configure_logging(fmt: LogFormat = LogFormat.AUTO, level: str = "info") -> None:
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    as_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not sys.stderr.isatty())
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=_json_line),
        ]
        # Flushed a line at a time, as is the text that the standard library's logging
        # writes to sys.stderr beside it: their lines never interleave.
        logger_factory: Callable[..., Any] = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors += [structlog.dev.set_exc_info, structlog.dev.ConsoleRenderer()]
        logger_factory = structlog.WriteLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    # Our own lines say what is retried and why (`nats.unreachable`); stamina's are noise.
    stamina.instrumentation.set_on_retry_hooks([])
    # Libraries that log through the standard library (nats-py, FastStream) go to stderr too.
    logging.basicConfig(stream=sys.stderr, level=max(numeric_level, logging.WARNING))
