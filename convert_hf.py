#!/usr/bin/env python3
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

import sys

from src.model.cli import main

if __name__ == "__main__":
    sys.exit(main())
