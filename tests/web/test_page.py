"""The demo page end to end in headless Chromium (Debian's, driven by Playwright): it
submits jobs and shows each result once, recovers from a killed gateway, 20 s offline and
a hidden tab, and holds one WebSocket for all of its components."""

import asyncio
import json
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from .conftest import UpStack

CHROMIUM = "/usr/bin/chromium"  # Debian's; a test tool's own browser download fails here
NOTES = Path("/work/notes")  # where the lead looks at the screenshot, when it exists
WAIT_MS = 20_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        await launched.close()


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """The page, open on a welcomed connection; the URLs of every WebSocket it opens."""
    page = await (await browser.new_context(viewport={"width": 1280, "height": 860})).new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.goto(url)
    await expect(page.locator("#state")).to_have_text("open", timeout=WAIT_MS)
    return page, sockets


async def submit(page: Page, kind: str, payload: object) -> str:
    """Submit from the job console; the job id once the gateway accepted it."""
    await page.select_option("#kind", kind)
    await page.fill("#payload", json.dumps(payload))
    rows_before = await page.locator("#jobs li").count()
    await page.click("#submit")
    await expect(page.locator("#jobs li")).to_have_count(rows_before + 1)
    row = page.locator("#jobs li").first
    await expect(row).to_have_attribute("data-job-id", re.compile(r"j-.+"), timeout=WAIT_MS)
    job_id = await row.get_attribute("data-job-id")
    assert job_id
    return job_id


async def result_of(page: Page, job_id: str) -> str:
    """The text of the job's one line among the results (waiting for it)."""
    line = page.locator(f'#results li[data-job-id="{job_id}"]')
    await expect(line).to_have_count(1, timeout=WAIT_MS)
    return await line.inner_text()


async def each_result_once(page: Page, job_ids: list[str]) -> None:
    """Every job's end is shown once. Checked after one more job's result, which comes
    after anything still owed (owed deliveries come oldest first)."""
    last = await submit(page, "echo", {"last": True})
    await result_of(page, last)
    shown = await page.locator("#results li").evaluate_all(
        "lines => lines.map(line => line.dataset.jobId)"
    )
    assert sorted(shown) == sorted([*job_ids, last]), shown


async def sleeping_job(
    browser: Browser, url: str, seconds: int
) -> tuple[Page, list[str], str, str]:
    """The page open at `url` with a `sleep` job running: the page, its sockets' URLs, its
    session and the job's id."""
    page, sockets = await open_page(browser, url)
    session = await page.inner_text("#session")
    return page, sockets, session, await submit(page, "sleep", {"seconds": seconds})


async def back_on(page: Page, session: str) -> None:
    """The page is connected again, on the session it had: resumed, not started anew."""
    await expect(page.locator("#state")).to_have_text("open", timeout=WAIT_MS)
    assert await page.inner_text("#session") == session, "the same session, resumed"


