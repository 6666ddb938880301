"""Evaluation: held-out perplexity and bits per byte, and scores of generated stories.

Every score here measures what the model wrote (never the prompt, never the post-processing
alone), and every score can go down when the model gets worse.

    heldout.py   bits per byte and perplexity of held-out text (windows, or story by story)
    metrics.py   words and sentences; articles, grammar heuristics, repetition
    stories.py   prompts, seeded samples generated and scored, their summary
    judge.py     the TinyStories paper's LLM judge, its errors counted, and its calibration
    evaluate.py  evaluate_model.py's run and reports; what both evaluators share
    compare.py   evaluate_model_enhanced.py: presets side by side, the best one, its reports
    cli.py       both evaluators' flags and mains
"""


class EvaluationError(ValueError):
    """Bad evaluation input (flags, prompts file, too little text); the message says what to fix."""
