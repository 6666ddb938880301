#!/usr/bin/env python3
"""Generate TinyStories-style stories from a trained checkpoint. See `--help`."""

import sys

from src.generation.cli import main

if __name__ == "__main__":
    sys.exit(main())
