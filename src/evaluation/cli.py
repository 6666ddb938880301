"""The evaluators' command lines: `evaluate_model.py` (one checkpoint, every score) and
`evaluate_model_enhanced.py` (the sampling presets side by side), each a parser and a `main`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from src.data.cache import DEFAULT_CACHE_DIR
from src.device import DEVICE_CHOICES, PRECISION_CHOICES
from src.evaluation.compare import DEFAULT_OUT_DIR, CompareOptions
from src.evaluation.compare import run as run_comparison
from src.evaluation.evaluate import EvaluateOptions
from src.evaluation.evaluate import run as run_evaluation
from src.evaluation.heldout import DEFAULT_VALIDATION_SOURCE
from src.evaluation.judge import add_judge_arguments, judge_options
from src.generation.presets import DEFAULT_PRESET, PRESETS


def add_shared_arguments(p: argparse.ArgumentParser, per: str) -> None:
    """The flags both evaluators take: the model, the prompts and seeds, the device, the judge."""
    p.add_argument("--checkpoint", help="a .pth checkpoint (default: $CHECKPOINT_PATH, the newest "
                   "training run's best, then the demo model)")
    p.add_argument("--prompts", help="file with one prompt per line (default: five built-in story openings)")
    p.add_argument("--num-samples", type=int, default=3, help=f"samples per {per} (default 3)")
    p.add_argument("--seed", type=int, default=42, help="sample i of each prompt uses seed + i (default 42)")
    p.add_argument("--max-tokens", type=int, default=200, help="new tokens per sample at most (default 200)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="weights: auto, fp32, bf16 or int8 (CPU); see generate.py --help")
    add_judge_arguments(p)


def shared_options(args: argparse.Namespace) -> dict:
    return {"checkpoint": args.checkpoint, "prompts_file": args.prompts, "num_samples": args.num_samples,
            "seed": args.seed, "max_new_tokens": args.max_tokens, "device": args.device,
            "precision": args.precision, "judge": judge_options(args)}


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate_model.py",
        description="Measure a checkpoint: held-out loss / perplexity / bits per byte, then articles, "
        "grammar (raw and post-processed), repetition and length of seeded generations.",
    )
    p.add_argument("--data", default=DEFAULT_VALIDATION_SOURCE,
                   help="held-out text: a Hugging Face dataset[:split] or a local .txt/.jsonl/.json file or folder; "
                   f"'none' skips the held-out part (default: {DEFAULT_VALIDATION_SOURCE})")
    p.add_argument("--skip-perplexity", action="store_true", help="same as --data none")
    p.add_argument("--max-windows", type=int, help="score only the first N context windows of the held-out text")
    p.add_argument("--per-story", action="store_true",
                   help="score each story on its own after the story-start token, as lm-evaluation-harness's "
                   "loglikelihood_rolling does (default: every context window of the concatenated text)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help=f"token cache folder (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help=f"sampling preset (default {DEFAULT_PRESET})")
    p.add_argument("--json", metavar="OUT", help="write every number and every sample to this JSON file")
    add_shared_arguments(p, per="prompt")
    return p


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    args = evaluate_parser().parse_args(argv)
    skip = args.skip_perplexity or args.data.strip().lower() == "none"
    return run_evaluation(EvaluateOptions(
        data=None if skip else args.data, cache_dir=args.cache_dir, max_windows=args.max_windows,
        per_story=args.per_story, batch_size=args.batch_size, preset=args.preset, json_path=args.json,
        **shared_options(args)))


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate_model_enhanced.py",
        description="Score every sampling preset on the same prompts and seeds and pick the best one.",
    )
    p.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS),
                   help=f"presets to compare (default: all of {', '.join(PRESETS)})")
    p.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help=f"where the reports go (default {DEFAULT_OUT_DIR})")
    p.add_argument("--data", help="text to cut the judge's story beginnings from (a dataset or a local file)")
    add_shared_arguments(p, per="prompt and preset")
    return p


def compare_main(argv: Sequence[str] | None = None) -> int:
    args = compare_parser().parse_args(argv)
    return run_comparison(CompareOptions(
        presets=tuple(dict.fromkeys(args.presets)), out_dir=args.out_dir, data=args.data, **shared_options(args)))
