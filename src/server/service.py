"""What every endpoint shares: the model, the slot limiter, the decode engine and the counters.

`StoryService` checks prompts, admits requests (or says why not), runs one generation as text
deltas, scores token sequences off the event loop, reports health, and ends every open stream
properly when the server stops. The routes (`web_routes.py`, `openai_routes.py`) only translate
HTTP to these calls and back.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from src.generation.batch import Request
from src.generation.engine import Generator
from src.generation.presets import PRESETS, SAMPLING_KEYS, SamplingParams
from src.generation.scoring import TokenScores, score_tokens
from src.generation.text import GenerationResult
from src.model.checkpoint import LoadedModel
from src.server.completions import PromptTokens
from src.server.decode_loop import Finished
from src.server.engines import Engine, EngineUnavailable, ProcessEngine, ThreadEngine
from src.server.limiter import ServerBusy, ShuttingDown, SlotLimiter, Ticket
from src.server.metrics import ServerMetrics
from src.server.settings import ServerSettings

SHUTDOWN_MESSAGE = "the server is shutting down; retry the request shortly"


class ApiError(Exception):
    """A request the server answers with `status` and one message (in OpenAI's shape if `openai`)."""

    def __init__(self, status: int, message: str, openai: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.openai = status, message, openai


def unavailable(exc: BaseException) -> bool:
    """Whether a failed generation says "try again shortly" (503), not "this request is wrong"."""
    return isinstance(exc, (EngineUnavailable, ShuttingDown))


def make_engine(loaded: LoadedModel, settings: ServerSettings) -> Engine:
    """The decode engine `settings.engine` asks for. "auto" is a separate process on CPU, except
    on Windows, whose default event loop cannot watch a pipe (`add_reader`)."""
    on_cpu = loaded.model.tok_embeddings.weight.device.type == "cpu"
    process_ok = on_cpu and sys.platform != "win32"
    kind = settings.engine if settings.engine != "auto" else ("process" if process_ok else "thread")
    if kind == "process":
        return ProcessEngine(loaded.model, loaded.eos_id, settings.max_concurrent, settings.decode_threads(on_cpu),
                             decode=settings.decode_step, step_timeout_s=settings.step_timeout_s)
    return ThreadEngine(loaded.model, loaded.eos_id, settings.max_concurrent, settings.decode_step)


class StoryService:
    def __init__(self, loaded: LoadedModel, settings: ServerSettings) -> None:
        self.loaded = loaded
        self.context = loaded.config.max_seq_len
        self.model_id = loaded.path.stem
        self.generator = Generator.from_loaded(loaded)
        self.limiter = SlotLimiter(settings.max_concurrent, settings.max_queue)
        self.engine = make_engine(loaded, settings)
        self.metrics = ServerMetrics(active=lambda: self.limiter.active, queued=lambda: self.limiter.waiting)
        self.scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")  # one prefill at a time
        self.shutdown = asyncio.Event()  # set by `stop` when the server is told to stop
        # No prompt longer than this many characters can fit the context, whatever its text.
        self.max_prompt_chars = self.context * max(len(t) for t in loaded.tokenizer.get_vocab())
        self._watcher: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        """On the event loop: start the decode engine and the shutdown watcher."""
        self.engine.start()
        self._loop = asyncio.get_running_loop()
        self._watcher = self._loop.create_task(self._end_streams_on_shutdown())

    def stop(self) -> None:
        """The server is told to stop (a signal handler may call this): end every stream."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.shutdown.set)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.scorer.shutdown(wait=False, cancel_futures=True)
        self.engine.close()

    async def _end_streams_on_shutdown(self) -> None:
        """Queued and running generations end with an error event and [DONE], not a cut stream."""
        await self.shutdown.wait()
        self.limiter.shut_down(SHUTDOWN_MESSAGE)
        self.engine.end_streams(SHUTDOWN_MESSAGE)

    # -- requests ---------------------------------------------------------------------------

    def check_prompt(self, prompt: str, openai: bool) -> list[int]:
        """The prompt's token ids, once they are known to fit the context."""
        status = 400 if openai else 422
        if len(prompt) > self.max_prompt_chars:
            raise ApiError(status, f"prompt is {len(prompt):,} characters; no prompt over {self.max_prompt_chars:,} "
                           f"fits the model's context of {self.context} tokens", openai)
        prompt_ids = self.generator.encode_prompt(prompt)
        n_tokens = len(self.generator.story_prefix) + len(prompt_ids)
        if n_tokens >= self.context:
            raise ApiError(status, f"prompt is {n_tokens} tokens; the model's context is {self.context} tokens", openai)
        return prompt_ids

    def text_prompt(self, prompt: str, openai: bool) -> PromptTokens:
        """A text prompt that fits, decoded after the story-start token."""
        ids = self.check_prompt(prompt, openai)
        return PromptTokens(prompt, ids, self.generator.story_prefix + ids)

    def admit(self, openai: bool) -> Ticket:
        """A place in the queue for one generation, or a 503 that says why not."""
        if self.engine.failure is not None:
            raise ApiError(503, f"generation is unavailable: {self.engine.failure}", openai)
        try:
            return self.limiter.reserve()
        except ServerBusy:
            raise ApiError(503, "server busy: every generation slot and queue place is taken; retry shortly",
                           openai) from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc), openai) from None

    def generate(self, prompt: PromptTokens, params: SamplingParams, ticket: Ticket,
                 stops: list[str] | None = None) -> Generation:
        """One story: `async for` its text deltas, then the GenerationResult."""
        return Generation(self, prompt, params, ticket, stops)

    async def score(self, sequences: list[list[int]], top_k: int) -> list[TokenScores]:
        """Log-probabilities of each sequence, on the scoring thread (one prefill per batch of
        sequences; the event loop and the decode worker go on meanwhile)."""
        self.metrics.scored_tokens.inc(sum(map(len, sequences)))
        return await asyncio.get_running_loop().run_in_executor(
            self.scorer, score_tokens, self.loaded.model, sequences, top_k)

    # -- health -----------------------------------------------------------------------------

    def health(self) -> tuple[int, dict]:
        """(HTTP status, body): 200 while stories can be generated, else 503 with the reason."""
        engine, limiter, loaded = self.engine, self.limiter, self.loaded
        if engine.failure is not None:
            status = "error"
        elif limiter.closed:
            status = "shutting_down"
        else:
            status = "ok" if engine.ready else "loading"
        weight = loaded.model.tok_embeddings.weight
        body = {
            "status": status,
            "model_loaded": True,
            "checkpoint": loaded.name,
            "device": str(weight.device),
            "dtype": str(weight.dtype).replace("torch.", ""),
            "precision": loaded.precision,
            "engine": engine.name,
            "decode_step": engine.decode_step,
            "engine_restarts": len(engine.restart_times),
            "parameters": loaded.model.num_parameters(),
            "vocab_size": loaded.config.vocab_size,
            "context_length": self.context,
            "active_generations": limiter.active,
            "queued": limiter.waiting,
            "max_concurrent": limiter.max_active,
            "queue_wait": limiter.queue_wait_ms(),
            "presets": {name: {k: getattr(p, k) for k in SAMPLING_KEYS}
                        for name, p in PRESETS.items()},
        }
        if engine.failure is not None:
            body["error"] = engine.failure
        return (200 if status == "ok" else 503), body


