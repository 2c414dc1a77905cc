"""`ackwire top`: the stack at a glance, live: gateways and their sessions, delivery and
ack rates, jobs by state, and the sessions owed the most (or, after `o`, owed the oldest
messages), each with since when and why. `q` quits.

Every two seconds it reads the same truth `ackwire sessions` reads (the session
records, the gateways' leases, the queue stream's state, the work consumers), so it
works against any NATS URL and needs no service to ask. Rates are the difference
between two readings: messages stored per second, and messages that left the queue
(acked, or expired) per second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from nats.aio.client import Client
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Footer, Static

from ackwire.cli.bus import connect_briefly
from ackwire.sessions.overview import (
    SessionSummary,
    StackOverview,
    longest_owed,
    owed_since,
    stack_overview,
)
from ackwire.sessions.record import SessionState
from ackwire.settings import Settings

_EVERY_S = 2.0
#: Sessions listed: one screenful.
_SHOWN = 10


@dataclass(frozen=True, slots=True)
class Rates:
    stored_per_s: float
    left_per_s: float
    """Messages that left the queue: acked by their clients (or expired)."""

    @classmethod
    def between(cls, before: StackOverview, now: StackOverview) -> Rates:
        seconds = max((now.at - before.at).total_seconds(), 1e-3)
        stored = max(now.stored_total - before.stored_total, 0)
        left = max(stored - (now.owed_total - before.owed_total), 0)
        return cls(stored / seconds, left / seconds)


def gateway_rows(overview: StackOverview) -> list[tuple[str, str, str, str]]:
    """Per live gateway: sessions connected, sessions it last held that wait for a
    resume, and what its connected sessions are owed."""
    connected: Counter[str] = Counter()
    detached: Counter[str] = Counter()
    owed: Counter[str] = Counter()
    for s in overview.sessions:
        if s.connected:
            connected[s.gateway] += 1
            owed[s.gateway] += s.owed
        elif s.state.value == "detached":
            detached[s.gateway] += 1
    return [(gw, str(connected[gw]), str(detached[gw]), str(owed[gw])) for gw in overview.gateways]


def most_owed(overview: StackOverview) -> list[str]:
    owing = sorted((s for s in overview.sessions if s.owed), key=lambda s: -s.owed)
    return [s.session_id for s in owing[:_SHOWN]]


def owed_rows(
    overview: StackOverview, since: dict[str, datetime], shown: Sequence[str], ack_wait_s: float
) -> list[tuple[str, str, str, str, str, str]]:
    """A row per session in `shown`: who, where, how much is owed, since when, and why
    (which also says whether a connection holds it).
    `since` has when each one's oldest owed message was stored."""
    sessions = {s.session_id: s for s in overview.sessions}
    rows = []
    for session_id in shown:
        session = sessions.get(session_id)
        stored_at = since.get(session_id)
        age_s = None if stored_at is None else (overview.at - stored_at).total_seconds()
        rows.append(
            (
                session_id,
                "-" if session is None else session.user,
                "-" if session is None else session.gateway,
                "?" if session is None else str(session.owed),
                "-" if age_s is None else f"{age_s:.0f} s ago",
                why_owed(session, age_s, ack_wait_s),
            )
        )
    return rows


def why_owed(session: SessionSummary | None, age_s: float | None, ack_wait_s: float) -> str:
    """Why a session's messages are still owed, as far as the records tell; a few words,
    to fit 80 columns (docs/operations.md says what each means)."""
    if session is None:
        return "no session"  # its messages stay until their retention
    if not session.connected:
        if session.state is SessionState.DETACHED:
            return "client away"
        if session.state is SessionState.LIVE:
            return "gateway gone"  # not yet resumed elsewhere
        return "session ended"
    if age_s is not None and age_s > ack_wait_s:
        return "unacked, resent"
    return "awaiting ack"


def summary_line(overview: StackOverview, rates: Rates | None) -> str:
    oldest = (
        "nothing owed"
        if overview.oldest_owed_at is None
        else f"oldest owed {(overview.at - overview.oldest_owed_at).total_seconds():.0f} s ago"
    )
    flow = (
        "rates after the next reading"
        if rates is None
        else f"stored {rates.stored_per_s:,.0f}/s  delivered {rates.left_per_s:,.0f}/s"
    )
    return (
        f"{len(overview.gateways)} gateways  {len(overview.sessions)} sessions  "
        f"{overview.owed_total:,} messages owed ({oldest})  {flow}"
    )


class StackTop(App[None]):
    TITLE = "ackwire top"
    BINDINGS = [  # noqa: RUF012 (Textual's own class attribute)
        ("q", "quit", "quit"),
        ("o", "toggle_order", "most owed / oldest owed"),
    ]
    CSS = "DataTable { height: auto; margin-bottom: 1; }"

    def __init__(self, nc: Client, url: str, ack_wait_s: float) -> None:
        super().__init__()
        self._nc = nc
        self.sub_title = url
        self._ack_wait_s = ack_wait_s
        self._previous: StackOverview | None = None
        self._by_age = False

    def compose(self) -> ComposeResult:
        yield Static("reading…", id="summary")
        yield Static("gateways")
        yield DataTable(id="gateways")
        yield Static("jobs")
        yield DataTable(id="jobs")
        yield Static(id="owed-title")
        yield DataTable(id="owed")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#gateways", DataTable).add_columns(
            "GATEWAY", "CONNECTED", "WAITING FOR RESUME", "OWED"
        )
        self.query_one("#jobs", DataTable).add_columns("WORK CONSUMER", "WAITING", "RUNNING")
        self.query_one("#owed", DataTable).add_columns(
            "SESSION", "USER", "GATEWAY", "OWED", "OLDEST", "WHY"
        )
        await self._refresh()
        self.set_interval(_EVERY_S, self._refresh)

    async def _refresh(self) -> None:
        overview = await stack_overview(self._nc)
        rates = None if self._previous is None else Rates.between(self._previous, overview)
        self._previous = overview
        self.query_one("#summary", Static).update(summary_line(overview, rates))
        _fill(self.query_one("#gateways", DataTable), gateway_rows(overview))
        jobs = [(j.kind_consumer, str(j.waiting), str(j.running)) for j in overview.jobs]
        _fill(self.query_one("#jobs", DataTable), jobs)
        if self._by_age:
            since = await longest_owed(self._nc, _SHOWN)
            shown = list(since)
            title = f"sessions owed the oldest messages (top {_SHOWN}; o: the most owed)"
        else:
            shown = most_owed(overview)
            since = await owed_since(self._nc, shown)
            title = f"sessions owed the most (top {_SHOWN}; o: the oldest owed)"
        self.query_one("#owed-title", Static).update(title)
        _fill(
            self.query_one("#owed", DataTable),
            owed_rows(overview, since, shown, self._ack_wait_s),
        )

    async def action_toggle_order(self) -> None:
        self._by_age = not self._by_age
        await self._refresh()


def _fill(table: DataTable[str], rows: Sequence[tuple[str, ...]]) -> None:
    table.clear()
    table.add_rows(rows)


async def run_top(settings: Settings) -> None:
    nc = await connect_briefly(settings)
    try:
        await StackTop(nc, settings.nats_url, settings.ack_wait_s).run_async()
    finally:
        await nc.close()
