"""Our checkpoint -> a GGUF file that stock llama.cpp (and so Ollama) loads as a `llama` model
(a `qwen3` model when it has QK-norm: Llama plus per-head q/k norms, `blk.N.attn_{q,k}_norm`).

Written with `gguf.GGUFWriter`, the GGML project's own writer, with llama.cpp's names:

    token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
    ffn_up, ffn_down}, output_norm, output (only when the embeddings are not tied: llama.cpp
    reuses token_embd for the output layer when `output.weight` is absent)

and the hyper-parameters under `llama.*` (context, embedding, block count, feed-forward size,
heads, kv heads, RoPE base and dimension, RMSNorm epsilon, vocabulary size).

RoPE: our model rotates the two halves of each head (Hugging Face's layout); llama.cpp's `llama`
rotates interleaved pairs, so q and k rows are permuted per head exactly as llama.cpp's own
`convert_hf_to_gguf.py` does for HF Llama weights (`LlamaModel.permute`). Its `qwen3` rotates
halves (NeoX style) like us, so there nothing is permuted.

Tokenizer: our byte-level BPE goes in as `tokenizer.ggml.model = "gpt2"` (tokens, merges, token
types) with pre-tokenizer `gpt-2` (llama.cpp's name for GPT-2's ByteLevel regex). A SentencePiece
vocabulary (an imported llama2.c model) goes in as `llama` (tokens, scores, types). BOS is the
checkpoint's story start token and llama.cpp is told to add it, so it starts a story as we do;
EOS is the checkpoint's end-of-story token.

--dtype: f32 keeps every weight; f16 stores matrices in half precision; q8_0 quantizes matrices
with `gguf.quants.quantize` (a matrix whose rows are not a multiple of 32 stays f16). Norms are
always f32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from src.atomic_files import atomic_output
from src.data.tokenizer import PAD_TOKEN
from src.model.checkpoint import CheckpointError, LoadedModel, load_model
from src.model.config import ModelConfig
from src.model.hf_convert import hf_model_type, to_hf_state_dict
from src.model.rope import halves_to_interleaved

GGUF_DTYPES = ("f32", "f16", "q8_0")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise CheckpointError("GGUF export needs the `gguf` package: pip install 'gguf>=0.10'") from None
    return gguf


def tensor_name(kind: str, layer: int | None = None) -> str:
    """llama.cpp's name for a tensor, from the gguf package's own table (e.g. `blk.0.attn_q.weight`)."""
    gguf = _gguf()
    name = gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, kind)]
    return (name.format(bid=layer) if layer is not None else name) + ".weight"


# Hugging Face Llama's per-layer names -> the gguf package's tensor kinds
HF_TO_GGUF = {"input_layernorm": "ATTN_NORM", "self_attn.q_proj": "ATTN_Q", "self_attn.k_proj": "ATTN_K",
              "self_attn.v_proj": "ATTN_V", "self_attn.o_proj": "ATTN_OUT", "post_attention_layernorm": "FFN_NORM",
              "mlp.gate_proj": "FFN_GATE", "mlp.up_proj": "FFN_UP", "mlp.down_proj": "FFN_DOWN",
              "self_attn.q_norm": "ATTN_Q_NORM", "self_attn.k_norm": "ATTN_K_NORM"}


def gguf_tensors(model_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's names, through HF's: float32, PyTorch (out, in) layout, and
    for `llama`, q/k rows in its interleaved RoPE layout."""
    hf = to_hf_state_dict(model_state, config)
    interleave = hf_model_type(config) == "llama"
    out = {tensor_name("TOKEN_EMBD"): hf["model.embed_tokens.weight"], tensor_name("OUTPUT_NORM"): hf["model.norm.weight"]}
    if not config.tie_embeddings:
        out[tensor_name("OUTPUT")] = hf["lm_head.weight"]
    heads = {"self_attn.q_proj": config.n_heads, "self_attn.k_proj": config.kv_heads}
    for i in range(config.n_layers):
        for name, kind in HF_TO_GGUF.items():
            weight = hf.get(f"model.layers.{i}.{name}.weight")
            if weight is not None:
                permute = interleave and name in heads
                out[tensor_name(kind, i)] = halves_to_interleaved(weight, heads[name]) if permute else weight
    return {name: tensor.detach().to(torch.float32).cpu().contiguous().numpy() for name, tensor in out.items()}


def _walk(node) -> list[dict]:
    """A tokenizer.json component and, for a Sequence, its parts."""
    if not isinstance(node, dict):
        return []
    parts = [node]
    for key in ("pretokenizers", "normalizers", "decoders"):
        for child in node.get(key) or []:
            parts += _walk(child)
    return parts


