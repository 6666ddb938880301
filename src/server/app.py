"""The FastAPI app: web page, SSE generation, health, and an OpenAI-compatible API.

One decode loop runs every active generation in the same forward pass (continuous batching,
`src/server/decode_loop.py`), in a process of its own on CPU (`src/server/engines.py`), and
hands tokens to the event loop, which stays free; a client that disconnects leaves the batch
at the next step. Each request keeps its own random generator, so a seeded request gives the
same story alone or beside others.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from src.generation.engine import Generator
from src.generation.presets import PRESETS, SamplingParams
from src.generation.text import GenerationResult
from src.model.checkpoint import LoadedModel
from src.server.decode_loop import Finished
from src.server.engines import ProcessEngine, ThreadEngine
from src.server.limiter import ServerBusy, SlotLimiter, Ticket
from src.server.guards import (
    BodySizeLimit,
    SafeJSONResponse,
    error_body,
    parse_error_message,
    validation_details,
    validation_message,
)
from src.server.schemas import (
    MAX_BODY_BYTES,
    MAX_PROMPT_CHARS,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    GenerateRequest,
    OpenAIErrorResponse,
)
from src.server.settings import ServerSettings

STATIC = Path(__file__).with_name("static")
PAGE = STATIC / "index.html"
SSE_EVENT = {"type": "object", "description": "one server-sent event; `data` is JSON, or [DONE] last",
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}}, "required": ["data"]}
SSE_CONTENT = {"text/event-stream": {"schema": SSE_EVENT}}


def error_responses(model: type, *codes: int) -> dict:
    reasons = {400: "invalid or unsupported request", 413: "request body too large",
               422: "invalid request", 503: "busy or unavailable; retry after Retry-After seconds"}
    return {code: {"model": model, "description": reasons[code]} for code in codes}


class ApiError(Exception):
    def __init__(self, status: int, message: str, openai: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.openai = status, message, openai


def make_engine(loaded: LoadedModel, settings: ServerSettings) -> ProcessEngine | ThreadEngine:
    """The decode engine `settings.engine` asks for. "auto" is a separate process on CPU, except
    on Windows, whose default event loop cannot watch a pipe (`add_reader`)."""
    on_cpu = loaded.model.tok_embeddings.weight.device.type == "cpu"
    process_ok = on_cpu and sys.platform != "win32"
    kind = settings.engine if settings.engine != "auto" else ("process" if process_ok else "thread")
    if kind == "process":
        return ProcessEngine(loaded.model, loaded.eos_id, settings.max_concurrent, settings.decode_threads(on_cpu),
                             compile_decode=settings.compile_decode)
    return ThreadEngine(loaded.model, loaded.eos_id, settings.max_concurrent, settings.compile_decode)


def create_app(loaded: LoadedModel, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    generator = Generator.from_loaded(loaded)
    limiter = SlotLimiter(settings.max_concurrent, settings.max_queue)
    engine = make_engine(loaded, settings)
    model_id = loaded.path.stem

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.close()

    app = FastAPI(
        lifespan=lifespan,
        title="TinyStories generator",
        description="Stream children's stories from a WikiMiniModel. The web UI is at `/`.",
        version="1.0",
        default_response_class=SafeJSONResponse,
        docs_url=None,  # served below from local files: the page and the docs work offline
        redoc_url=None,
    )
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.state.generator = generator
    app.state.limiter = limiter
    app.state.engine = engine

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
        return SafeJSONResponse(error_body(parse_error_message(exc), is_openai(request)),
                                status_code=exc.status_code, headers=headers)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        headers = {"Retry-After": "2"} if exc.status == 503 else None
        return SafeJSONResponse(error_body(exc.message, exc.openai), status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def on_unexpected_error(request: Request, exc: Exception):
        return SafeJSONResponse(error_body(f"internal error ({type(exc).__name__})", is_openai(request)),
                                status_code=500)

    # No prompt longer than this many characters can fit the context, whatever its text.
    max_prompt_chars = loaded.config.max_seq_len * max(len(t) for t in loaded.tokenizer.get_vocab())

    def openapi_for_this_model() -> dict:
        """The generated schema, with the prompt length bound this model really has (a schema
        cannot state the token limit, but it can state the character limit that implies)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            limit = min(MAX_PROMPT_CHARS, max_prompt_chars)

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

    app.openapi = openapi_for_this_model

    def check_prompt(prompt: str, openai: bool) -> list[int]:
        """The prompt's token ids, once they are known to fit the context."""
        if len(prompt) > max_prompt_chars:
            raise ApiError(400 if openai else 422, f"prompt is {len(prompt):,} characters; no prompt over "
                           f"{max_prompt_chars:,} fits the model's context of {loaded.config.max_seq_len} tokens", openai)
        prompt_ids = generator.encode_prompt(prompt)
        n_tokens = len(generator.story_prefix) + len(prompt_ids)
        if n_tokens >= loaded.config.max_seq_len:
            raise ApiError(
                400 if openai else 422,
                f"prompt is {n_tokens} tokens; the model's context is {loaded.config.max_seq_len} tokens",
                openai,
            )
        return prompt_ids

    def admit(openai: bool) -> Ticket:
        if engine.failure is not None:
            raise ApiError(503, f"generation is unavailable: {engine.failure}", openai)
        try:
            return limiter.reserve()
        except ServerBusy:
            raise ApiError(503, "server busy: every generation slot and queue place is taken; retry shortly", openai) from None

    async def run_generation(
        prompt: str, prompt_ids: list[int], params: SamplingParams, ticket: Ticket, stops: list[str] | None = None
    ) -> AsyncIterator[str | GenerationResult]:
        """Text deltas, then the GenerationResult. Waits for a slot first; frees it however it ends."""
        async with ticket:
            seed = generator.seed_for(params)
            request = generator.new_request(prompt_ids, params, seed)
            text = generator.story_text(prompt, prompt_ids, seed, stops)
            tokens = engine.submit(request)
            try:
                while text.finish_reason is None:
                    item = await tokens.get()
                    if isinstance(item, Finished):
                        delta = text.finish(item.reason)
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        delta = text.push(item)
                    if delta:
                        yield delta
            finally:
                engine.cancel(request)  # stops decoding when we leave early (disconnect, stop sequence)
            yield text.result()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    # API docs from the swagger-ui-bundle package's files instead of a CDN
    app.mount("/static/docs", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API docs",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css", swagger_favicon_url="/favicon.ico")

    @app.get("/health")
    async def health() -> dict:
        health = {
            "status": "ok" if engine.failure is None else "error",
            "model_loaded": True,
            "checkpoint": loaded.name,
            "device": str(loaded.model.tok_embeddings.weight.device),
            "dtype": str(loaded.model.tok_embeddings.weight.dtype).replace("torch.", ""),
            "precision": loaded.precision,
            "engine": engine.name,
            "engine_restarts": len(getattr(engine, "restart_times", ())),
            "parameters": loaded.model.num_parameters(),
            "vocab_size": loaded.config.vocab_size,
            "context_length": loaded.config.max_seq_len,
            "active_generations": limiter.active,
            "queued": limiter.waiting,
            "max_concurrent": limiter.max_active,
            "queue_wait": limiter.queue_wait_ms(),
            "presets": {name: {k: getattr(p, k) for k in ("temperature", "top_k", "top_p", "repetition_penalty")}
                        for name, p in PRESETS.items()},
        }
        if engine.failure is not None:
            health["error"] = engine.failure
        return health

    @app.post("/generate", response_class=EventSourceResponse,
              responses={200: {"content": SSE_CONTENT, "description": "a story as server-sent events"},
                         **error_responses(ErrorResponse, 400, 413, 422, 503)})
    async def generate(body: GenerateRequest):
        """Stream a story as server-sent events: `{"token"}` deltas, one `{"done"}`, then `[DONE]`."""
        prompt_ids = check_prompt(body.prompt, openai=False)
        params = body.sampling_params()
        ticket = admit(openai=False)

        async def events():
            try:
                async with aclosing(run_generation(body.prompt, prompt_ids, params, ticket)) as items:
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

        return EventSourceResponse(events(), ping=15)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "tinystories"}]}

    @app.post("/v1/completions", response_model=CompletionResponse,
              responses={200: {"content": SSE_CONTENT, "description": "the completion (JSON), or with "
                               "`stream: true` server-sent events of completion chunks"},
                         **error_responses(OpenAIErrorResponse, 400, 413, 503)})
    async def completions(body: CompletionRequest):
        """OpenAI-compatible text completions (point the official client's base_url at /v1)."""
        try:
            prompt, stops = body.single_prompt(), body.stop_list()
        except ValueError as exc:
            raise ApiError(400, str(exc), openai=True) from None
        prompt_ids = check_prompt(prompt, openai=True)
        params = body.sampling_params()
        ticket = admit(openai=True)
        completion_id, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text: str, finish_reason: str | None) -> dict:
            return {"id": completion_id, "object": "text_completion", "created": created, "model": model_id,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}

        def usage(result: GenerationResult) -> dict:
            return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.tokens,
                    "total_tokens": result.prompt_tokens + result.tokens}

        openai_reason = {"eos": "stop", "stop": "stop", "length": "length"}

        if not body.stream:
            try:
                pieces, result = [], None
                async with aclosing(run_generation(prompt, prompt_ids, params, ticket, stops)) as items:
                    async for item in items:
                        if isinstance(item, GenerationResult):
                            result = item
                        else:
                            pieces.append(item)
            finally:
                ticket.release()
            response = chunk("".join(pieces), openai_reason.get(result.finish_reason, "stop"))
            response["usage"] = usage(result)
            return response

        async def events():
            try:
                async with aclosing(run_generation(prompt, prompt_ids, params, ticket, stops)) as items:
                    async for item in items:
                        if isinstance(item, GenerationResult):
                            final = chunk("", openai_reason.get(item.finish_reason, "stop"))
                            if body.stream_options is not None and body.stream_options.include_usage:
                                final["usage"] = usage(item)
                            yield {"data": json.dumps(final)}
                        else:
                            yield {"data": json.dumps(chunk(item, None), ensure_ascii=False)}
            except Exception as exc:  # noqa: BLE001
                yield {"data": json.dumps(error_body(f"{type(exc).__name__}: {exc}", openai=True))}
            finally:
                ticket.release()
            yield {"data": "[DONE]"}

        return EventSourceResponse(events(), ping=15)

    return app
