"""The story openings the evaluators generate from."""

from __future__ import annotations

from pathlib import Path

from src.evaluation.errors import EvaluationError

# Five story openings, the same every run, so scores stay comparable between models and runs.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Once upon a time there was",
    "One day, a little girl named Lily",
    "In the garden, a small bird",
    "A big dog wanted to play with",
    "The happy cat found",
)


def load_prompts(path: str | Path | None) -> list[str]:
    """One prompt per non-empty line of a UTF-8 file (lines starting with # are comments);
    the default prompts when `path` is None."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvaluationError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read prompts file {path}: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise EvaluationError(f"prompts file {path} holds no prompts (one per line expected)")
    return prompts
