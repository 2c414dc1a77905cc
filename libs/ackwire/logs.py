"""structlog set-up shared by every service and command.

Logs go to stderr (stdout carries the `ackwire started …` lines that tools
parse), as JSON unless stderr is a terminal. Context such as `gateway`,
`session_id` or `trace_id` is bound with structlog's contextvars, so every
line logged inside a connection or a job carries it.
"""

from __future__ import annotations

import logging
import sys

import stamina.instrumentation
import structlog

from ackwire.settings import LogFormat


def configure_logging(fmt: LogFormat = LogFormat.AUTO, level: str = "info") -> None:
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    as_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if as_json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Our own lines say what is retried and why (`nats.unreachable`); stamina's are noise.
    stamina.instrumentation.set_on_retry_hooks([])
    # Libraries that log through the standard library (nats-py, FastStream) go to stderr too.
    logging.basicConfig(stream=sys.stderr, level=max(numeric_level, logging.WARNING))
