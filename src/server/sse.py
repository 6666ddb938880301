"""Server-sent events: how a story goes out as a stream, for `/generate` and `/v1/completions`.

Each event's `data` is JSON (a text delta, then one closing payload, or an error), then `[DONE]`.
`EventStream` is the response: a plain ASGI call that sends each event as it comes, a comment
line to a client that has had nothing for PING_S, and stops the stream when the client goes.
On SIGTERM the service ends every open story with its error event and `[DONE]`
(`StoryService.stop`), and uvicorn gives the streams SHUTDOWN_GRACE_S to send them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import Response

from src.generation.presets import SamplingParams
from src.generation.text import GenerationResult
from src.server.completions import PromptTokens
from src.server.limiter import Ticket
from src.server.service import StoryService

SHUTDOWN_GRACE_S = 5.0  # on SIGTERM, open streams get this long to send their error event and [DONE]
PING_S = 15.0
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
           (b"x-accel-buffering", b"no")]  # proxies: pass each event on at once
SSE_EVENT = {"type": "object", "description": "one server-sent event; `data` is JSON, or [DONE] last",
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}}, "required": ["data"]}
SSE_CONTENT = {"text/event-stream": {"schema": SSE_EVENT}}


class EventStream(Response):
    """A text/event-stream response of the `data` strings `events` yields. `on_close` runs once
    the stream is over however it ended (done, failed, client gone, never started).

    Without sse-starlette's task group per stream: the first event goes out as soon as it
    exists, and one small task per stream watches for the client leaving and sends the pings."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], Awaitable[None]],
                 status_code: int = 200) -> None:
        self.events, self.on_close = events, on_close
        self.status_code, self.background = status_code, None
        self.last_sent = time.monotonic()
        self.client_gone = False

    async def __call__(self, scope, receive, send) -> None:
        stream = asyncio.current_task()
        watcher = asyncio.get_running_loop().create_task(self._watch(receive, send, stream))
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": HEADERS})
            async for data in self.events:
                await self._send(send, b"data: %s\n\n" % data.encode())
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self.client_gone:
                raise
            stream.uncancel()  # our own cancel (the client left): the response ends quietly
        finally:
            watcher.cancel()
            await self.events.aclose()
            await self.on_close()

    async def _send(self, send, body: bytes) -> None:
        self.last_sent = time.monotonic()
        await send({"type": "http.response.body", "body": body, "more_body": True})

    async def _watch(self, receive, send, stream: asyncio.Task) -> None:
        """Cancel the stream when the client disconnects; ping one that has waited PING_S."""
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=PING_S)
            except TimeoutError:
                if time.monotonic() - self.last_sent >= PING_S:
                    await self._send(send, b": ping\n\n")
                continue
            if message["type"] == "http.disconnect":
                self.client_gone = True
                stream.cancel()
                return


def story_stream(service: StoryService, prompt: PromptTokens, params: SamplingParams, ticket: Ticket,
                 delta: Callable[[str], dict], done: Callable[[GenerationResult], dict],
                 error: Callable[[Exception], dict], stops: list[str] | None = None) -> EventStream:
    """One story as an SSE response: `delta(text)` for each text delta, `done(result)` once it
    ends, `error(exc)` if it fails, then `[DONE]`. The story is submitted now, before the
    response starts, when a slot is free; its slot is freed however the stream ends."""
    generation = service.generate(prompt, params, ticket, stops)

    async def events() -> AsyncIterator[str]:
        try:
            async for item in generation:
                yield json.dumps(done(item) if isinstance(item, GenerationResult) else delta(item), ensure_ascii=False)
        except Exception as exc:  # noqa: BLE001 - reported to the client, then the stream ends cleanly
            yield json.dumps(error(exc))
        yield "[DONE]"

    return EventStream(events(), generation.aclose)
