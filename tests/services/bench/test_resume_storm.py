"""`ackwire bench resume-storm` runs end to end and prints its figures with the baseline."""

import json
from pathlib import Path

from support.processes import AckwireProcess


async def test_a_small_resume_storm_prints_its_figures_beside_new_sessions(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.json"
    process = await AckwireProcess.start("bench", "--quick", "resume-storm", "--json", str(out))
    assert await process.exit_code(timeout=90) == 0, process.stderr_text

    _header, _blank, title, _columns, *rows, _took = process.stdout_lines
    assert title.startswith("resume-storm: 200 sessions on gw-1, each owed a message")
    labels = ["all resumed after kill -9", "resumes", "per session p50", "per session p99"]
    for label, row in zip(labels, rows, strict=True):
        assert row.strip().startswith(label)
        assert "new sessions on gw-2, as many at once" in row
    storm = json.loads(out.read_text())["resume-storm"]
    assert {key: storm[key]["unit"] for key in ("storm", "rate", "p50", "p99")} == {
        "storm": "s",
        "rate": "sessions/s",
        "p50": "ms",
        "p99": "ms",
    }
    assert all(metric["value"] > 0 for metric in storm.values())
    assert set(storm) == {"storm", "rate", "p50", "p99"} | {
        f"new_sessions_{key}" for key in ("storm", "rate", "p50", "p99")
    }