def tokenizer_kind(tokenizer: Tokenizer) -> str:
    """'gpt2' for a byte-level BPE (ours), 'llama' for a SentencePiece-style BPE with byte
    fallback (llama2.c); anything else cannot be written so llama.cpp tokenizes it the same."""
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    pre = [part.get("type") for part in _walk(spec.get("pre_tokenizer"))]
    norm = _walk(spec.get("normalizer"))
    if model.get("type") == "BPE" and "ByteLevel" in pre and spec.get("normalizer") is None:
        byte_level = next(p for p in _walk(spec["pre_tokenizer"]) if p.get("type") == "ByteLevel")
        if byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space", False) and len(pre) == 1:
            return "gpt2"
    metaspace = "Metaspace" in pre or any(p.get("type") == "Prepend" and p.get("prepend") == "▁" for p in norm)
    if model.get("type") == "BPE" and model.get("byte_fallback") and metaspace:
        return "llama"
    raise CheckpointError(
        "this checkpoint's tokenizer is neither a GPT-2-style byte-level BPE nor a SentencePiece BPE with byte "
        f"fallback (model {model.get('type')}, pre-tokenizer {pre or None}); llama.cpp would tokenize it differently"
    )


def _merges(model: dict) -> list[str]:
    merges = []
    for merge in model.get("merges") or []:
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(pair) != 2 or " " in pair[0] or " " in pair[1]:
            raise CheckpointError(f"BPE merge {merge!r} cannot be written as 'left right' for llama.cpp")
        merges.append(f"{pair[0]} {pair[1]}")
    return merges


def add_tokenizer(writer, loaded: LoadedModel) -> None:
    """Vocabulary, merges or scores, token types and the special token ids."""
    gguf = _gguf()
    tokenizer, n_vocab = loaded.tokenizer, loaded.config.vocab_size
    kind = tokenizer_kind(tokenizer)
    spec = json.loads(tokenizer.to_str())
    added = {entry["id"]: entry for entry in spec.get("added_tokens") or []}
    tokens, types, scores = [], [], []
    first_normal = None
    for token_id in range(n_vocab):
        token = tokenizer.id_to_token(token_id)
        if token is None:  # the model's vocabulary is larger than the tokenizer's
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            tokens.append(token)
            if kind == "llama" and token == "<unk>":
                types.append(gguf.TokenType.UNKNOWN)
            else:
                types.append(gguf.TokenType.CONTROL if added[token_id].get("special") else gguf.TokenType.USER_DEFINED)
        elif kind == "llama" and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            tokens.append(token)
            types.append(gguf.TokenType.BYTE)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
            first_normal = token_id if first_normal is None else first_normal
        # SentencePiece BPE scores fall by one per piece in vocabulary order; llama.cpp merges
        # by score, so -(rank among normal pieces) reproduces SentencePiece's merge order.
        is_normal = types[-1] == gguf.TokenType.NORMAL
        scores.append(-float(token_id - first_normal) if is_normal and first_normal is not None else 0.0)
    writer.add_tokenizer_model(kind)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    if kind == "gpt2":
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_merges(_merges(spec["model"]))
    else:
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(True)
        unk = tokenizer.token_to_id("<unk>")
        if unk is not None:
            writer.add_unk_token_id(unk)
    start = loaded.story_start_id
    eos = loaded.eos_id
    if start is not None:
        writer.add_bos_token_id(start)
    elif eos is not None:
        writer.add_bos_token_id(eos)
    if eos is not None:
        writer.add_eos_token_id(eos)
    pad = tokenizer.token_to_id(PAD_TOKEN)
    if pad is not None:
        writer.add_pad_token_id(pad)
    writer.add_add_bos_token(start is not None)  # llama.cpp then starts a story the way we do
    writer.add_add_eos_token(False)


def export_gguf(checkpoint: str | Path, output: str | Path, dtype: str = "f32") -> Path:
    """Write `checkpoint` as a llama.cpp GGUF file (atomically); return its path."""
    gguf = _gguf()
    if dtype not in GGUF_DTYPES:
        raise CheckpointError(f"unknown GGUF dtype {dtype!r}; choose from {', '.join(GGUF_DTYPES)}")
    output = Path(output)
    if output.is_dir():
        raise CheckpointError(f"{output} is a directory; a GGUF export is one file (e.g. {output / 'model.gguf'})")
    loaded = load_model(checkpoint, precision="fp32")
    config = loaded.config
    tensors = gguf_tensors(loaded.model.state_dict(), config)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    with atomic_output(output) as tmp:
        writer = gguf.GGUFWriter(str(tmp), hf_model_type(config))
        try:
            write_model(writer, gguf, loaded, tensors, file_type, dtype, Path(checkpoint).stem)
        finally:
            writer.close()
    return output


def write_model(writer, gguf, loaded: LoadedModel, tensors: dict[str, np.ndarray], file_type, dtype: str,
                name: str) -> None:
    """Metadata, tokenizer and tensors, in GGUF's order (header, key-values, tensor data)."""
    config = loaded.config
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.ffn_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_layer_norm_rms_eps(float(config.norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(file_type))
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, loaded)
    for tensor, array in tensors.items():
        add_weight(writer, gguf, tensor, array, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()


def add_weight(writer, gguf, name: str, array: np.ndarray, dtype: str) -> None:
    if array.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, array.astype(np.float32))
        return
    if dtype == "q8_0":
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        if array.shape[-1] % block == 0:
            try:
                quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            except (AttributeError, NotImplementedError) as exc:
                raise CheckpointError(f"this gguf package cannot quantize to q8_0 ({exc}); use gguf>=0.10") from None
            writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            return
    writer.add_tensor(name, array.astype(np.float16))
