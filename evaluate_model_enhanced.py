#!/usr/bin/env python3
"""Compare the sampling presets on the same prompts and seeds: table, JSON, Markdown and PNG.

    python evaluate_model_enhanced.py --checkpoint checkpoints/model.pth --num-samples 5 --out-dir outputs/eval

See `src/evaluation/compare.py` for how the best preset is chosen.
"""

import sys

from src.evaluation.cli import compare_main as main

if __name__ == "__main__":
    sys.exit(main())
