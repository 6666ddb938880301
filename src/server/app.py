"""The FastAPI app: web page, SSE generation, health, and an OpenAI-compatible API.

One decode loop runs every active generation in the same forward pass (continuous batching,
`src/generation/scheduler.py`), in a process of its own on CPU (`src/server/engines.py`), and
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
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from sse_starlette.sse import EventSourceResponse

from src.generation.engine import GenerationResult, Generator
from src.generation.presets import PRESETS, SamplingParams
from src.generation.scheduler import END
from src.generation.stops import StopSequenceFilter
from src.model.checkpoint import LoadedModel
from src.server.engines import ProcessEngine, ThreadEngine
from src.server.limiter import ServerBusy, SlotLimiter, Ticket
from src.server.schemas import CompletionRequest, GenerateRequest
from src.server.settings import ServerSettings

PAGE = Path(__file__).with_name("static") / "index.html"


@dataclass
class Finished:
    result: GenerationResult
    finish_reason: str  # "eos", "length" or "stop"


class ApiError(Exception):
    def __init__(self, status: int, message: str, openai: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.openai = status, message, openai


def _error_body(message: str, openai: bool) -> dict:
    if openai:
        return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return {"error": message}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = error.get("msg", "invalid")
        if error.get("type") == "extra_forbidden":
            message = "unsupported field"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def make_engine(loaded: LoadedModel, settings: ServerSettings) -> ProcessEngine | ThreadEngine:
    """The decode engine `settings.engine` asks for. "auto" is a separate process on CPU, except
    on Windows, whose default event loop cannot watch a pipe (`add_reader`)."""
    on_cpu = loaded.model.tok_embeddings.weight.device.type == "cpu"
    process_ok = on_cpu and sys.platform != "win32"
    kind = settings.engine if settings.engine != "auto" else ("process" if process_ok else "thread")
    if kind == "process":
        return ProcessEngine(loaded.model, loaded.eos_id, settings.max_concurrent, settings.decode_threads(on_cpu))
    return ThreadEngine(loaded.model, loaded.eos_id, settings.max_concurrent)


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
    )
    app.state.generator = generator
    app.state.limiter = limiter
    app.state.engine = engine

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        openai = request.url.path.startswith("/v1/")
        status = 400 if openai else 422
        body = _error_body(_validation_message(exc), openai)
        if not openai:
            body["detail"] = json.loads(json.dumps(exc.errors(), default=str))
        return JSONResponse(body, status_code=status)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        headers = {"Retry-After": "2"} if exc.status == 503 else None
        return JSONResponse(_error_body(exc.message, exc.openai), status_code=exc.status, headers=headers)

    def check_prompt(prompt: str, openai: bool) -> list[int]:
        """The prompt's token ids, once they are known to fit the context."""
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
    ) -> AsyncIterator[str | Finished]:
        """Text deltas, then one Finished. Waits for a slot first; frees it however it ends."""
        async with ticket:
            seed = generator.seed_for(params)
            request = generator.new_request(prompt_ids, params, seed)
            assembler = generator.assembler(prompt, prompt_ids, params, seed)
            stop_filter = StopSequenceFilter(stops) if stops else None
            tokens = engine.submit(request)
            try:
                while True:
                    item = await tokens.get()
                    if item is END:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    delta = assembler.push(item)
                    if stop_filter is not None:
                        delta = stop_filter.push(delta)
                    if delta:
                        yield delta
                    if stop_filter is not None and stop_filter.stopped:
                        break
                tail = assembler.flush()
                if stop_filter is not None:
                    tail = stop_filter.push(tail) + ("" if stop_filter.stopped else stop_filter.flush())
                if tail:
                    yield tail
            finally:
                engine.cancel(request)  # stops decoding when we leave early (disconnect, stop sequence)
            stopped = stop_filter is not None and stop_filter.stopped
            result = assembler.result()
            yield Finished(result, "stop" if stopped else result.finish_reason)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

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
            "parameters": loaded.model.num_parameters(),
            "vocab_size": loaded.config.vocab_size,
            "context_length": loaded.config.max_seq_len,
            "active_generations": limiter.active,
            "queued": limiter.waiting,
            "max_concurrent": limiter.max_active,
            "presets": {name: {k: getattr(p, k) for k in ("temperature", "top_k", "top_p", "repetition_penalty")}
                        for name, p in PRESETS.items()},
        }
        if engine.failure is not None:
            health["error"] = engine.failure
        return health

    @app.post("/generate", response_class=EventSourceResponse, responses={422: {"description": "invalid request"}})
    async def generate(body: GenerateRequest):
        """Stream a story as server-sent events: `{"token"}` deltas, one `{"done"}`, then `[DONE]`."""
        prompt_ids = check_prompt(body.prompt, openai=False)
        params = body.sampling_params()
        ticket = admit(openai=False)

        async def events():
            try:
                async with aclosing(run_generation(body.prompt, prompt_ids, params, ticket)) as items:
                    async for item in items:
                        if isinstance(item, Finished):
                            yield {"data": json.dumps({
                                "done": True, "finish_reason": item.finish_reason, "tokens": item.result.tokens,
                                "tokens_per_s": round(item.result.tokens_per_s, 2), "seed": item.result.seed,
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

    @app.post("/v1/completions", responses={400: {"description": "invalid or unsupported request"}})
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
                pieces, finished = [], None
                async with aclosing(run_generation(prompt, prompt_ids, params, ticket, stops)) as items:
                    async for item in items:
                        if isinstance(item, Finished):
                            finished = item
                        else:
                            pieces.append(item)
            finally:
                ticket.release()
            response = chunk("".join(pieces), openai_reason.get(finished.finish_reason, "stop"))
            response["usage"] = usage(finished.result)
            return response

        async def events():
            try:
                async with aclosing(run_generation(prompt, prompt_ids, params, ticket, stops)) as items:
                    async for item in items:
                        if isinstance(item, Finished):
                            final = chunk("", openai_reason.get(item.finish_reason, "stop"))
                            if (body.stream_options or {}).get("include_usage"):
                                final["usage"] = usage(item.result)
                            yield {"data": json.dumps(final)}
                        else:
                            yield {"data": json.dumps(chunk(item, None), ensure_ascii=False)}
            except Exception as exc:  # noqa: BLE001
                yield {"data": json.dumps(_error_body(f"{type(exc).__name__}: {exc}", openai=True))}
            finally:
                ticket.release()
            yield {"data": "[DONE]"}

        return EventSourceResponse(events(), ping=15)

    return app
