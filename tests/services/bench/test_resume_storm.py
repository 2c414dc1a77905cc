"""`ackwire bench resume-storm` runs end to end and prints its figures with the baseline."""

import re

from support.processes import AckwireProcess


async def test_a_small_resume_storm_prints_its_figures() -> None:
    process = await AckwireProcess.start("bench", "resume-storm", "--sessions", "20")
    assert await process.exit_code(timeout=90) == 0, process.stderr_text
    header, baseline, storm, verdict = process.stdout_lines
    assert header.startswith("ackwire bench resume-storm: 20 sessions")
    figure = r": 20 in [0-9.]+ s = [0-9]+/s; per session p50 [0-9]+ ms, p99 [0-9]+ ms$"
    assert re.search(r"^baseline .*" + figure, baseline)
    assert re.search(r"^storm .*kill -9.*" + figure, storm)
    assert verdict.startswith("every session resumed and got its owed message again: 20/20")
