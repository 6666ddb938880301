"""Train a byte-level BPE tokenizer on TinyStories (or any text source) and save it. See `--help`."""

import sys

from src.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
