"""The bench's figures: nearest-rank percentiles, ratios to the baselines, the table."""

import json
from pathlib import Path

import pytest

from ackwire.bench.figures import COUNT, Measured, Peer, Report, RoundTrips, percentile, write_json

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
