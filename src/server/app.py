"""The FastAPI app: web page, SSE generation, health, and an OpenAI-compatible API.

One decode loop runs every active generation in the same forward pass (continuous batching,
`src/server/decode_loop.py`), in a process of its own on CPU (`src/server/engines.py`), and
hands tokens to the event loop, which stays free; a client that disconnects leaves the batch
at the next step. Each request keeps its own random generator, so a seeded request gives the
same story alone or beside others.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import anyio
import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from src.generation.batch import Request as DecodeRequest
from src.generation.engine import Generator
from src.generation.scoring import TokenScores, score_tokens
from src.generation.presets import PRESETS, SamplingParams
from src.generation.text import GenerationResult
from src.model.checkpoint import LoadedModel
from src.server.completions import PromptTokens, logprobs_block
from src.server.decode_loop import Finished
from src.server.engines import EngineUnavailable, ProcessEngine, ThreadEngine
from src.server.limiter import ServerBusy, ShuttingDown, SlotLimiter, Ticket
from src.server.guards import (
    BodySizeLimit,
    HostCheck,
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
    DetokenizeRequest,
    ErrorResponse,
    GenerateRequest,
    OpenAIErrorResponse,
    TokenizeRequest,
)
from src.server.metrics import ServerMetrics
from src.server.settings import ServerSettings

STATIC = Path(__file__).with_name("static")
PAGE = STATIC / "index.html"
SSE_EVENT = {"type": "object", "description": "one server-sent event; `data` is JSON, or [DONE] last",
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}}, "required": ["data"]}
SSE_CONTENT = {"text/event-stream": {"schema": SSE_EVENT}}
SHUTDOWN_GRACE_S = 5.0  # on SIGTERM, open streams get this long to send their error event and [DONE]
RETRY_AFTER_S = "2"


def error_responses(model: type, *codes: int) -> dict:
    reasons = {400: "invalid or unsupported request", 413: "request body too large",
               422: "invalid request", 503: "busy or unavailable; retry after Retry-After seconds"}
    return {code: {"model": model, "description": reasons[code]} for code in codes}


def unavailable(exc: Exception) -> bool:
    """Whether a failed generation says "try again shortly" (503), not "this request is wrong"."""
    return isinstance(exc, (EngineUnavailable, ShuttingDown))


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
                             compile_decode=settings.compile_decode, step_timeout_s=settings.step_timeout_s)
    return ThreadEngine(loaded.model, loaded.eos_id, settings.max_concurrent, settings.compile_decode)


def create_app(loaded: LoadedModel, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    generator = Generator.from_loaded(loaded)
    limiter = SlotLimiter(settings.max_concurrent, settings.max_queue)
    engine = make_engine(loaded, settings)
    model_id = loaded.path.stem
    metrics = ServerMetrics(active=lambda: limiter.active, queued=lambda: limiter.waiting)
    scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")  # one prefill at a time

    shutdown = anyio.Event()  # set by sse-starlette when uvicorn is told to stop

    async def end_streams_on_shutdown() -> None:
        """Queued and running generations end with an error event and [DONE], not a cut stream."""
        await shutdown.wait()
        message = "the server is shutting down; retry the request shortly"
        limiter.shut_down(message)
        engine.end_streams(message)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        watcher = asyncio.get_running_loop().create_task(end_streams_on_shutdown())
        yield
        watcher.cancel()
        scorer.shutdown(wait=False, cancel_futures=True)
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
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
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
        except ShuttingDown as exc:
            raise ApiError(503, str(exc), openai) from None

    async def run_generation(
        prompt: PromptTokens, params: SamplingParams, ticket: Ticket, stops: list[str] | None = None
    ) -> AsyncIterator[str | GenerationResult]:
        """Text deltas, then the GenerationResult. Waits for a slot first; frees it however it ends."""
        async with ticket:
            seed = generator.seed_for(params)
            request = DecodeRequest(prompt.window, prompt.ids, params, seed)
            text = generator.story_text(prompt.text, prompt.ids, seed, stops)
            tokens = engine.submit(request)
            metrics.requests.inc()
            last = time.perf_counter()
            try:
                while text.finish_reason is None:
                    item = await tokens.get()
                    if isinstance(item, Finished):
                        delta = text.finish(item.reason)
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        now = time.perf_counter()
                        metrics.generated_tokens.inc()
                        metrics.step_seconds.observe(now - last)
                        last = now
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

    @app.get("/health", responses={503: {"description": "loading, or generation is unavailable (see status)"}})
    async def health() -> SafeJSONResponse:
        """200 while stories can be generated; 503 (a load balancer's cue) while the decode worker
        is starting, and once it has failed for good. `decode_step` says whether the compiled
        step is in use yet ("compiling": served eagerly meanwhile)."""
        if engine.failure is not None:
            status = "error"
        elif limiter.closed:
            status = "shutting_down"
        else:
            status = "ok" if engine.ready else "loading"
        health = {
            "status": status,
            "model_loaded": True,
            "checkpoint": loaded.name,
            "device": str(loaded.model.tok_embeddings.weight.device),
            "dtype": str(loaded.model.tok_embeddings.weight.dtype).replace("torch.", ""),
            "precision": loaded.precision,
            "engine": engine.name,
            "decode_step": engine.decode_step,
            "engine_restarts": len(engine.restart_times),
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
        headers = None if status == "ok" else {"Retry-After": RETRY_AFTER_S}
        return SafeJSONResponse(health, status_code=200 if status == "ok" else 503, headers=headers)

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
                prompt = PromptTokens(body.prompt, prompt_ids, generator.story_prefix + prompt_ids)
                async with aclosing(run_generation(prompt, params, ticket)) as items:
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

        return EventSourceResponse(events(), ping=15, shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_S)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    special = {"eos_token": loaded.eos_id, "bos_token": loaded.story_start_id, "pad_token": loaded.eos_id}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        """The tokenizer's special tokens and the context (vLLM's endpoint, which lm-evaluation-
        harness's remote tokenizer reads). `bos_token` is the token a story starts after."""
        info = {name: None if token_id is None else loaded.tokenizer.id_to_token(token_id)
                for name, token_id in special.items()}
        return {**info, "model_max_length": loaded.config.max_seq_len,
                "vocab_size": loaded.tokenizer.get_vocab_size(), "tokenizer_class": "ByteLevelBPE"}

    @app.post("/tokenize", responses=error_responses(ErrorResponse, 413, 422))
    async def tokenize(body: TokenizeRequest) -> dict:
        """A text's token ids; `add_special_tokens` puts the story-start token first."""
        ids = (generator.story_prefix if body.add_special_tokens else []) + generator.encode_prompt(body.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": loaded.config.max_seq_len}

    @app.post("/detokenize", responses=error_responses(ErrorResponse, 413, 422))
    async def detokenize(body: DetokenizeRequest) -> dict:
        vocab = loaded.tokenizer.get_vocab_size()
        bad = next((t for t in body.tokens if t >= vocab), None)
        if bad is not None:
            raise ApiError(422, f"token id {bad} is outside the vocabulary (0-{vocab - 1})")
        return {"prompt": loaded.tokenizer.decode(body.tokens, skip_special_tokens=False)}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "tinystories"}]}

    @app.post("/v1/completions", response_model=CompletionResponse,
              responses={200: {"content": SSE_CONTENT, "description": "the completion (JSON), or with "
                               "`stream: true` server-sent events of completion chunks"},
                         **error_responses(OpenAIErrorResponse, 400, 413, 503)})
    async def completions(body: CompletionRequest):
        """OpenAI-compatible text completions (point the official client's base_url at /v1).

        Also what lm-evaluation-harness's `local-completions` needs: token-id prompts, several
        prompts per request, `echo`, `logprobs` and `max_tokens: 0`."""
        prompts, stops = [check_completion_prompt(p, body) for p in body.prompts()], body.stop_list()
        if body.stream and (len(prompts) > 1 or body.scoring):
            raise ApiError(400, "stream takes one prompt, without echo or logprobs", openai=True)
        params = body.sampling_params()
        completion_id, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        openai_reason = {"eos": "stop", "stop": "stop", "length": "length"}

        def chunk(choices: list[dict]) -> dict:
            return {"id": completion_id, "object": "text_completion", "created": created, "model": model_id,
                    "choices": choices}

        def usage(prompt_tokens: int, completion_tokens: int) -> dict:
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}

        if not body.stream:
            results = await complete_all(prompts, params, stops) if body.max_tokens else [None] * len(prompts)
            scores = await score_all(prompts, results, body.logprobs or 0) if body.scoring else [None] * len(prompts)
            choices = []
            for index, (prompt, result, score) in enumerate(zip(prompts, results, scores)):
                completion = "" if result is None else result.text
                text = (prompt.text if body.echo else "") + completion
                logprobs = None if body.logprobs is None else logprobs_block(
                    loaded.tokenizer, prompt.ids + ([] if result is None else result.token_ids), score,
                    start=0 if body.echo else len(prompt.ids))
                reason = "length" if result is None else openai_reason.get(result.finish_reason, "stop")
                choices.append({"text": text, "index": index, "logprobs": logprobs, "finish_reason": reason})
            metrics.prompt_tokens.inc(sum(len(p.ids) for p in prompts))
            response = chunk(choices)
            response["usage"] = usage(sum(len(p.ids) for p in prompts),
                                      sum(r.tokens for r in results if r is not None))
            return response

        prompt = prompts[0]
        ticket = admit(openai=True)
        metrics.prompt_tokens.inc(len(prompt.ids))

        async def events():
            try:
                async with aclosing(run_generation(prompt, params, ticket, stops)) as items:
                    async for item in items:
                        if isinstance(item, GenerationResult):
                            reason = openai_reason.get(item.finish_reason, "stop")
                            final = chunk([{"text": "", "index": 0, "logprobs": None, "finish_reason": reason}])
                            if body.stream_options is not None and body.stream_options.include_usage:
                                final["usage"] = usage(item.prompt_tokens, item.tokens)
                            yield {"data": json.dumps(final)}
                        else:
                            yield {"data": json.dumps(chunk([{"text": item, "index": 0, "logprobs": None,
                                                              "finish_reason": None}]), ensure_ascii=False)}
            except Exception as exc:  # noqa: BLE001 - reported to the client, then the stream ends cleanly
                status = 503 if unavailable(exc) else 500
                yield {"data": json.dumps(error_body(f"{type(exc).__name__}: {exc}", True, status))}
            finally:
                ticket.release()
            yield {"data": "[DONE]"}

        return EventSourceResponse(events(), ping=15, shutdown_event=shutdown, shutdown_grace_period=SHUTDOWN_GRACE_S)

    def check_completion_prompt(prompt: str | list[int], body: CompletionRequest) -> PromptTokens:
        """A /v1/completions prompt as tokens, once it is known to fit: a text is encoded and put
        after the story-start token, as /generate does; token ids are taken as they are."""
        if isinstance(prompt, str):
            ids = check_prompt(prompt, openai=True)
            prompt_tokens = PromptTokens(prompt, ids, generator.story_prefix + ids)
        else:
            vocab = loaded.tokenizer.get_vocab_size()
            bad = next((t for t in prompt if t >= vocab), None)
            if bad is not None:
                raise ApiError(400, f"token id {bad} is outside the vocabulary (0-{vocab - 1})", openai=True)
            prompt_tokens = PromptTokens(loaded.tokenizer.decode(prompt, skip_special_tokens=False), prompt, prompt)
        context = loaded.config.max_seq_len
        # scored: the prompt and completion in one pass, whose last token is only predicted
        needed = len(prompt_tokens.window) + body.max_tokens - 1 if body.scoring else len(prompt_tokens.window) + 1
        if needed > context:
            raise ApiError(400, f"prompt is {len(prompt_tokens.window)} tokens; with max_tokens {body.max_tokens}"
                           f"{' and logprobs or echo' if body.scoring else ''} that exceeds the model's context of "
                           f"{context} tokens", openai=True)
        if body.max_tokens == 0 and not body.echo:
            raise ApiError(400, "max_tokens 0 generates nothing: use it with echo to score the prompt", openai=True)
        return prompt_tokens

    async def complete_all(prompts: list[PromptTokens], params: SamplingParams,
                           stops: list[str]) -> list[GenerationResult]:
        """Generate a completion for each prompt, all in the decode batch at once."""
        tickets = []
        try:
            for _ in prompts:
                tickets.append(admit(openai=True))
        except ApiError:
            for ticket in tickets:
                ticket.release()
            raise

        async def one(prompt: PromptTokens, ticket: Ticket) -> GenerationResult:
            try:
                async with aclosing(run_generation(prompt, params, ticket, stops)) as items:
                    async for item in items:
                        if isinstance(item, GenerationResult):
                            return item
            finally:
                ticket.release()

        try:
            return list(await asyncio.gather(*(one(p, t) for p, t in zip(prompts, tickets))))
        except (EngineUnavailable, ShuttingDown) as exc:
            raise ApiError(503, str(exc), openai=True) from None

    async def score_all(prompts: list[PromptTokens], results: list[GenerationResult | None],
                        top_k: int) -> list[TokenScores]:
        """Log-probabilities of each prompt and its completion, on the scoring thread (one prefill
        per batch of prompts; the event loop and the decode worker go on meanwhile)."""
        sequences = [p.ids + ([] if r is None else r.token_ids) for p, r in zip(prompts, results)]
        metrics.scored_tokens.inc(sum(map(len, sequences)))
        return await asyncio.get_running_loop().run_in_executor(scorer, score_tokens, loaded.model, sequences, top_k)

    return app
