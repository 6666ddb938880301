#!/usr/bin/env python3
"""Evaluate a checkpoint: held-out loss, perplexity and bits per byte, then scored stories.

    python evaluate_model.py --checkpoint checkpoints/model.pth --data TinyStories-valid.txt --json eval.json

See `src/evaluation/` for what every score means.
"""

import sys

from src.evaluation.cli import evaluate_main as main

if __name__ == "__main__":
    sys.exit(main())
