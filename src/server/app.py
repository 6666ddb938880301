"""The FastAPI app: web page, SSE generation, health, and an OpenAI-compatible API.

One decode loop runs every active generation in the same forward pass (continuous batching,
`src/server/decode_loop.py`), in a process of its own on CPU (`src/server/engines.py`), and
hands tokens to the event loop, which stays free; a client that disconnects leaves the batch
at the next step. Each request keeps its own random generator, so a seeded request gives the
same story alone or beside others.

    app.py            the app: middleware, error replies, the OpenAPI schema, the routes
    service.py        what the routes share: prompts, admission, generation, scoring, health
    web_routes.py     /, /generate (SSE), /health, /metrics, /docs
    openai_routes.py  /v1/completions, /v1/models, /tokenizer_info, /tokenize, /detokenize
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from src.model.checkpoint import LoadedModel
from src.server.guards import (
    BodySizeLimit,
    HostCheck,
    SafeJSONResponse,
    error_body,
    parse_error_message,
    validation_details,
    validation_message,
)
from src.server.openai_routes import add_openai_routes
from src.server.schemas import MAX_BODY_BYTES, MAX_PROMPT_CHARS
from src.server.service import ApiError, StoryService
from src.server.settings import ServerSettings
from src.server.web_routes import RETRY_AFTER_S, add_web_routes


def create_app(loaded: LoadedModel, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    service = StoryService(loaded, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.close()

    app = FastAPI(
        lifespan=lifespan,
        title="TinyStories generator",
        description="Stream children's stories from a WikiMiniModel. The web UI is at `/`.",
        version="1.0",
        default_response_class=SafeJSONResponse,
        docs_url=None,  # served from local files: the page and the docs work offline
        redoc_url=None,
    )
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    app.state.service = service
    app.state.generator, app.state.limiter, app.state.engine = service.generator, service.limiter, service.engine
    add_error_replies(app)
    app.openapi = lambda: openapi_for_this_model(app, service)
    # API docs' assets from the swagger-ui-bundle package instead of a CDN
    app.mount("/static/docs", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    # On the app itself, not through include_router, which adds a layer of route matching to every
    # request and builds its routes' state on the first one.
    add_web_routes(app, service)
    add_openai_routes(app, service)
    return app


def add_error_replies(app: FastAPI) -> None:
    """Every error is one JSON message: OpenAI's shape under /v1, {"error"} elsewhere."""

    def is_openai(request: Request) -> bool:
        return request.url.path.startswith("/v1/")

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        openai = is_openai(request)
        details = validation_details(exc)
        body = error_body(validation_message(details), openai)
        if not openai:
            body["detail"] = details
        return SafeJSONResponse(body, status_code=400 if openai else 422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})  # e.g. Allow on a 405
        if exc.status_code == 413:
            headers["Connection"] = "close"
        return SafeJSONResponse(error_body(parse_error_message(exc), is_openai(request), exc.status_code),
                                status_code=exc.status_code, headers=headers)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        headers = {"Retry-After": RETRY_AFTER_S} if exc.status == 503 else None
        return SafeJSONResponse(error_body(exc.message, exc.openai, exc.status), status_code=exc.status,
                                headers=headers)

    @app.exception_handler(Exception)
    async def on_unexpected_error(request: Request, exc: Exception):
        return SafeJSONResponse(error_body(f"internal error ({type(exc).__name__})", is_openai(request), 500),
                                status_code=500)


def openapi_for_this_model(app: FastAPI, service: StoryService) -> dict:
    """The generated schema, with the prompt length bound this model really has (a schema
    cannot state the token limit, but it can state the character limit that implies)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        limit = min(MAX_PROMPT_CHARS, service.max_prompt_chars)

        def tighten(node):
            if isinstance(node, dict):
                if node.get("type") == "string" and node.get("maxLength") == MAX_PROMPT_CHARS:
                    node["maxLength"] = limit
                for value in node.values():
                    tighten(value)
            elif isinstance(node, list):
                for value in node:
                    tighten(value)

        tighten(schema.get("components", {}))
        app.openapi_schema = schema
    return app.openapi_schema
