#!/usr/bin/env python3
"""Convert checkpoints to and from Hugging Face Llama directories.

    python convert_hf.py export --checkpoint CKPT --output DIR
    python convert_hf.py import --input DIR --output CKPT
"""

import argparse
import sys

from src.model.checkpoint import CheckpointError
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
    args = parser.parse_args()
    try:
        if args.command == "export":
            print(f"wrote {export_checkpoint(args.checkpoint, args.output)}")
        else:
            print(f"wrote {import_hf(args.input, args.output)}")
    except CheckpointError as exc:
        print(f"convert_hf.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
