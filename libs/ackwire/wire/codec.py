"""Turning text into frames and frames into text, with no I/O.

`parse_client_frame` is total: whatever bytes or text arrive, it returns a
frame or a `BadFrame` that says why, and never raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from ackwire.wire.codes import ErrorCode
from ackwire.wire.frames import REF_MAX, ClientFrame, Error, Frame, ServerFrame

_client_frames: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
_server_frames: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)
_ERROR_CODES = frozenset(code.value for code in ErrorCode)


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that could not be read, and why (for the `error` frame's message)."""

    reason: str
    ref: str | None = None
    """The frame's `ref`, when the frame was a JSON object with a readable one."""


def parse_client_frame(data: str | bytes) -> ClientFrame | BadFrame:
    """Read one frame sent by a client. Binary data is always a bad frame."""
    if not isinstance(data, str):
        return BadFrame("binary frames are not part of the protocol; send JSON text")
    try:
        return _client_frames.validate_json(data)
    except ValidationError as exc:
        return BadFrame(_describe(exc), ref=_readable_ref(data))


def parse_server_frame(data: str | bytes) -> ServerFrame | BadFrame:
    """Read one frame sent by a gateway (for clients and tests). An `error` with a code
    newer than this client reads as `unavailable`, as the protocol asks of clients; its
    own code leads its message."""
    if not isinstance(data, str):
        return BadFrame("binary frames are not part of the protocol")
    try:
        return _server_frames.validate_json(data)
    except ValidationError as exc:
        return _error_of_newer_code(data) or BadFrame(_describe(exc))


def _error_of_newer_code(data: str) -> Error | None:
    try:
        raw = json.loads(data)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("type") != "error":
        return None
    code, message = raw.get("code"), raw.get("message")
    if not isinstance(code, str) or code in _ERROR_CODES or not isinstance(message, str):
        return None
    try:
        return Error.model_validate(
            raw | {"code": ErrorCode.UNAVAILABLE, "message": f"{code}: {message}"}
        )
    except ValidationError:
        return None


def encode(frame: Frame) -> str:
    """The JSON text of a frame, without the fields left at `None`."""
    return frame.model_dump_json(exclude_none=True)


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "json_invalid":
        return "not valid JSON"
    if first["type"] in {"union_tag_not_found", "model_type", "model_attributes_type"}:
        return "a frame is a JSON object with a string field `type`"
    if first["type"] == "union_tag_invalid":
        return f"unknown frame type {first.get('ctx', {}).get('tag', '')!r}"[:200]
    return f"{where}: {first['msg']}"[:200] if where else str(first["msg"])[:200]


def _readable_ref(data: str) -> str | None:
    """The `ref` of a malformed frame, if it is a JSON object with a short string `ref`."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict):
        ref = obj.get("ref")
        if isinstance(ref, str) and 0 < len(ref) <= REF_MAX:
            return ref
    return None
