"""The evaluators' error for bad input (flags, prompts file, too little text)."""


class EvaluationError(ValueError):
    """Bad evaluation input; the message says what to fix."""
