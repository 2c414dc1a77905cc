"""What a gateway's port serves for browsers: the page and the SDK on every gateway; a demo
token and the gateway list only with the development secret on loopback, never else."""

import asyncio
import json

import jwt
from pydantic import SecretStr

from ackwire.gateway.server import Gateway
from ackwire.settings import DEVELOPMENT_SECRET, Settings
from ackwire.tokens import TokenVerifier

# The gateway tests' plain GET (urllib against the real port), shared rather than copied.
from services.gateway.test_http import base, http_get

from .conftest import UpStack


async def get(url: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(http_get, url)


async def test_the_page_and_the_sdk_are_served_on_a_gateway_with_a_real_secret(
    gateway: Gateway,
) -> None:
    status, content_type, body = await get(base(gateway) + "/")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert '<script type="module" src="/demo.js">' in body
    status, content_type, body = await get(base(gateway) + "/ackwire.js")
    assert (status, content_type) == (200, "text/javascript; charset=utf-8")
    assert "export class AckwireClient" in body
    assert (await get(base(gateway) + "/ackwire.d.ts"))[0] == 200


async def test_no_token_is_minted_nor_gateway_listed_with_a_real_secret(
    gateway: Gateway,
) -> None:
    assert (await get(base(gateway) + "/demo-token?sub=alice"))[0] == 404
    assert (await get(base(gateway) + "/gateways"))[0] == 404


async def test_the_development_secret_on_loopback_mints_a_short_lived_demo_token(
    stack_up: UpStack, settings: Settings
) -> None:
    status, content_type, body = await get(stack_up.http() + "/demo-token?sub=bob")
    assert (status, content_type) == (200, "application/json; charset=utf-8")
    answer = json.loads(body)
    development = settings.model_copy(update={"jwt_secret": SecretStr(DEVELOPMENT_SECRET)})
    identity = TokenVerifier(development).verify(answer["token"])
    assert (identity.user, identity.topics) == ("bob", ("pipeline.>", "presence.bob"))
    claims = jwt.decode(answer["token"], DEVELOPMENT_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 600

    status, _, body = await get(stack_up.http() + "/demo-token?sub=no%20spaces")
    assert status == 400
    assert "sub must be" in json.loads(body)["error"]

    status, _, body = await get(stack_up.http() + "/gateways")
    assert status == 200
    assert json.loads(body)["gateways"] == [url for _, url in stack_up.gateways.values()]
