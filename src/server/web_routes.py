"""The web page, its SSE story stream (`POST /generate`), `/health`, `/metrics` and `/docs`."""

from __future__ import annotations

import json
from contextlib import aclosing
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse

from src.generation.text import GenerationResult
from src.server.guards import SafeJSONResponse
from src.server.schemas import ErrorResponse, GenerateRequest
from src.server.service import StoryService

STATIC = Path(__file__).with_name("static")
PAGE = STATIC / "index.html"
RETRY_AFTER_S = "2"
SHUTDOWN_GRACE_S = 5.0  # on SIGTERM, open streams get this long to send their error event and [DONE]
SSE_EVENT = {"type": "object", "description": "one server-sent event; `data` is JSON, or [DONE] last",
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}}, "required": ["data"]}
SSE_CONTENT = {"text/event-stream": {"schema": SSE_EVENT}}


def error_responses(model: type, *codes: int) -> dict:
    """OpenAPI `responses` for the error codes an endpoint answers."""
    reasons = {400: "invalid or unsupported request", 413: "request body too large",
               422: "invalid request", 503: "busy or unavailable; retry after Retry-After seconds"}
    return {code: {"model": model, "description": reasons[code]} for code in codes}


def event_stream(service: StoryService, events) -> EventSourceResponse:
    """An SSE response that pings idle clients and, on shutdown, lets `events` end properly."""
    return EventSourceResponse(events, ping=15, shutdown_event=service.shutdown,
                               shutdown_grace_period=SHUTDOWN_GRACE_S)


def web_router(service: StoryService) -> APIRouter:
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @router.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="TinyStories generator - API docs",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css", swagger_favicon_url="/favicon.ico")

    @router.get("/health", responses={503: {"description": "loading, or generation is unavailable (see status)"}})
    async def health() -> SafeJSONResponse:
        """200 while stories can be generated; 503 (a load balancer's cue) while the decode worker
        is starting, and once it has failed for good. `decode_step` says whether the compiled
        step is in use yet ("compiling": served eagerly meanwhile)."""
        status, body = service.health()
        headers = None if status == 200 else {"Retry-After": RETRY_AFTER_S}
        return SafeJSONResponse(body, status_code=status, headers=headers)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.post("/generate", response_class=EventSourceResponse,
                 responses={200: {"content": SSE_CONTENT, "description": "a story as server-sent events"},
                            **error_responses(ErrorResponse, 400, 413, 422, 503)})
    async def generate(body: GenerateRequest):
        """Stream a story as server-sent events: `{"token"}` deltas, one `{"done"}`, then `[DONE]`."""
        prompt = service.text_prompt(body.prompt, openai=False)
        params = body.sampling_params()
        ticket = service.admit(openai=False)

        async def events():
            try:
                async with aclosing(service.generate(prompt, params, ticket)) as items:
                    async for item in items:
                        if isinstance(item, GenerationResult):
                            yield {"data": json.dumps({
                                "done": True, "finish_reason": item.finish_reason, "tokens": item.tokens,
                                "tokens_per_s": round(item.tokens_per_s, 2), "seed": item.seed,
                            })}
                        else:
                            yield {"data": json.dumps({"token": item}, ensure_ascii=False)}
            except Exception as exc:  # noqa: BLE001 - reported to the client, then the stream ends cleanly
                yield {"data": json.dumps({"error": f"{type(exc).__name__}: {exc}"})}
            finally:
                ticket.release()
            yield {"data": "[DONE]"}

        return event_stream(service, events())

    return router