class Generation:
    """One story as text deltas, then its GenerationResult (`async for`).

    The request goes to the engine as soon as the generation is made when a slot is free, so
    its prefill runs while the response starts; else once the ticket gets a slot. `aclose`
    stops decoding and frees the slot, whether or not the iteration ever ran."""

    def __init__(self, service: StoryService, prompt: PromptTokens, params: SamplingParams, ticket: Ticket,
                 stops: list[str] | None) -> None:
        self._service, self._ticket = service, ticket
        seed = service.generator.seed_for(params)
        self._request = Request(prompt.window, prompt.ids, params, seed)
        self._text = service.generator.story_text(prompt.text, prompt.ids, seed, stops)
        self._tokens: asyncio.Queue | None = None
        if ticket.take_free_slot():
            try:
                self._tokens = self._submit()
            except EngineUnavailable:
                pass  # raised again when iterated: the stream reports it
        self._items = self._deltas()

    def __aiter__(self) -> AsyncIterator[str | GenerationResult]:
        return self._items

    async def aclose(self) -> None:
        await self._items.aclose()
        self._service.engine.cancel(self._request)
        self._ticket.release()

    def _submit(self) -> asyncio.Queue:
        tokens = self._service.engine.submit(self._request)
        self._service.metrics.requests.inc()
        self._service.metrics.prompt_tokens.inc(len(self._request.penalty_ids))
        return tokens

    async def _deltas(self) -> AsyncIterator[str | GenerationResult]:
        text, metrics = self._text, self._service.metrics
        async with self._ticket:  # waits for a slot unless it has one
            if self._tokens is None:
                self._tokens = self._submit()
            tokens = self._tokens
            last = time.perf_counter()
            try:
                while text.finish_reason is None:
                    # Tokens that arrived while the previous delta was being sent go out as one
                    # delta: when the client or this loop falls behind the decoder, it catches up.
                    items = [await tokens.get()]
                    while not tokens.empty():
                        items.append(tokens.get_nowait())
                    if isinstance(items[-1], BaseException):  # an error is a stream's last item
                        raise items[-1]
                    ids = [item for item in items if isinstance(item, int)]
                    finished = items[-1].reason if isinstance(items[-1], Finished) else None
                    delta = text.extend(ids, finished)
                    count_tokens(metrics, len(ids), last)
                    last = time.perf_counter()
                    if delta:
                        yield delta
            finally:
                self._service.engine.cancel(self._request)  # stops decoding when we leave early
            yield text.result()


def count_tokens(metrics: ServerMetrics, n_tokens: int, since: float) -> None:
    """Count `n_tokens` that arrived together, each `1/n` of the time since the last ones."""
    if n_tokens:
        metrics.generated_tokens.inc(n_tokens)
        interval = (time.perf_counter() - since) / n_tokens
        for _ in range(n_tokens):
            metrics.step_seconds.observe(interval)
