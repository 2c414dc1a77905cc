"""What a scenario reports: figures beside their baselines, as a table and as JSON.

A ratio is always ackwire's figure divided by the baseline's: below 1 is slower for a
rate, faster for a latency. Percentiles are by nearest rank, so each is a value that
was measured. A scenario may declare targets, bounds on such ratios, and the report
says which were met.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Units of counts: a count of what went wrong may be 0; any other figure is positive.
COUNT = "count"


def now() -> float:
    """Seconds on the machine's monotonic clock, which every process on it shares."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class RoundTrips:
    """Operations, each timed from its start to its answer, and the span they took."""

    latencies: list[float]
    began: float
    ended: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / (self.ended - self.began)

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    @classmethod
    def merged(cls, parts: Sequence[RoundTrips]) -> RoundTrips:
        """Parts run side by side (one per connection) as one."""
        return cls(
            [latency for part in parts for latency in part.latencies],
            min(part.began for part in parts),
            max(part.ended for part in parts),
        )


async def closed_loop(
    count: int, in_flight: int, one: Callable[[int], Awaitable[None]]
) -> RoundTrips:
    """`one(0)` … `one(count - 1)`, exactly `in_flight` at a time, each timed."""
    latencies: list[float] = []
    indices = iter(range(count))

    async def worker() -> None:
        for i in indices:
            began = now()
            await one(i)
            latencies.append(now() - began)

    began = now()
    await asyncio.gather(*(worker() for _ in range(min(in_flight, count))))
    return RoundTrips(latencies, began, now())


async def open_loop(
    count: int, rate: float, one: Callable[[int], Awaitable[None]], *, phase: float = 0.0
) -> RoundTrips:
    """`one(0)` … `one(count - 1)`, started `rate` per second whether or not the earlier ones
    are done, each timed from when it was due (so a stall shows as latency, not as fewer
    operations offered). `phase` (0 to 1) shifts each start by that share of the interval:
    open loops side by side, each with its own phase, offer their load evenly spread
    instead of in bursts of one from each."""
    latencies: list[float] = []
    began = now()

    async def due(i: int) -> None:
        at = began + (i + phase) / rate
        await asyncio.sleep(max(0.0, at - now()))  # the load's schedule, not a wait for an event
        await one(i)
        latencies.append(now() - at)

    await asyncio.gather(*(due(i) for i in range(count)))
    return RoundTrips(latencies, began, now())


@dataclass(frozen=True, slots=True)
class Measured:
    key: str
    """Its name in the JSON."""
    label: str
    """Its name in the table."""
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Peer:
    """What a baseline is: its key in the JSON, its name, and what it does."""

    key: str
    name: str
    does: str = ""

    @property
    def label(self) -> str:
        """Its name in the table."""
        return f"{self.name}: {self.does}" if self.does else self.name

    def key_of(self, figure_key: str) -> str:
        """The key of this peer's figure for the one of ackwire keyed `figure_key`."""
        return f"{self.key}_{figure_key}"

    def measured(self, figure_key: str, value: float, unit: str) -> Measured:
        """This peer's figure for the one of ackwire keyed `figure_key`."""
        return Measured(self.key_of(figure_key), self.label, value, unit)


@dataclass(frozen=True, slots=True)
class Target:
    """A bound on the ratio of one of ackwire's figures to a baseline's figure of the same
    key: at least `bound` for a rate (ackwire does that share of what the baseline does),
    at most `bound` for a latency (ackwire takes no more than that many times as long)."""

    name: str
    """What is bounded, in words: "jobs closed loop"."""
    figure: str
    """The key of ackwire's figure."""
    baseline: Peer
    bound: float
    is_rate: bool
    """A rate: the ratio must be at least `bound`; a latency: at most `bound`."""

    @classmethod
    def rate(cls, name: str, figure: str, baseline: Peer, *, at_least: float) -> Target:
        return cls(name, figure, baseline, at_least, is_rate=True)

    @classmethod
    def latency(cls, name: str, figure: str, baseline: Peer, *, at_most: float) -> Target:
        return cls(name, figure, baseline, at_most, is_rate=False)

    @property
    def statement(self) -> str:
        relation = ">=" if self.is_rate else "<="
        return f"{self.name} {relation} {self.bound:g}x {self.baseline.name}"

    def judged(self, figures: Sequence[Figure]) -> Judged:
        """Against a report's figures; met only if both figures were measured."""
        baseline_key = self.baseline.key_of(self.figure)
        for figure in figures:
            if figure.ackwire.key != self.figure:
                continue
            for baseline in figure.baselines:
                if baseline.key == baseline_key:
                    return Judged(self, _ratio(figure.ackwire, baseline))
        return Judged(self, None)


