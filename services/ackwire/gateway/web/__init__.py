"""The browser SDK and the demo page, served on every gateway's port.

`GET /` is the demo page, `/ackwire.js` and `/ackwire.d.ts` the SDK (a plain ES module
and its types, no build step). Only on a development deployment (the development secret,
a loopback host) two more paths help the demo along: `/demo-token?sub=alice` mints a
short-lived token, and `/gateways` lists the live gateways' URLs for the page to fail
over to. Anyone can mint tokens with the development secret anyway; with a real secret
no page of the gateway ever mints one (docs/sdk-browser.md, "A token for the demo").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from http import HTTPStatus
from importlib.resources import files
from urllib.parse import parse_qs

from websockets.http11 import Response

from ackwire.probes import http_response
from ackwire.settings import Settings
from ackwire.tokens import is_loopback, mint_token

#: path -> (file beside this module, its content type)
_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ackwire.js": ("ackwire.js", "text/javascript; charset=utf-8"),
    "/ackwire.d.ts": ("ackwire.d.ts", "text/plain; charset=utf-8"),
    "/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/demo.css": ("demo.css", "text/css; charset=utf-8"),
}
DEMO_TOKEN_TTL_S = 600
"""Short: the page refreshes it ahead of `exp` through the same path."""
_DEMO_USER = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NO_STORE = (("Cache-Control", "no-store"),)


class WebPages:
    """Answers the page's paths (`Probes`' `pages`); files are read once, at start."""

    def __init__(
        self, settings: Settings, *, host: str, gateway_urls: Callable[[], list[str]]
    ) -> None:
        here = files(__name__)
        self._files = {
            path: (here.joinpath(name).read_bytes(), content_type)
            for path, (name, content_type) in _FILES.items()
        }
        self._settings = settings
        self._development = settings.uses_development_secret and is_loopback(host)
        self._gateway_urls = gateway_urls

    def respond(self, path: str, query: str) -> Response | None:
        if path in self._files:
            body, content_type = self._files[path]
            return http_response(HTTPStatus.OK, body, content_type, _NO_STORE)
        if not self._development:
            return None
        if path == "/demo-token":
            return self._demo_token(parse_qs(query).get("sub", ["alice"])[-1])
        if path == "/gateways":
            return _json(HTTPStatus.OK, {"gateways": self._gateway_urls()})
        return None

    def _demo_token(self, sub: str) -> Response:
        if not _DEMO_USER.fullmatch(sub):
            return _json(HTTPStatus.BAD_REQUEST, {"error": "sub must be 1-64 of A-Z a-z 0-9 _ -"})
        topics = ["pipeline.>", f"presence.{sub}"]
        token = mint_token(
            self._settings.jwt_secret.get_secret_value(),
            sub,
            topics=topics,
            ttl_s=DEMO_TOKEN_TTL_S,
            audience=self._settings.jwt_audience,
            issuer=self._settings.jwt_issuer,
        )
        return _json(HTTPStatus.OK, {"token": token, "sub": sub, "topics": topics})


def _json(status: HTTPStatus, value: object) -> Response:
    return http_response(
        status, json.dumps(value).encode(), "application/json; charset=utf-8", _NO_STORE
    )
