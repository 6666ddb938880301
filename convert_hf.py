#!/usr/bin/env python3
"""Convert checkpoints to and from Hugging Face Llama directories.

    python convert_hf.py export --checkpoint CKPT --output DIR
    python convert_hf.py import --input DIR --output CKPT
    python convert_hf.py compact --checkpoint CKPT --output SMALL.pth [--dtype bf16|fp16|fp32]

`compact` writes an inference-only copy (no optimizer state, weights in bf16 by default).
"""

import argparse
import sys

from src.device import DTYPES
from src.model.checkpoint import CheckpointError, compact_checkpoint
from src.model.hf_convert import export_checkpoint, import_hf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="our checkpoint -> HF Llama directory")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--output", required=True)
    imp = commands.add_parser("import", help="HF Llama directory -> our checkpoint")
    imp.add_argument("--input", required=True)
    imp.add_argument("--output", required=True)
    compact = commands.add_parser("compact", help="inference-only copy with smaller weights")
    compact.add_argument("--checkpoint", required=True)
    compact.add_argument("--output", required=True)
    compact.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    args = parser.parse_args()
    try:
        if args.command == "export":
            print(f"wrote {export_checkpoint(args.checkpoint, args.output)}")
        elif args.command == "import":
            print(f"wrote {import_hf(args.input, args.output)}")
        else:
            print(f"wrote {compact_checkpoint(args.checkpoint, args.output, DTYPES[args.dtype])}")
    except CheckpointError as exc:
        print(f"convert_hf.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
