"""`ackwire bench` end to end: the scenarios run against a stack of their own, every
figure is printed beside its baselines and written to the JSON; bad arguments are
refused in one line. Figures are printed, never asserted: no test here is timed."""

import json
import re
from pathlib import Path

import pytest

from ackwire.bench import jobs
from ackwire.bench.command import SCENARIOS
from ackwire.bus.embedded import free_port
from ackwire.cli.main import BENCH_SCENARIOS
from support.processes import AckwireProcess

_CLOSED_LOOP_PEERS = ["raw_job_loop", "raw_jetstream", "raw_websockets", "socketio"]
_QUICK_RATES = [f"{rate:g}" for rate in jobs.QUICK.open_rates]

#: Each scenario's figures, and the baselines each one stands beside.
EXPECTED = {
    "jobs": {
        "throughput": _CLOSED_LOOP_PEERS,
        "latency_p50": _CLOSED_LOOP_PEERS,
        "latency_p90": _CLOSED_LOOP_PEERS,
        "latency_p99": _CLOSED_LOOP_PEERS,
        "idle_accepted_p50": ["raw_jetstream", "raw_websockets"],
        "idle_result_p50": ["raw_jetstream", "raw_websockets", "socketio"],
        "idle_result_p90": ["raw_jetstream", "raw_websockets", "socketio"],
        **{
            f"{figure}_{rate}": peers
            for rate in _QUICK_RATES
            for figure, peers in [
                ("open_latency_p50", ["raw_job_loop", "raw_jetstream"]),
                ("open_latency_p99", ["raw_job_loop", "raw_jetstream"]),
                ("open_late", []),
            ]
        },
        "failed": [],
        # The raw job loop's closed loop, in all and by process (the nats-server is the
        # bench's own here).
        "raw_job_loop_cpu_per_job": [],
        "raw_job_loop_cpu_per_job_requester": [],
        "raw_job_loop_cpu_per_job_worker": [],
        "raw_job_loop_cpu_per_job_nats_server": [],
    },
    "messages": {
        "stored": ["raw_jetstream"],
        "delivered": ["raw_jetstream", "socketio"],
    },
    "fanout": {
        f"{figure}_{n}": baselines
        for n in (10, 50)
        for figure, baselines in [
            ("events_per_s", ["socketio"]),
            ("delivered_share", ["socketio"]),
            ("closed_4429", []),
        ]
    },
}


# About 45 s on an idle machine, past 80 s on a busy one: the bound is for a hang.
@pytest.mark.timeout(180)
async def test_the_quick_bench_prints_every_figure_beside_its_baselines_and_writes_the_json(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.json"
    process = await AckwireProcess.start(
        "bench", "--quick", "jobs", "messages", "fanout", "--json", str(out)
    )
    assert await process.exit_code(timeout=150) == 0, process.stderr_text
    assert process.stderr_text == []

    figures = json.loads(out.read_text())
    assert list(figures) == list(EXPECTED)
    targets = figures["jobs"].pop("targets")
    ratios = 0
    for scenario, expected in EXPECTED.items():
        metrics = figures[scenario]
        baseline_keys = {f"{peer}_{key}" for key, peers in expected.items() for peer in peers}
        assert set(metrics) == set(expected) | baseline_keys, scenario
        for key, metric in metrics.items():
            # A count of what went wrong may be 0 (subscribers closed 4429, jobs failed);
            # every rate, latency and share was measured, so it is above 0.
            assert metric["value"] > 0 or metric["unit"] == "count", (scenario, key, metric)
            assert metric["unit"], (scenario, key)
        for key, peers in expected.items():
            ratio_to = metrics[key].get("ratio_to", {})
            assert set(ratio_to) == {f"{peer}_{key}" for peer in peers}, (scenario, key)
            for baseline, ratio in ratio_to.items():
                assert ratio == pytest.approx(metrics[key]["value"] / metrics[baseline]["value"])
            ratios += len(ratio_to)

    header, *table = process.stdout_lines
    assert header.startswith("ackwire bench --quick: ")
    assert " cores, load average " in header
    for scenario in EXPECTED:
        assert any(line.startswith(f"{scenario}: ") for line in table), scenario
    # One row per figure and baseline, each ending in its ratio.
    assert sum(line.endswith("x") for line in table) == ratios

    # The jobs scenario's targets, each judged against the raw job loop's figure: a line
    # each after its table, in the JSON, and how many were met on the bench's last line.
    assert [(t["figure"], t["baseline"]) for t in targets] == [
        ("throughput", "raw_job_loop_throughput"),
        *((f"open_latency_p99_{r}", f"raw_job_loop_open_latency_p99_{r}") for r in _QUICK_RATES),
    ]
    jobs_metrics = figures["jobs"]
    target_lines = [line for line in table if line.startswith("  target ")]
    assert len(target_lines) == len(targets)
    for target, line in zip(targets, target_lines, strict=True):
        ratio = jobs_metrics[target["figure"]]["ratio_to"][target["baseline"]]
        assert target["ratio"] == pytest.approx(ratio)
        if "ratio_at_least" in target:
            assert target["met"] is (ratio >= target["ratio_at_least"])
        else:
            assert target["met"] is (ratio <= target["ratio_at_most"])
        said = "met" if target["met"] else "missed"
        assert re.fullmatch(rf"  target {said}: {re.escape(target['name'])} \([0-9.,]+x\)", line)
    met = sum(target["met"] for target in targets)
    assert table[-1] == f"targets met: {met} of {len(targets)}"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bench", "--quick", "jobs", "nonsense"], "no scenario 'nonsense'; the scenarios are"),
        (["bench", "--json", "/no/such/directory/out.json"], "--json: no directory"),
    ],
)
async def test_bad_arguments_exit_2_in_one_line(args: list[str], says: str) -> None:
    process = await AckwireProcess.start(*args)
    assert await process.exit_code() == 2
    [line] = process.stderr_text
    assert line.startswith("ackwire bench: ")
    assert says in line
    assert process.stdout_lines == []


async def test_an_unreachable_nats_exits_1_in_one_line() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    process = await AckwireProcess.start("bench", "--quick", "jobs", "--nats-url", url)
    assert await process.exit_code(timeout=15) == 1
    [line] = process.stderr_text
    assert "NATS unreachable" in line
    assert process.stdout_lines == []


def test_the_names_the_command_line_takes_are_the_scenarios_the_bench_runs() -> None:
    assert tuple(SCENARIOS) == BENCH_SCENARIOS
