"""Request bodies, with the ranges checked before any streaming starts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from src.generation.presets import DEFAULT_PRESET, PRESETS, SamplingParams

PresetName = Literal["balanced", "conservative", "creative"]


class GenerateRequest(BaseModel):
    """POST /generate. Unset sampling fields come from the preset (default: balanced)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=20_000, examples=["Once upon a time there was"])
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy")
    max_tokens: int = Field(200, ge=1, le=1000)
    top_k: int | None = Field(None, ge=0, le=1000, description="0 disables")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="1 disables")
    repetition_penalty: float | None = Field(None, ge=1.0, le=2.0, description="1 disables")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    preset: PresetName | None = None

    def sampling_params(self) -> SamplingParams:
        base = PRESETS[self.preset or DEFAULT_PRESET]
        overrides = {
            name: getattr(self, name)
            for name in ("temperature", "top_k", "top_p", "repetition_penalty")
            if getattr(self, name) is not None
        }
        return base.replace(max_new_tokens=self.max_tokens, seed=self.seed, **overrides)


class CompletionRequest(BaseModel):
    """POST /v1/completions: the subset of OpenAI's completions API this model can honour."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | list[str] = Field(examples=["Once upon a time"])
    max_tokens: int = Field(16, ge=1, le=1000)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    user: str | None = None
    # Accepted only at their no-op values, so clients that always send them keep working.
    echo: Literal[False] = False
    logprobs: None = None
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0)
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0)
    best_of: int = Field(1, ge=1, le=1)
    stream_options: dict | None = None

    def single_prompt(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ValueError("prompt: exactly one prompt per request is supported")
            return self.prompt[0]
        return self.prompt

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ValueError("stop: at most 4 stop sequences")
        return stops

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature, top_k=0, top_p=self.top_p, repetition_penalty=1.0,
            max_new_tokens=self.max_tokens, seed=self.seed,
        )
