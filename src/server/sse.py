"""Server-sent events: how a story goes out as a stream, for `/generate` and `/v1/completions`.

Each event's `data` is JSON (a text delta, then one closing payload, or an error), then `[DONE]`.
The response pings idle clients, and on shutdown the stream still sends its error event and
`[DONE]` within SHUTDOWN_GRACE_S.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from sse_starlette.sse import EventSourceResponse

from src.generation.presets import SamplingParams
from src.generation.text import GenerationResult
from src.server.completions import PromptTokens
from src.server.limiter import Ticket
from src.server.service import StoryService

SHUTDOWN_GRACE_S = 5.0  # on SIGTERM, open streams get this long to send their error event and [DONE]
PING_S = 15
SSE_EVENT = {"type": "object", "description": "one server-sent event; `data` is JSON, or [DONE] last",
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}}, "required": ["data"]}
SSE_CONTENT = {"text/event-stream": {"schema": SSE_EVENT}}


def story_stream(service: StoryService, prompt: PromptTokens, params: SamplingParams, ticket: Ticket,
                 delta: Callable[[str], dict], done: Callable[[GenerationResult], dict],
                 error: Callable[[Exception], dict], stops: list[str] | None = None) -> EventSourceResponse:
    """One story as an SSE response: `delta(text)` for each text delta, `done(result)` once it
    ends, `error(exc)` if it fails, then `[DONE]`; the ticket (its place in the queue) is released
    however the stream ends."""

    async def events() -> AsyncIterator[dict]:
        try:
            async with aclosing(service.generate(prompt, params, ticket, stops)) as items:
                async for item in items:
                    payload = done(item) if isinstance(item, GenerationResult) else delta(item)
                    yield {"data": json.dumps(payload, ensure_ascii=False)}
        except Exception as exc:  # noqa: BLE001 - reported to the client, then the stream ends cleanly
            yield {"data": json.dumps(error(exc))}
        finally:
            ticket.release()
        yield {"data": "[DONE]"}

    return EventSourceResponse(events(), ping=PING_S, shutdown_event=service.shutdown,
                               shutdown_grace_period=SHUTDOWN_GRACE_S)
