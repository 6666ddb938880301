#!/usr/bin/env python3
"""Train a WikiMiniModel from a YAML config. See `--help` and config/*.yaml.

    python train.py --config config/train_config_tinystories_33M_TOP10K.yaml [--resume auto]
    torchrun --nproc_per_node 2 train.py --config ...
"""

import sys

from src.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
