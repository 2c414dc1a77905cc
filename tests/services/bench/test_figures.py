"""The bench's figures: nearest-rank percentiles, ratios to the baselines, the table, and
targets judged on those ratios."""

import json
import math
from pathlib import Path

import pytest

from ackwire.bench.figures import (
    COUNT,
    Measured,
    Peer,
    Report,
    RoundTrips,
    Target,
    percentile,
    write_json,
)

RAW = Peer("raw", "raw peer")


def test_a_percentile_is_a_value_that_was_measured_by_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1 … 100, in any order
    assert [percentile(values, q) for q in (1, 50, 90, 99, 100)] == [1, 50, 90, 99, 100]
    assert percentile([7.0], 99) == 7
    assert percentile([1.0, 2.0, 3.0], 50) == 2
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_round_trips_side_by_side_merge_into_one_span() -> None:
    merged = RoundTrips.merged([RoundTrips([0.1, 0.2], 10.0, 11.0), RoundTrips([0.3], 10.5, 12.0)])
    assert (sorted(merged.latencies), merged.began, merged.ended) == ([0.1, 0.2, 0.3], 10, 12)
    assert merged.rate == pytest.approx(1.5)
    assert merged.ms(50) == pytest.approx(200)


def sample() -> Report:
    report = Report("jobs", "sizes")
    report.add(
        Measured("throughput", "closed loop", 105.0, "jobs/s"),
        RAW.measured("throughput", 8521.0, "msg/s"),
        Peer("other", "another peer").measured("throughput", 35.0, "msg/s"),
    )
    report.add(Measured("failed", "jobs failed", 0, COUNT))
    return report


def test_the_json_has_every_figure_and_baseline_with_units_and_ratios(tmp_path: Path) -> None:
    write_json(tmp_path / "out.json", [sample()])
    assert json.loads((tmp_path / "out.json").read_text()) == {
        "jobs": {
            "throughput": {
                "value": 105.0,
                "unit": "jobs/s",
                "ratio_to": {"raw_throughput": 105 / 8521, "other_throughput": 3.0},
            },
            "raw_throughput": {"value": 8521.0, "unit": "msg/s"},
            "other_throughput": {"value": 35.0, "unit": "msg/s"},
            "failed": {"value": 0, "unit": "count"},
        }
    }


def test_the_table_has_a_row_per_baseline_with_the_ratio() -> None:
    assert sample().table().splitlines() == [
        "jobs: sizes",
        "  figure          ackwire  baseline, same run     baseline   ratio",
        "  closed loop  105 jobs/s  raw peer            8,521 msg/s  0.012x",
        "                           another peer         35.0 msg/s   3.00x",
        "  jobs failed           0",
    ]


def verdicts(report: Report, *targets: Target) -> list[tuple[bool, float | None]]:
    report.targets = list(targets)
    return [(judged.met, judged.ratio) for judged in report.judged()]


def test_a_rate_target_is_met_at_or_above_its_ratio_of_the_baseline() -> None:
    ratio = 105 / 8521
    at_least = [Target.rate("closed", "throughput", RAW, at_least=b) for b in (0.01, ratio, 0.3)]
    assert verdicts(sample(), *at_least) == [(True, ratio), (True, ratio), (False, ratio)]


def test_a_latency_target_is_met_at_or_below_its_ratio_of_the_baseline() -> None:
    report = Report("jobs", "sizes")
    report.add(Measured("p99", "p99", 30.0, "ms"), RAW.measured("p99", 10.0, "ms"))
    at_most = [Target.latency("p99", "p99", RAW, at_most=bound) for bound in (2, 3, 4)]
    assert verdicts(report, *at_most) == [(False, 3.0), (True, 3.0), (True, 3.0)]


def test_a_target_whose_figure_or_baseline_was_not_measured_is_missed() -> None:
    assert verdicts(
        sample(),
        Target.rate("closed", "no_such_figure", RAW, at_least=0),
        Target.rate("closed", "throughput", Peer("none", "nobody"), at_least=0),
        Target.latency("failed", "failed", RAW, at_most=math.inf),  # it has no baseline
    ) == [(False, None), (False, None), (False, None)]


def test_targets_are_lines_after_the_table_and_entries_in_the_json(tmp_path: Path) -> None:
    report = sample()
    report.targets = [
        Target.rate("jobs closed loop", "throughput", RAW, at_least=0.01),
        Target.latency("p99", "latency_p99", Peer("raw", "raw peer", "how"), at_most=2),
    ]
    assert report.table().splitlines()[-2:] == [
        "  target met: jobs closed loop >= 0.01x raw peer (0.012x)",
        "  target missed: p99 <= 2x raw peer (not measured)",
    ]
    write_json(tmp_path / "out.json", [report])
    assert json.loads((tmp_path / "out.json").read_text())["jobs"]["targets"] == [
        {
            "name": "jobs closed loop >= 0.01x raw peer",
            "figure": "throughput",
            "baseline": "raw_throughput",
            "ratio_at_least": 0.01,
            "ratio": 105 / 8521,
            "met": True,
        },
        {
            "name": "p99 <= 2x raw peer",
            "figure": "latency_p99",
            "baseline": "raw_latency_p99",
            "ratio_at_most": 2,
            "ratio": None,
            "met": False,
        },
    ]


def test_a_peer_is_labelled_by_its_name_and_what_it_does() -> None:
    peer = Peer("raw_job_loop", "raw durable job loop", "job stored, worker pulls")
    assert peer.label == "raw durable job loop: job stored, worker pulls"
    assert peer.measured("throughput", 1.0, "jobs/s").label == peer.label
    assert RAW.label == "raw peer"
