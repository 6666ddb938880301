#!/usr/bin/env python3
"""Pre-flight checks for a training run: tokenizer, config, model, one step, data, devices.

    python test_training_setup.py [--config config/<name>.yaml] [--set section.key=value] [--device cpu]

Prints one PASS / WARN / FAIL line per check and exits 1 if any check failed.
"""

import sys

from src.training.preflight import main

if __name__ == "__main__":
    sys.exit(main())
