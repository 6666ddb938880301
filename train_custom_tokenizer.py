"""Train a byte-level BPE tokenizer on TinyStories (or any text source) and save it.

    python train_custom_tokenizer.py --vocab_size 10000 --output_dir ./tokenizer/tinystories_10k \
        --max_samples 100000 [--data SOURCE ...] [--min_frequency N]

SOURCE is a Hugging Face dataset (default roneneldan/TinyStories, split train), a .txt in the
dataset's own format, .jsonl/.json files with a `text` or `story` field, a folder or a glob.
Writes tokenizer.json, tokenizer_config.json (for transformers.AutoTokenizer) and
tokenizer_meta.json. Special tokens: <|endoftext|> id 0, <|pad|> id 1.
"""

import sys

from src.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
