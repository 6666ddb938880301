"""Train a byte-level BPE tokenizer on TinyStories (or any text source) and save it.

    python train_custom_tokenizer.py --vocab_size 10000 --output_dir ./tokenizer/tinystories_10k \
        --max_samples 100000 [--data SOURCE ...] [--min_frequency N]

SOURCE is a Hugging Face dataset (default roneneldan/TinyStories, split train), a .txt in the
dataset's own format, .jsonl/.json files with a `text` or `story` field, a folder or a glob.
Writes tokenizer.json, tokenizer_config.json (for transformers.AutoTokenizer) and
tokenizer_meta.json. Special tokens: <|endoftext|> id 0, <|pad|> id 1.
"""


from __future__ import annotations

import argparse
import sys

from src.data.sources import DEFAULT_HF_DATASET, DataSourceError
from src.data.tokenizer import TokenizerError
from src.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer


def parse_args(argv: list[str] | None = None) -> TokenizerTrainingConfig:
    parser = argparse.ArgumentParser(prog="train_custom_tokenizer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab_size", "--vocab-size", type=int, default=10_000)
    parser.add_argument("--output_dir", "--output-dir", required=True)
    parser.add_argument("--max_samples", "--max-samples", type=int, default=100_000, help="stories; 0 = all")
    parser.add_argument("--data", nargs="+", default=[DEFAULT_HF_DATASET], metavar="SOURCE")
    parser.add_argument("--split", default="train", help="split for Hugging Face sources (default: train)")
    parser.add_argument("--min_frequency", "--min-frequency", type=int, default=2)
    parser.add_argument("--no_progress", "--no-progress", action="store_true")
    args = parser.parse_args(argv)
    return TokenizerTrainingConfig(
        output_dir=args.output_dir,
        vocab_size=args.vocab_size,
        data=args.data,
        split=args.split,
        max_samples=args.max_samples or None,
        min_frequency=args.min_frequency,
        show_progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        result = train_tokenizer(config)
    except (TokenizerError, DataSourceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    print(
        f"trained vocab {result.vocab_size} on {result.n_stories:,} stories ({result.n_chars:,} chars)"
        f" in {result.seconds:.1f}s; {result.tokens_per_char:.3f} tokens/char"
        f" ({1 / result.tokens_per_char:.2f} chars/token)"
    )
    if result.vocab_size < config.vocab_size:
        print(f"note: the data only supported {result.vocab_size} of {config.vocab_size} tokens")
    print(f"saved to {result.output_dir} (tokenizer.json sha256 {result.sha256[:16]}...)")
    return 0
