"""What stands between a client and the model: body size limit, Host check, read timeout, and
error replies.

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


def error_body(message: str, openai: bool, status: int = 400) -> dict:
    """The error reply: OpenAI's shape under /v1 (its `type` says whose fault it is), else {"error"}."""
    if openai:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
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


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """Host headers a server bound to `bind_host` answers: a loopback bind answers loopback
    names only (a web page on another site cannot reach it through DNS rebinding); a bind to
    every interface cannot know its names, so it answers any ("*")."""
    if bind_host in ("0.0.0.0", "::", ""):
        return ("*",)
    if bind_host in LOOPBACK_HOSTS or bind_host.startswith("127."):
        return tuple(dict.fromkeys((bind_host, *LOOPBACK_HOSTS)))
    return (bind_host,)


def host_name(header: str) -> str:
    """The name in a Host header, without its port: example.com:80 -> example.com, [::1]:80 -> ::1."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """Refuse requests whose Host header names none of `allowed` ("*": any) with 421."""

    def __init__(self, app, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            header = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
            if host_name(header.strip().lower()) not in self.allowed:
                openai = scope.get("path", "").startswith("/v1/")
                message = "Host header names no host this server answers to (see --allowed-host)"
                response = SafeJSONResponse(error_body(message, openai, 421), status_code=421)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def read_timeout_protocol(seconds: float):
    """uvicorn's httptools protocol, with a limit on how long a client may take to send a whole
    request (headers and body) once it has started one or opened the connection: a client that
    never finishes (slowloris) gets 408 and is disconnected instead of holding a socket forever.
    None where httptools is not installed (uvicorn's default protocol is used then)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class ReadTimeoutProtocol(HttpToolsProtocol):
        _read_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._read_timer is None:
                self._read_timer = self.loop.call_later(seconds, self._timed_out)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _timed_out(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or not self.cycle.response_started:
                body = json.dumps(error_body(f"the request was not sent within {seconds:g} s", False)).encode()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return ReadTimeoutProtocol


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
        response = SafeJSONResponse(error_body(self.message(), openai, 413), status_code=413,
                                    headers={"Connection": "close"})
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> dict:
    return {"type": "http.disconnect"}