async def set_hidden(page: Page, hidden: bool) -> None:
    """The tab hidden or shown, as the page sees it (headless Chromium has no real tabs)."""
    state = "hidden" if hidden else "visible"
    await page.evaluate(
        """state => {
            const define = (name, value) =>
                Object.defineProperty(document, name, {value, configurable: true});
            define("visibilityState", state);
            define("hidden", state === "hidden");
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        state,
    )


async def test_the_page_runs_jobs_moves_the_bar_and_holds_one_socket(
    stack_up: UpStack, browser: Browser, tmp_path: Path
) -> None:
    page, sockets = await open_page(browser, stack_up.http() + "/")
    await expect(page.locator("#gateway")).to_have_text("gw-1")
    await expect(page.locator("#token-hint")).to_contain_text("development token")

    translated = await submit(page, "translate", {"text": "你好", "source": "zh", "target": "en"})
    assert '"text":"hello"' in await result_of(page, translated)
    slept = await submit(page, "sleep", {"seconds": 2})
    await expect(page.locator("#jobs li").first.locator("progress")).not_to_have_attribute(
        "value", "0", timeout=WAIT_MS
    )
    assert '"slept":2' in await result_of(page, slept)
    failed = await submit(page, "fail", {"message": "on purpose"})
    assert "on purpose" in await result_of(page, failed)

    await expect(page.locator("#bar-label")).to_contain_text("subscribed to pipeline.42")
    await stack_up.cli(
        "publish", "--topic", "pipeline.42", "--data", '{"percent": 40}', "--snapshot"
    )
    await expect(page.locator("#bar-label")).to_have_text("pipeline.42: 40%", timeout=WAIT_MS)
    await expect(page.locator("#bar")).to_have_attribute("style", "width: 40%;")

    await each_result_once(page, [translated, slept, failed])
    # Four components (state, console, board, messages) asked for a connection: one socket.
    assert len(sockets) == 1, sockets

    shot = tmp_path / "demo-page.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if await asyncio.to_thread(NOTES.is_dir):
        await asyncio.to_thread(shutil.copy, shot, NOTES / "demo-page.png")


async def test_a_killed_gateway_the_page_resumes_on_the_other_and_shows_each_result_once(
    stack_up: UpStack, browser: Browser
) -> None:
    page, _ = await open_page(browser, stack_up.http() + "/")
    await expect(page.locator("#gateway")).to_have_text("gw-1")
    session = await page.inner_text("#session")
    done = await submit(page, "echo", {"before": "the kill"})
    await result_of(page, done)
    running = await submit(page, "sleep", {"seconds": 3})

    os.kill(stack_up.gateways["gw-1"][0], signal.SIGKILL)
    await expect(page.locator("#gateway")).to_have_text("gw-2", timeout=WAIT_MS)
    await back_on(page, session)
    assert '"slept":3' in await result_of(page, running)
    await each_result_once(page, [done, running])


async def test_twenty_seconds_offline_the_page_recovers_and_shows_each_result_once(
    stack_up: UpStack, browser: Browser
) -> None:
    page, sockets, session, running = await sleeping_job(browser, stack_up.http() + "/", 2)

    await page.context.set_offline(True)
    await expect(page.locator("#state")).to_have_text("paused")
    await page.select_option("#kind", "echo")
    await page.fill("#payload", '{"while": "offline"}')
    await page.click("#submit")  # queued by the SDK until the page is back online
    await asyncio.sleep(20)  # the outage itself; the sleep job ends meanwhile
    assert await page.locator("#results li").count() == 0
    await page.context.set_offline(False)

    await back_on(page, session)
    assert '"slept":2' in await result_of(page, running)
    queued = await page.locator("#jobs li").first.get_attribute("data-job-id")
    assert queued
    assert '"while":"offline"' in await result_of(page, queued)
    await each_result_once(page, [running, queued])
    assert len(sockets) == 2, sockets  # the first, and the one after the outage


async def test_a_hidden_tab_pauses_then_recovers_and_shows_each_result_once(
    stack_up: UpStack, browser: Browser
) -> None:
    url = stack_up.http() + "/?pause_hidden_ms=200"
    page, _, session, running = await sleeping_job(browser, url, 1)

    await set_hidden(page, True)
    await expect(page.locator("#state")).to_have_text("paused")
    # The job ends while the tab is hidden: its result waits, owed, for the session.
    # No event tells that it was stored: `ackwire undelivered` is asked, a bounded number of times.
    for _ in range(40):
        owed = await stack_up.cli("undelivered", "--session", session, "--json")
        if any(json.loads(line)["kind"] == "result" for line in owed):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"the job's result was not stored while the tab was hidden: {owed}")
    assert await page.locator("#results li").count() == 0

    await set_hidden(page, False)
    await back_on(page, session)
    assert '"slept":1' in await result_of(page, running)
    await each_result_once(page, [running])
