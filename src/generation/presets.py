"""Sampling settings and the three presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


SAMPLING_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty")  # what a preset sets


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. temperature 0 means greedy; top_k 0 and top_p 1 disable
    those filters; repetition_penalty 1 disables the penalty."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    repetition_penalty: float = 1.2
    max_new_tokens: int = 200
    seed: int | None = None
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.temperature <= 5.0:
            problems.append(f"temperature must be between 0 and 5, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 < self.repetition_penalty <= 10.0:
            problems.append(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if problems:
            raise ValueError("; ".join(problems))

    def replace(self, **changes) -> SamplingParams:
        return dataclasses.replace(self, **changes)

    def overridden_by(self, source: object, **changes) -> SamplingParams:
        """These settings with each of SAMPLING_KEYS that `source` (parsed flags, a request body)
        sets, not None, and `changes`."""
        given = {key: getattr(source, key) for key in SAMPLING_KEYS if getattr(source, key) is not None}
        return self.replace(**given, **changes)


PRESETS: dict[str, SamplingParams] = {
    "balanced": SamplingParams(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.2),
    "conservative": SamplingParams(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.3),
    "creative": SamplingParams(temperature=0.9, top_k=60, top_p=0.95, repetition_penalty=1.1),
}
DEFAULT_PRESET = "balanced"


def preset(name: str) -> SamplingParams:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