@dataclass(frozen=True, slots=True)
class Judged:
    target: Target
    ratio: float | None
    """`None`: ackwire's figure or the baseline's was not measured."""

    @property
    def met(self) -> bool:
        if self.ratio is None:
            return False
        if self.target.is_rate:
            return self.ratio >= self.target.bound
        return self.ratio <= self.target.bound

    def line(self) -> str:
        ratio = "not measured" if self.ratio is None else _readable(self.ratio) + "x"
        return f"target {'met' if self.met else 'missed'}: {self.target.statement} ({ratio})"

    def as_json(self) -> dict[str, object]:
        bound = "ratio_at_least" if self.target.is_rate else "ratio_at_most"
        return {
            "name": self.target.statement,
            "figure": self.target.figure,
            "baseline": self.target.baseline.key_of(self.target.figure),
            bound: self.target.bound,
            "ratio": self.ratio,
            "met": self.met,
        }


@dataclass(frozen=True, slots=True)
class Figure:
    ackwire: Measured
    baselines: tuple[Measured, ...] = ()


@dataclass
class Report:
    """One scenario's figures."""

    scenario: str
    setup: str
    """What ran: sizes, the stack, settings that differ from the defaults."""
    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(self, ackwire: Measured, *baselines: Measured) -> None:
        self.figures.append(Figure(ackwire, baselines))

    def judged(self) -> list[Judged]:
        return [target.judged(self.figures) for target in self.targets]

    def as_json(self) -> dict[str, object]:
        """Each figure by its key; and, if the scenario has targets, "targets"."""
        metrics: dict[str, object] = {}
        for figure in self.figures:
            entry: dict[str, object] = {"value": figure.ackwire.value, "unit": figure.ackwire.unit}
            if figure.baselines:
                entry["ratio_to"] = {b.key: _ratio(figure.ackwire, b) for b in figure.baselines}
            metrics[figure.ackwire.key] = entry
            for baseline in figure.baselines:
                metrics[baseline.key] = {"value": baseline.value, "unit": baseline.unit}
        if self.targets:
            metrics["targets"] = [judged.as_json() for judged in self.judged()]
        return metrics

    def table(self) -> str:
        """The figures, a row for each baseline with its ratio; then a line per target."""
        rows = [("figure", "ackwire", "baseline, same run", "baseline", "ratio")]
        for figure in self.figures:
            mine = (figure.ackwire.label, _quantity(figure.ackwire))
            if not figure.baselines:
                rows.append((*mine, "", "", ""))
            for i, baseline in enumerate(figure.baselines):
                ratio = _ratio(figure.ackwire, baseline)
                shown = mine if i == 0 else ("", "")
                rows.append((*shown, baseline.label, _quantity(baseline), _readable(ratio) + "x"))
        widths = [max(len(row[column]) for row in rows) for column in range(5)]
        lines = [f"{self.scenario}: {self.setup}"]
        for row in rows:
            cells = [
                cell.rjust(width) if column in (1, 3, 4) else cell.ljust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append(("  " + "  ".join(cells)).rstrip())
        lines.extend(f"  {judged.line()}" for judged in self.judged())
        return "\n".join(lines)


def write_json(path: Path, reports: Sequence[Report]) -> None:
    path.write_text(json.dumps({r.scenario: r.as_json() for r in reports}, indent=2) + "\n")


def _ratio(ackwire: Measured, baseline: Measured) -> float:
    return ackwire.value / baseline.value if baseline.value else math.inf


def _quantity(measured: Measured) -> str:
    if measured.unit == COUNT:
        return f"{measured.value:,.0f}"
    return f"{_readable(measured.value)} {measured.unit}"


def _readable(value: float) -> str:
    """Three significant figures or so, with thousands separated."""
    if value >= 100 or value == 0:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:#.2g}"  # 0.30, not 0.3
