"""What stands between a client and the model: body size limit and error replies.

The size limit is ASGI middleware, so an oversized body is refused from its Content-Length
before a byte of it is read (or, for a chunked body, as soon as the count passes the limit),
and the event loop never parses or tokenizes it. Error replies never echo the input: a
client's 20 MB or non-encodable text stays out of the response, and JSON is written ASCII-only
with NaN refused, so an error reply cannot itself fail to encode.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_MESSAGE_CHARS = 300


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_body(message: str, openai: bool) -> dict:
    if openai:
        return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return {"error": message}


def _short(text: Any, limit: int = 64) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def validation_details(exc: RequestValidationError) -> list[dict]:
    """Where and why each field failed, without the offending values."""
    details = []
    for error in exc.errors()[:10]:
        loc = [p if isinstance(p, int) else _short(p) for p in error.get("loc", ()) if p != "body"]
        message = "unsupported field" if error.get("type") == "extra_forbidden" else str(error.get("msg", "invalid"))
        details.append({"loc": loc, "msg": _short(message, 200), "type": str(error.get("type", "invalid"))})
    return details


def validation_message(details: list[dict]) -> str:
    parts = [f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" if d["loc"] else d["msg"] for d in details]
    return _short("; ".join(parts) or "invalid request", MAX_MESSAGE_CHARS)


def parse_error_message(exc: HTTPException) -> str:
    """FastAPI turns any failure to read a JSON body into one 400; say which failure it was."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "request body is not valid UTF-8 JSON"
    if isinstance(cause, RecursionError):
        return "request body is nested too deeply"
    return _short(exc.detail if isinstance(exc.detail, str) else "invalid request", MAX_MESSAGE_CHARS)


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, before reading them."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = False  # the HTTP parser has already refused a malformed length
            if too_big:
                return await self._refuse(scope, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self.message())  # FastAPI re-raises it from body parsing
            return message

        await self.app(scope, counted_receive, send)

    def message(self) -> str:
        return f"request body is larger than {self.max_bytes:,} bytes"

    async def _refuse(self, scope, send) -> None:
        openai = scope.get("path", "").startswith("/v1/")
        response = SafeJSONResponse(error_body(self.message(), openai), status_code=413,
                                    headers={"Connection": "close"})
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> dict:
    return {"type": "http.disconnect"}
