"""`ackwire bench [SCENARIO …] [--quick] [--json PATH]`: the scenarios in turn, each on
a stack of its own; each one's table on stdout as it ends, then how many of their
targets were met, then the figures as JSON."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ackwire.bench import fanout, jobs, messages, resume_storm
from ackwire.bench.figures import Report, write_json
from ackwire.cli.bus import connect_briefly
from ackwire.settings import Settings

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Scenario(Generic[S]):
    measure: Callable[[S, Path, str | None], Awaitable[Report]]
    full: S
    quick: S
    """Small sizes: every scenario together in under a minute."""


#: In the order they run when none is named (`ackwire.cli.main.BENCH_SCENARIOS`).
SCENARIOS: dict[str, Scenario[Any]] = {
    "jobs": Scenario(jobs.measure, jobs.FULL, jobs.QUICK),
    "messages": Scenario(messages.measure, messages.FULL, messages.QUICK),
    "fanout": Scenario(fanout.measure, fanout.FULL, fanout.QUICK),
    "resume-storm": Scenario(resume_storm.measure, resume_storm.FULL, resume_storm.QUICK),
}


async def run_bench(
    names: list[str],
    *,
    quick: bool,
    json_path: Path | None,
    settings: Settings,
    nats_url: str | None,
) -> int:
    if nats_url is not None:
        await (await connect_briefly(settings)).close()  # unreachable: one line, at once
    workdir = Path(tempfile.mkdtemp(prefix="ackwire-bench-"))
    print(
        f"ackwire bench{' --quick' if quick else ''}: {os.cpu_count()} cores, {_load()},"
        f" Python {platform.python_version()}; NATS {nats_url or 'embedded'};"
        f" logs in {workdir}",
        flush=True,
    )
    reports = []
    for name in names:
        scenario = SCENARIOS[name]
        began = time.monotonic()
        report = await scenario.measure(
            scenario.quick if quick else scenario.full, workdir / name, nats_url
        )
        print(f"\n{report.table()}", flush=True)
        print(f"  ({time.monotonic() - began:.1f} s; {_load()})", flush=True)
        reports.append(report)
    judged = [judged for report in reports for judged in report.judged()]
    if judged:
        print(f"\ntargets met: {sum(j.met for j in judged)} of {len(judged)}", flush=True)
    if json_path is not None:
        write_json(json_path, reports)
    return 0


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
