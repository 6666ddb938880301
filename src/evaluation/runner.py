"""What both evaluators share: the model from the one loader, and bad input as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from src.data.cache import CacheError
from src.data.sources import DataSourceError
from src.data.tokenizer import TokenizerError
from src.evaluation.errors import EvaluationError
from src.model.checkpoint import CheckpointError, LoadedModel, load_for_inference

# Bad input of these kinds is reported as one line on stderr, without a traceback.
# OSError covers unwritable output paths.
INPUT_ERRORS = (CheckpointError, DataSourceError, CacheError, TokenizerError, EvaluationError, OSError)


def load_for_evaluation(checkpoint: str | None, device_name: str, precision: str = "auto") -> LoadedModel:
    """The checkpoint named by the flag, $CHECKPOINT_PATH, the best one in checkpoints/ or the demo."""
    try:
        return load_for_inference(checkpoint, device_name, precision)
    except CheckpointError:
        raise
    except ValueError as exc:  # a device or precision this machine does not have
        raise EvaluationError(str(exc)) from None


def run_cli(task: Callable[[], object], prog: str) -> int:
    """Run `task`; exit status 0, or 2 with `prog: error: ...` on stderr for bad input."""
    try:
        task()
    except INPUT_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
