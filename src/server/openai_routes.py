"""OpenAI's completions API (`/v1/completions`, `/v1/models`) and vLLM's tokenizer endpoints
(`/tokenizer_info`, `/tokenize`, `/detokenize`): what the official client and
lm-evaluation-harness's `local-completions` model call.

Beyond plain completions: prompts as token ids, several prompts per request (one choice each,
all decoding in the same batch), `echo` and `logprobs: k` (the model's own log-probabilities,
from one scoring prefill per batch of prompts) and `max_tokens: 0` with `echo` (score only).
`add_openai_routes` only registers the endpoints; the work is in the functions below it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import aclosing

from fastapi import FastAPI

from src.generation.presets import SamplingParams
from src.generation.scoring import TokenScores
from src.generation.text import GenerationResult
from src.server.completions import PromptTokens, logprobs_block
from src.server.engines import EngineUnavailable
from src.server.guards import error_body
from src.server.limiter import ShuttingDown, Ticket
from src.server.schemas import (
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    ErrorResponse,
    OpenAIErrorResponse,
    TokenizeRequest,
    error_responses,
)
from src.server.service import ApiError, StoryService, unavailable
from src.server.sse import SSE_CONTENT, story_stream

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # ours -> OpenAI's


def add_openai_routes(app: FastAPI, service: StoryService) -> None:
    loaded, generator = service.loaded, service.generator
    special = {"eos_token": loaded.eos_id, "bos_token": loaded.story_start_id, "pad_token": loaded.eos_id}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        """The tokenizer's special tokens and the context (vLLM's endpoint, which lm-evaluation-
        harness's remote tokenizer reads). `bos_token` is the token a story starts after."""
        info = {name: None if token_id is None else loaded.tokenizer.id_to_token(token_id)
                for name, token_id in special.items()}
        return {**info, "model_max_length": service.context, "vocab_size": loaded.tokenizer.get_vocab_size(),
                "tokenizer_class": "ByteLevelBPE"}

    @app.post("/tokenize", responses=error_responses(ErrorResponse, 413, 422))
    async def tokenize(body: TokenizeRequest) -> dict:
        """A text's token ids; `add_special_tokens` puts the story-start token first."""
        ids = (generator.story_prefix if body.add_special_tokens else []) + generator.encode_prompt(body.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": service.context}

    @app.post("/detokenize", responses=error_responses(ErrorResponse, 413, 422))
    async def detokenize(body: DetokenizeRequest) -> dict:
        check_vocabulary(service, body.tokens, openai=False)
        return {"prompt": loaded.tokenizer.decode(body.tokens, skip_special_tokens=False)}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list",
                "data": [{"id": service.model_id, "object": "model", "created": 0, "owned_by": "tinystories"}]}

    @app.post("/v1/completions", response_model=CompletionResponse,
              responses={200: {"content": SSE_CONTENT, "description": "the completion (JSON), or with "
                               "`stream: true` server-sent events of completion chunks"},
                         **error_responses(OpenAIErrorResponse, 400, 413, 503)})
    async def completions(body: CompletionRequest):
        """OpenAI-compatible text completions (point the official client's base_url at /v1).

        Also what lm-evaluation-harness's `local-completions` needs: token-id prompts, several
        prompts per request, `echo`, `logprobs` and `max_tokens: 0`."""
        return await complete(service, body)


