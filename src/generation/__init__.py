"""One generation engine for the CLI, the evaluators and the server."""

from src.generation.engine import GenerationResult, Generator
from src.generation.presets import PRESETS, SamplingParams

__all__ = ["GenerationResult", "Generator", "PRESETS", "SamplingParams"]
