"""The web page, its SSE story stream (`POST /generate`), `/health`, `/metrics` and `/docs`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from src.generation.postprocess import without_cut_sentence
from src.server.guards import SafeJSONResponse
from src.server.schemas import ErrorResponse, GenerateRequest, error_responses
from src.server.service import StoryService
from src.server.sse import SSE_CONTENT, EventStream, story_stream

STATIC = Path(__file__).with_name("static")
PAGE = STATIC / "index.html"
RETRY_AFTER_S = "2"


def add_web_routes(app: FastAPI, service: StoryService) -> None:

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="TinyStories generator - API docs",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css", swagger_favicon_url="/favicon.ico")

    @app.get("/health", responses={503: {"description": "loading, or generation is unavailable (see status)"}})
    async def health() -> SafeJSONResponse:
        """200 while stories can be generated; 503 (a load balancer's cue) while the decode worker
        is starting, and once it has failed for good. `decode_step` says whether the compiled
        step is in use yet ("compiling": served eagerly meanwhile)."""
        status, body = service.health()
        headers = None if status == 200 else {"Retry-After": RETRY_AFTER_S}
        return SafeJSONResponse(body, status_code=status, headers=headers)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/generate", response_class=EventStream,
              responses={200: {"content": SSE_CONTENT, "description": "a story as server-sent events"},
                         **error_responses(ErrorResponse, 400, 413, 422, 503)})
    async def generate(body: GenerateRequest):
        """Stream a story as server-sent events: `{"token"}` deltas, one `{"done"}`, then `[DONE]`."""
        prompt = service.text_prompt(body.prompt, openai=False)
        params = body.sampling_params()
        return story_stream(
            service, prompt, params, service.admit(openai=False),
            delta=lambda text: {"token": text},
            done=lambda result: {"done": True, "finish_reason": result.finish_reason, "tokens": result.tokens,
                                 "tokens_per_s": round(result.tokens_per_s, 2), "seed": result.seed,
                                 **({"text": without_cut_sentence(result.prompt, result.text)}
                                    if result.finish_reason == "length" else {})},
            error=lambda exc: {"error": f"{type(exc).__name__}: {exc}"})

