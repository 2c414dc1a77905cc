"""Submit one job to a running stack and print what comes back (run after `make up`):

.venv/bin/python docs/examples/translate.py "$(.venv/bin/ackwire token --sub alice)"
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main(token: str, url: str = "ws://127.0.0.1:8765") -> None:
    async with connect(url, subprotocols=["ackwire.v1"]) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        print(await ws.recv())  # welcome
        payload = {"text": "你好", "source": "zh", "target": "en"}
        await ws.send(
            json.dumps({"type": "submit", "ref": "c-1", "kind": "translate", "payload": payload})
        )
        print(await ws.recv())  # accepted, once the job is stored
        while True:
            frame = json.loads(await ws.recv())
            print(frame)
            if frame["type"] == "deliver":
                await ws.send(
                    json.dumps({"type": "ack", "seq": frame["seq"]})
                )  # now it is delivered
                if frame["kind"] in {"result", "error"}:
                    return


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
