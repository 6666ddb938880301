"""Request and error bodies, with types and ranges checked before any work starts.

Strict types: JSON `true` is not a number and `"5"` is not an integer (pydantic's lax mode would
take both). Numbers must be finite (Python's JSON parser accepts NaN and Infinity). Strings
must be valid Unicode: pydantic refuses a lone surrogate such as "\\ud800", which JSON can
spell but UTF-8 cannot encode.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from src.generation.presets import DEFAULT_PRESET, PRESETS, SamplingParams

MAX_PROMPT_CHARS = 20_000
MAX_BODY_BYTES = 256 * 1024  # a 20,000-character prompt of 4-byte characters, JSON-escaped, fits


def _integral_float(value):
    """JSON Schema counts 5.0 as an integer; strict mode alone would not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _bool_only(value):
    """Literal[False] alone would also take 0."""
    if not isinstance(value, bool):
        raise ValueError("must be false (a boolean)")
    return value


Integer = Annotated[int, BeforeValidator(_integral_float)]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
ShortText = Annotated[str, Field(max_length=256)]
StopText = Annotated[str, Field(min_length=1, max_length=64)]
PresetName = Literal["balanced", "conservative", "creative"]
# 2**53 - 1: every integer up to it is exact as a JSON number (a float), so a client or a schema
# checker comparing in floating point agrees with the server about the bound.
Seed = Annotated[int, Field(ge=0, le=2**53 - 1), BeforeValidator(_integral_float)]

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class GenerateRequest(BaseModel):
    """POST /generate. Unset sampling fields come from the preset (default: balanced)."""

    model_config = STRICT

    prompt: Prompt = Field(examples=["Once upon a time there was"])
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy")
    max_tokens: Integer = Field(200, ge=1, le=1000)
    top_k: Integer | None = Field(None, ge=0, le=1000, description="0 disables")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="1 disables")
    repetition_penalty: float | None = Field(None, ge=1.0, le=2.0, description="1 disables")
    seed: Seed | None = None
    preset: PresetName | None = None

    def sampling_params(self) -> SamplingParams:
        return PRESETS[self.preset or DEFAULT_PRESET].overridden_by(self, max_new_tokens=self.max_tokens, seed=self.seed)


def error_responses(model: type, *codes: int) -> dict:
    """OpenAPI `responses` for the error codes an endpoint answers."""
    reasons = {400: "invalid or unsupported request", 413: "request body too large",
               422: "invalid request", 503: "busy or unavailable; retry after Retry-After seconds"}
    return {code: {"model": model, "description": reasons[code]} for code in codes}


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


MAX_PROMPTS = 64  # prompts in one /v1/completions request (lm-eval batches a few per request)
MAX_LOGPROBS = 5  # OpenAI's limit on `logprobs`
TokenIds = Annotated[list[Annotated[int, Field(ge=0, lt=2**31)]], Field(min_length=1, max_length=1 << 17)]


class CompletionRequest(BaseModel):
    """POST /v1/completions: the subset of OpenAI's completions API this model can honour.

    `prompt` is a text, a list of token ids, or a list of either (one choice each). With `echo`
    the prompt comes back in `text` (and in `logprobs`); `logprobs: k` returns each token's
    log-probability under the model's own distribution (no temperature or penalty) and the
    k most likely tokens at each position; `max_tokens: 0` with `echo` scores without generating.
    """

    model_config = STRICT

    model: ShortText | None = None
    prompt: Prompt | TokenIds | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_PROMPTS)] | Annotated[
        list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        examples=["Once upon a time"], description=f"a text or token ids, or a list of up to {MAX_PROMPTS} of either")
    max_tokens: Integer = Field(16, ge=0, le=1000, description="0 only with echo: score the prompt")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    seed: Seed | None = None
    stream: bool = False
    n: Integer = Field(1, ge=1, le=1, description="only 1 is supported")
    user: ShortText | None = None
    echo: Annotated[bool, BeforeValidator(_bool_only)] = False
    logprobs: Integer | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # Accepted only at their no-op values, so clients that always send them keep working.
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0)
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0)
    best_of: Integer = Field(1, ge=1, le=1)
    stream_options: StreamOptions | None = None

    def prompts(self) -> list[str | list[int]]:
        """Every prompt, each a text or a list of token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def scoring(self) -> bool:
        """Whether the reply needs log-probabilities or the prompt echoed (the scoring path)."""
        return self.echo or self.logprobs is not None

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature, top_k=0, top_p=self.top_p, repetition_penalty=1.0,
            max_new_tokens=max(1, self.max_tokens), seed=self.seed,  # 0: nothing is generated anyway
        )


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's shape, which lm-evaluation-harness's remote tokenizer calls)."""

    model_config = STRICT

    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
    add_special_tokens: bool = False  # True: the story-start token first, as generation does
    model: ShortText | None = None


class DetokenizeRequest(BaseModel):
    model_config = STRICT

    tokens: Annotated[list[Annotated[int, Field(ge=0, lt=2**31)]], Field(max_length=1 << 17)]
    model: ShortText | None = None


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error of the web API: one message, and for invalid fields which ones and why."""

    error: str
    detail: list[ErrorDetail] | None = None


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """Errors of /v1, in OpenAI's shape."""

    error: OpenAIErrorBody


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