async def complete(service: StoryService, body: CompletionRequest):
    """A completions request: one JSON reply with a choice per prompt, or with `stream` a stream
    of completion chunks."""
    prompts = [completion_prompt(service, p, body) for p in body.prompts()]
    if body.stream and (len(prompts) > 1 or body.scoring):
        raise ApiError(400, "stream takes one prompt, without echo or logprobs", openai=True)
    params, stops = body.sampling_params(), body.stop_list()
    completion_id, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(choices: list[dict], usage_block: dict | None = None) -> dict:
        reply = {"id": completion_id, "object": "text_completion", "created": created, "model": service.model_id,
                 "choices": choices}
        return reply if usage_block is None else {**reply, "usage": usage_block}

    if body.stream:
        wants_usage = body.stream_options is not None and body.stream_options.include_usage

        def done(result: GenerationResult) -> dict:
            last = [{"text": "", "index": 0, "logprobs": None,
                     "finish_reason": FINISH_REASONS.get(result.finish_reason, "stop")}]
            return chunk(last, usage(result.prompt_tokens, result.tokens) if wants_usage else None)

        def error(exc: Exception) -> dict:
            return error_body(f"{type(exc).__name__}: {exc}", True, 503 if unavailable(exc) else 500)

        return story_stream(service, prompts[0], params, service.admit(openai=True),
                            delta=lambda text: chunk([{"text": text, "index": 0, "logprobs": None,
                                                       "finish_reason": None}]),
                            done=done, error=error, stops=stops)

    results = await complete_all(service, prompts, params, stops) if body.max_tokens else [None] * len(prompts)
    scores = [None] * len(prompts)
    if body.logprobs is not None:  # echo alone needs no scores
        sequences = [p.ids + ([] if r is None else r.token_ids) for p, r in zip(prompts, results)]
        scores = await service.score(sequences, body.logprobs)
    choices = [choice(service, index, prompt, result, score, body)
               for index, (prompt, result, score) in enumerate(zip(prompts, results, scores))]
    return chunk(choices, usage(sum(len(p.ids) for p in prompts), sum(r.tokens for r in results if r is not None)))


def check_vocabulary(service: StoryService, ids: list[int], openai: bool) -> None:
    vocab = service.loaded.tokenizer.get_vocab_size()
    bad = next((t for t in ids if t >= vocab), None)
    if bad is not None:
        raise ApiError(400 if openai else 422, f"token id {bad} is outside the vocabulary (0-{vocab - 1})", openai)


def completion_prompt(service: StoryService, prompt: str | list[int], body: CompletionRequest) -> PromptTokens:
    """A prompt as tokens, once it is known to fit: a text is encoded and put after the
    story-start token, as /generate does; token ids are taken as they are."""
    if isinstance(prompt, str):
        tokens = service.text_prompt(prompt, openai=True)
    else:
        check_vocabulary(service, prompt, openai=True)
        tokens = PromptTokens(service.loaded.tokenizer.decode(prompt, skip_special_tokens=False), prompt, prompt)
    if body.logprobs is not None:  # prompt and completion scored in one pass; its last token is never read
        needed = len(tokens.window) + body.max_tokens - 1
    else:  # a completion needs room for one more token (a long one slides); an echo alone, none
        needed = len(tokens.window) + min(body.max_tokens, 1)
    if needed > service.context:
        raise ApiError(400, f"prompt is {len(tokens.window)} tokens; with max_tokens {body.max_tokens}"
                       f"{' and logprobs' if body.logprobs is not None else ''} that exceeds the model's "
                       f"context of {service.context} tokens", openai=True)
    if body.max_tokens == 0 and not body.echo:
        raise ApiError(400, "max_tokens 0 generates nothing: use it with echo to score the prompt", openai=True)
    return tokens


async def complete_all(service: StoryService, prompts: list[PromptTokens], params: SamplingParams,
                       stops: list[str]) -> list[GenerationResult]:
    """A completion for each prompt, all in the decode batch at once (a place each, or a 503)."""
    tickets: list[Ticket] = []
    try:
        for _ in prompts:
            tickets.append(service.admit(openai=True))
    except ApiError:
        for ticket in tickets:
            ticket.release()
        raise

    async def one(prompt: PromptTokens, ticket: Ticket) -> GenerationResult:
        try:
            async with aclosing(service.generate(prompt, params, ticket, stops)) as items:
                async for item in items:
                    if isinstance(item, GenerationResult):
                        return item
        finally:
            ticket.release()

    try:
        return list(await asyncio.gather(*(one(p, t) for p, t in zip(prompts, tickets))))
    except (EngineUnavailable, ShuttingDown) as exc:
        raise ApiError(503, str(exc), openai=True) from None


def choice(service: StoryService, index: int, prompt: PromptTokens, result: GenerationResult | None,
           score: TokenScores | None, body: CompletionRequest) -> dict:
    completion = "" if result is None else result.text
    logprobs = None if body.logprobs is None else logprobs_block(
        service.loaded.tokenizer, prompt.ids + ([] if result is None else result.token_ids), score,
        start=0 if body.echo else len(prompt.ids))
    reason = "length" if result is None else FINISH_REASONS.get(result.finish_reason, "stop")
    return {"text": (prompt.text if body.echo else "") + completion, "index": index, "logprobs": logprobs,
            "finish_reason": reason}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
