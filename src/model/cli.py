"""Convert checkpoints to and from Hugging Face Llama directories, GGUF and llama2.c.

    python convert_hf.py export --checkpoint CKPT --output DIR
    python convert_hf.py import --input DIR --output CKPT
    python convert_hf.py compact --checkpoint CKPT --output SMALL.pth [--dtype bf16|fp16|fp32]
    python convert_hf.py gguf --checkpoint CKPT --output FILE.gguf [--dtype f32|f16|q8_0]
    python convert_hf.py import-llama2c --input MODEL.bin --tokenizer TOKENIZER.model --output CKPT

`compact` writes an inference-only copy (no optimizer state, weights in bf16 by default).
`gguf` writes a file for llama.cpp / Ollama (src/model/gguf_export.py); `import-llama2c` reads
llama2.c's .bin (legacy, v1 fp32, v2 int8) and its SentencePiece tokenizer (src/model/llama2c.py).
"""


import argparse
import sys

from src.device import DTYPES
from src.model.checkpoint import CheckpointError, compact_checkpoint
from src.model.gguf_export import GGUF_DTYPES, export_gguf
from src.model.hf_convert import export_checkpoint, import_hf
from src.model.llama2c import SP_BOS, import_llama2c


def main() -> int:
    parser = argparse.ArgumentParser(prog="convert_hf.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    to_gguf = commands.add_parser("gguf", help="our checkpoint -> GGUF file for llama.cpp / Ollama")
    to_gguf.add_argument("--checkpoint", required=True)
    to_gguf.add_argument("--output", required=True)
    to_gguf.add_argument("--dtype", choices=GGUF_DTYPES, default="f32", help="matrix weights (norms stay f32); default f32")
    llama2c = commands.add_parser("import-llama2c", help="llama2.c .bin + SentencePiece .model -> our checkpoint")
    llama2c.add_argument("--input", required=True, help="llama2.c model .bin (legacy, v1 or v2)")
    llama2c.add_argument("--tokenizer", required=True, help="its SentencePiece tokenizer .model")
    llama2c.add_argument("--output", required=True)
    llama2c.add_argument("--eos-token", default=SP_BOS,
                         help=f"the token that ends a story (default {SP_BOS}: llama2.c puts BOS between stories "
                         "and run.c stops there; '</s>' for a model trained with EOS after each story)")
    args = parser.parse_args()
    try:
        if args.command == "export":
            print(f"wrote {export_checkpoint(args.checkpoint, args.output)}")
        elif args.command == "import":
            print(f"wrote {import_hf(args.input, args.output)}")
        elif args.command == "gguf":
            print(f"wrote {export_gguf(args.checkpoint, args.output, args.dtype)}")
        elif args.command == "import-llama2c":
            print(f"wrote {import_llama2c(args.input, args.tokenizer, args.output, args.eos_token)}")
        else:
            print(f"wrote {compact_checkpoint(args.checkpoint, args.output, DTYPES[args.dtype])}")
    except CheckpointError as exc:
        print(f"convert_hf.py: error: {exc}", file=sys.stderr)
        return 2
    return 0
