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
        base = PRESETS[self.preset or DEFAULT_PRESET]
        overrides = {
            name: getattr(self, name)
            for name in ("temperature", "top_k", "top_p", "repetition_penalty")
            if getattr(self, name) is not None
        }
        return base.replace(max_new_tokens=self.max_tokens, seed=self.seed, **overrides)


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions: the subset of OpenAI's completions API this model can honour."""

    model_config = STRICT

    model: ShortText | None = None
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=1)] = Field(
        examples=["Once upon a time"], description="one prompt (a list must hold exactly one)")
    max_tokens: Integer = Field(16, ge=1, le=1000)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    seed: Seed | None = None
    stream: bool = False
    n: Integer = Field(1, ge=1, le=1, description="only 1 is supported")
    user: ShortText | None = None
    # Accepted only at their no-op values, so clients that always send them keep working.
    echo: Annotated[Literal[False], BeforeValidator(_bool_only)] = False
    logprobs: None = None
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0)
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0)
    best_of: Integer = Field(1, ge=1, le=1)
    stream_options: StreamOptions | None = None

    def single_prompt(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature, top_k=0, top_p=self.top_p, repetition_penalty=1.0,
            max_new_tokens=self.max_tokens, seed=self.seed,
        )


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


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
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
