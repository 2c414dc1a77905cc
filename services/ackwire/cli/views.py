"""`ackwire sessions` and `ackwire undelivered`: the operator's views, printed.

Text for people (a table), `--json` for tools (one object a line). An
unreachable NATS is one line on stderr and exit 1, within five seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pydantic import BaseModel

from ackwire.cli.bus import connect_briefly
from ackwire.sessions.overview import session_summaries, undelivered
from ackwire.settings import Settings


async def print_sessions(settings: Settings, *, as_json: bool) -> None:
    nc = await connect_briefly(settings)
    try:
        summaries = await session_summaries(nc)
    finally:
        await nc.close()
    rows = [
        (
            s.session_id,
            s.user,
            s.state.value,
            s.gateway,
            "yes" if s.connected else "no",
            s.since.isoformat(timespec="seconds"),
            str(s.owed),
        )
        for s in summaries
    ]
    _print(
        summaries,
        rows,
        ("SESSION", "USER", "STATE", "GATEWAY", "CONNECTED", "SINCE", "OWED"),
        as_json=as_json,
    )


async def print_undelivered(settings: Settings, session_id: str | None, *, as_json: bool) -> None:
    nc = await connect_briefly(settings)
    try:
        messages = [message async for message in undelivered(nc, session_id)]
    finally:
        await nc.close()
    rows = [
        (m.session_id, m.user or "?", str(m.seq), m.id, m.kind, f"{m.age_s:.1f}") for m in messages
    ]
    _print(messages, rows, ("SESSION", "USER", "SEQ", "ID", "KIND", "AGE_S"), as_json=as_json)


def _print(
    models: Sequence[BaseModel],
    rows: Sequence[tuple[str, ...]],
    header: tuple[str, ...],
    *,
    as_json: bool,
) -> None:
    if as_json:
        for model in models:
            sys.stdout.write(model.model_dump_json() + "\n")
        return
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        sys.stdout.write(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )
