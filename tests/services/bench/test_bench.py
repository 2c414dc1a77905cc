"""`ackwire bench` end to end: the scenarios run against a stack of their own, every
figure is printed beside its baselines and written to the JSON; bad arguments are
refused in one line. Figures are printed, never asserted: no test here is timed."""

import json
from pathlib import Path

import pytest

from ackwire.bench.command import SCENARIOS
from ackwire.bus.embedded import free_port
from ackwire.cli.main import BENCH_SCENARIOS
from support.processes import AckwireProcess

#: Each scenario's figures, and the baselines each one stands beside.
EXPECTED = {
    "jobs": {
        "throughput": ["raw_jetstream", "raw_websockets", "socketio"],
        "latency_p50": ["raw_jetstream", "raw_websockets", "socketio"],
        "latency_p90": ["raw_jetstream", "raw_websockets", "socketio"],
        "latency_p99": ["raw_jetstream", "raw_websockets", "socketio"],
        "idle_accepted_p50": ["raw_jetstream", "raw_websockets"],
        "idle_result_p50": ["raw_jetstream", "raw_websockets", "socketio"],
        "idle_result_p90": ["raw_jetstream", "raw_websockets", "socketio"],
        "open_latency_p50": ["raw_jetstream"],
        "open_latency_p99": ["raw_jetstream"],
        "open_late": [],
        "failed": [],
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


async def test_the_quick_bench_prints_every_figure_beside_its_baselines_and_writes_the_json(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.json"
    process = await AckwireProcess.start(
        "bench", "--quick", "jobs", "messages", "fanout", "--json", str(out)
    )
    assert await process.exit_code(timeout=90) == 0, process.stderr_text
    assert process.stderr_text == []

    figures = json.loads(out.read_text())
    assert list(figures) == list(EXPECTED)
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
