#!/usr/bin/env python3
"""Convert checkpoints to and from Hugging Face Llama directories, GGUF and llama2.c. See `--help`."""

import sys

from src.model.cli import main

if __name__ == "__main__":
    sys.exit(main())
