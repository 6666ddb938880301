#!/usr/bin/env python3
"""Compare the sampling presets on the same prompts and seeds: table, JSON, Markdown and PNG.

    python evaluate_model_enhanced.py --checkpoint checkpoints/model.pth --num-samples 5 --out-dir outputs/eval

See `src/evaluation/selection.py` for how the best preset is chosen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from src.device import DEVICE_CHOICES, PRECISION_CHOICES
from src.evaluation.compare import DEFAULT_OUT_DIR, CompareOptions, run
from src.evaluation.judge import add_judge_arguments, judge_options
from src.generation.presets import PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate_model_enhanced.py",
        description="Score every sampling preset on the same prompts and seeds and pick the best one.",
    )
    p.add_argument("--checkpoint", help="a .pth checkpoint (default: $CHECKPOINT_PATH, the newest "
                   "training run's best, then the demo model)")
    p.add_argument("--prompts", help="file with one prompt per line (default: five built-in story openings)")
    p.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS),
                   help=f"presets to compare (default: all of {', '.join(PRESETS)})")
    p.add_argument("--num-samples", type=int, default=3, help="samples per prompt and preset (default 3)")
    p.add_argument("--seed", type=int, default=42, help="sample i of each prompt uses seed + i (default 42)")
    p.add_argument("--max-tokens", type=int, default=200, help="new tokens per sample at most (default 200)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="weights: auto, fp32, bf16 or int8 (CPU); see generate.py --help")
    p.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help=f"where the reports go (default {DEFAULT_OUT_DIR})")
    p.add_argument("--data", help="text to cut the judge's story beginnings from (a dataset or a local file)")
    add_judge_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = CompareOptions(
        checkpoint=args.checkpoint,
        prompts_file=args.prompts,
        presets=tuple(dict.fromkeys(args.presets)),
        num_samples=args.num_samples,
        seed=args.seed,
        max_new_tokens=args.max_tokens,
        device=args.device,
        precision=args.precision,
        out_dir=args.out_dir,
        data=args.data,
        judge=judge_options(args),
    )
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
