"""The browser SDK's own tests (sdk.test.mjs), under Node's test runner, against a real
stack: the pytest side starts it and hands the Node side a URL and a token."""

import asyncio
import os
import re
import shutil
from pathlib import Path

from ackwire.settings import DEVELOPMENT_SECRET
from ackwire.tokens import mint_token

from .conftest import UpStack

SDK_TESTS = Path(__file__).with_name("sdk.test.mjs")


async def test_the_browser_sdk_passes_its_node_tests_against_a_real_gateway(
    stack_up: UpStack,
) -> None:
    node = shutil.which("node")
    assert node, "Node 20+ is needed for the browser SDK's tests"
    process = await asyncio.create_subprocess_exec(
        node, "--experimental-websocket", "--test", str(SDK_TESTS),
        env={
            **os.environ,
            "ACKWIRE_URL": stack_up.gateways["gw-1"][1],
            "ACKWIRE_TOKEN": mint_token(DEVELOPMENT_SECRET, "alice"),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output = (await asyncio.wait_for(process.communicate(), 90))[0].decode()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, output
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    assert passed, output
    assert int(passed[1]) == len(re.findall(r"^test\(", SDK_TESTS.read_text(), re.MULTILINE))
    assert re.search(r"^# fail 0$", output, re.MULTILINE), output
