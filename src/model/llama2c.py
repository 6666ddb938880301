"""llama2.c checkpoints in: its `.bin` model files and SentencePiece tokenizers -> our checkpoint.

Formats read (as karpathy/llama2.c's `export.py` writes them; all little-endian):

    legacy (v0)  7 int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
                 (vocab_size < 0: the classifier is not tied to the embedding), then float32:
                 tok_embeddings, attention_norm[L], wq[L], wk[L], wv[L], wo[L], ffn_norm[L],
                 w1[L], w2[L], w3[L], norm, freqs_cos, freqs_sin (seq_len x head_dim/2 each,
                 not needed), [output]
    v1 (fp32)    a 256-byte header: uint32 magic 0x616b3432 ("ak42"), int32 version 1, the same
                 7 int32 (vocab_size positive), uint8 shared_classifier, zero padding; then
                 float32: attention_norm[L], ffn_norm[L], norm, tok_embeddings, wq[L], wk[L],
                 wv[L], wo[L], w1[L], w2[L], w3[L], [output]
    v2 (int8)    the v1 header with version 2 and an int32 group_size after the flag; then the
                 norms in float32 (attention_norm[L], ffn_norm[L], norm), then the int8 values
                 of tok_embeddings, wq[L], wk[L], wv[L], wo[L], w1[L], w2[L], w3[L], [output],
                 then all their float32 scales (one per group of group_size values, same order)

Every matrix is PyTorch's (out_features, in_features), row-major. llama2.c's RoPE rotates
interleaved pairs (dims 2i, 2i+1) of each head, ours the two halves (Hugging Face's layout), so
the q and k rows are permuted per head exactly as llama2.c's own export does for HF. A file
whose size does not match its header is refused, never half-read.

The tokenizer: the SentencePiece `.model` goes through the converter `transformers` ships for
Llama tokenizers, then is set to our conventions: `encode()` adds no special tokens (the story
prefix is the engine's business: the checkpoint's `story_start_token`),
and decoding is concatenative (a token's leading "▁" is a space even at the start), so streamed
text joins up like our byte-level tokenizer's.

Where a story starts and ends: llama2.c's data preparation (`tinystories.py pretokenize`) puts
BOS (`<s>`, id 1) before every story and no EOS (`</s>`, id 2) after it, so its models start a
story after BOS and end one by predicting the next BOS; `run.c` stops there ("the BOS (=1) token
delimits sequences"). The imported checkpoint says so: `story_start_token` `<s>` and, by default,
`eos_token` `<s>` too (`--eos-token "</s>"` for a model trained with EOS after its stories).
stories260K after a validation story: P(<s>) 0.55 on average, P(</s>) about 1e-11.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors

from src.config_utils import ConfigError
from src.model.checkpoint import CheckpointError, save_checkpoint
from src.model.config import ModelConfig
from src.model.hf_convert import from_hf_state_dict
from src.model.rope import interleaved_to_halves
from src.model.transformer_block import WikiMiniModel

MAGIC = 0x616B3432  # "ak42"
HEADER_BYTES = 256  # v1 and v2 headers
LEGACY_HEADER = struct.Struct("<7i")
VERSIONED_HEADER = struct.Struct("<Ii7iB")
MAX_DIM = 1 << 20  # a legacy header with larger numbers is not a llama2.c header
SP_BOS, SP_EOS = "<s>", "</s>"  # SentencePiece's story start and end: ids 1 and 2 in llama2.c's vocabularies


@dataclass(frozen=True)
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int  # always positive here
    seq_len: int
    shared_classifier: bool
    version: int  # 0 = legacy
    group_size: int = 0  # v2 only

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_kv_heads

    def matrices(self) -> list[tuple[str, tuple[int, int]]]:
        """(name, shape) of every matrix, in llama2.c's order (tok_embeddings first)."""
        L, d, h, kv = self.n_layers, self.dim, self.hidden_dim, self.kv_dim
        names = [("tok_embeddings", (self.vocab_size, d))]
        for kind, shape in (("wq", (d, d)), ("wk", (kv, d)), ("wv", (kv, d)), ("wo", (d, d)),
                            ("w1", (h, d)), ("w2", (d, h)), ("w3", (h, d))):
            names += [(f"layers.{i}.{kind}", shape) for i in range(L)]
        if not self.shared_classifier:
            names.append(("output", (self.vocab_size, d)))
        return names

    def norms(self) -> list[tuple[str, tuple[int]]]:
        L, d = self.n_layers, self.dim
        return ([(f"layers.{i}.attention_norm", (d,)) for i in range(L)]
                + [(f"layers.{i}.ffn_norm", (d,)) for i in range(L)] + [("norm", (d,))])

    def expected_bytes(self) -> int:
        matrices = sum(a * b for _, (a, b) in self.matrices())
        norms = sum(n for _, (n,) in self.norms())
        if self.version == 0:
            freqs = 2 * self.seq_len * (self.head_dim // 2)
            return LEGACY_HEADER.size + 4 * (matrices + norms + freqs)
        if self.version == 1:
            return HEADER_BYTES + 4 * (matrices + norms)
        return HEADER_BYTES + 4 * norms + matrices + 4 * (matrices // self.group_size)

    def describe(self) -> str:
        return (f"dim={self.dim} hidden_dim={self.hidden_dim} n_layers={self.n_layers} n_heads={self.n_heads} "
                f"n_kv_heads={self.n_kv_heads} vocab_size={self.vocab_size} seq_len={self.seq_len}")


def read_header(path: Path) -> Llama2cHeader:
    """Parse and sanity-check the header; raise CheckpointError for anything else."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES)
    if len(head) < LEGACY_HEADER.size:
        raise CheckpointError(f"{path}: {len(head)} bytes is too short for a llama2.c model header")
    (magic,) = struct.unpack_from("<I", head)
    if magic == MAGIC:
        if len(head) < HEADER_BYTES:
            raise CheckpointError(f"{path}: truncated llama2.c header ({len(head)} of {HEADER_BYTES} bytes)")
        _, version, *dims, shared = VERSIONED_HEADER.unpack_from(head)
        if version not in (1, 2):
            raise CheckpointError(f"{path}: llama2.c format version {version} is not supported (only 1 fp32 and 2 int8)")
        group_size = struct.unpack_from("<i", head, VERSIONED_HEADER.size)[0] if version == 2 else 0
        if not all(0 < x <= MAX_DIM for x in dims):
            raise CheckpointError(f"{path}: invalid version {version} llama2.c header: every size must be in 1..{MAX_DIM} "
                                  f"(read {list(dims)})")
        header = Llama2cHeader(*dims[:5], dims[5], dims[6], bool(shared), version, group_size)
    else:
        dims = LEGACY_HEADER.unpack_from(head)
        if not all(0 < abs(x) <= MAX_DIM for x in dims) or min(dims[:5] + dims[6:]) <= 0:
            raise CheckpointError(
                f"{path} is not a llama2.c model: no version magic 0x{MAGIC:08x} and its first 28 bytes are "
                f"not a legacy header (7 positive int32, vocab_size may be negative; read {list(dims)})"
            )
        header = Llama2cHeader(*dims[:5], abs(dims[5]), dims[6], dims[5] > 0, 0)
    problems = []
    if header.dim % header.n_heads:
        problems.append(f"dim {header.dim} is not a multiple of n_heads {header.n_heads}")
    elif header.head_dim % 2:
        problems.append(f"head dim {header.head_dim} is odd (RoPE needs pairs)")
    if header.n_heads % header.n_kv_heads:
        problems.append(f"n_kv_heads {header.n_kv_heads} does not divide n_heads {header.n_heads}")
    if header.version == 2:
        if header.group_size <= 0:
            problems.append(f"group_size {header.group_size} is not positive")
        else:
            bad = [name for name, (a, b) in header.matrices() if (a * b) % header.group_size]
            if bad:
                problems.append(f"{bad[0]} is not a whole number of groups of {header.group_size}")
    if problems:
        raise CheckpointError(f"{path}: invalid llama2.c header ({header.describe()}): {'; '.join(problems)}")
    size = path.stat().st_size
    expected = header.expected_bytes()
    if size != expected:
        kind = "truncated" if size < expected else "has trailing data"
        raise CheckpointError(
            f"{path}: header/size mismatch: a version {header.version} llama2.c model with {header.describe()} "
            f"is {expected:,} bytes, the file is {size:,} ({kind}, or the header is wrong)"
        )
    return header


def read_llama2c(path: str | Path) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """The header and every weight as float32 tensors, by llama2.c's names, in its layout."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"llama2.c model not found: {path}")
    header = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    offset = LEGACY_HEADER.size if header.version == 0 else HEADER_BYTES
    weights: dict[str, torch.Tensor] = {}

    def take_f32(name: str, shape: tuple[int, ...]) -> None:
        nonlocal offset
        count = int(np.prod(shape))
        values = np.frombuffer(data, dtype="<f4", count=count, offset=offset)
        weights[name] = torch.from_numpy(values.astype(np.float32).reshape(shape))
        offset += 4 * count

    shapes = dict(header.matrices() + header.norms())
    layers = [f"layers.{i}." for i in range(header.n_layers)]
    if header.version == 0:
        order = (["tok_embeddings"] + [p + "attention_norm" for p in layers]
                 + [p + kind for kind in ("wq", "wk", "wv", "wo") for p in layers]
                 + [p + "ffn_norm" for p in layers]
                 + [p + kind for kind in ("w1", "w2", "w3") for p in layers] + ["norm"])
        for name in order:
            take_f32(name, shapes[name])
        offset += 4 * 2 * header.seq_len * (header.head_dim // 2)  # freqs_cos, freqs_sin: recomputed
        if not header.shared_classifier:
            take_f32("output", shapes["output"])
    elif header.version == 1:
        for name, shape in header.norms():
            take_f32(name, shape)
        for name, shape in header.matrices():
            take_f32(name, shape)
    else:
        for name, shape in header.norms():
            take_f32(name, shape)
        quantized = []
        for name, shape in header.matrices():
            count = shape[0] * shape[1]
            quantized.append((name, shape, np.frombuffer(data, dtype=np.int8, count=count, offset=offset)))
            offset += count
        for name, shape, values in quantized:
            groups = values.size // header.group_size
            scales = np.frombuffer(data, dtype="<f4", count=groups, offset=offset)
            offset += 4 * groups
            dequantized = values.reshape(groups, header.group_size).astype(np.float32) * scales[:, None]
            weights[name] = torch.from_numpy(dequantized.reshape(shape))
    assert offset == header.expected_bytes(), (offset, header.expected_bytes())
    if header.shared_classifier:
        weights["output"] = weights["tok_embeddings"]
    return header, weights


def model_config(header: Llama2cHeader) -> ModelConfig:
    try:
        return ModelConfig(
            vocab_size=header.vocab_size,
            d_model=header.dim,
            n_layers=header.n_layers,
            n_heads=header.n_heads,
            n_kv_heads=None if header.n_kv_heads == header.n_heads else header.n_kv_heads,
            d_ffn=header.hidden_dim,
            max_seq_len=header.seq_len,
            rope_theta=10000.0,  # llama2.c's run.c and model.py
            norm_eps=1e-5,
            tie_embeddings=header.shared_classifier,
        )
    except ConfigError as exc:
        raise CheckpointError(f"this llama2.c model does not fit WikiMiniModel: {exc}") from None


# llama2.c's per-layer names -> Hugging Face Llama's (the one map to our names is in hf_convert)
LLAMA2C_TO_HF = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
                 "wo": "self_attn.o_proj", "w1": "mlp.gate_proj", "w3": "mlp.up_proj", "w2": "mlp.down_proj",
                 "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def to_state_dict(header: Llama2cHeader, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """llama2.c weights -> our state dict, through HF's names (q/k rows permuted to the rotate-half layout)."""
    hf = {"model.embed_tokens.weight": weights["tok_embeddings"], "model.norm.weight": weights["norm"],
          "lm_head.weight": weights["output"]}
    heads = {"wq": header.n_heads, "wk": header.n_kv_heads}
    for i in range(header.n_layers):
        for theirs, name in LLAMA2C_TO_HF.items():
            weight = weights[f"layers.{i}.{theirs}"]
            if theirs in heads:
                weight = interleaved_to_halves(weight, heads[theirs])
            hf[f"model.layers.{i}.{name}.weight"] = weight
    return from_hf_state_dict(hf, model_config(header))


def load_llama2c_model(path: str | Path) -> tuple[WikiMiniModel, Llama2cHeader]:
    """A WikiMiniModel (fp32, eval) holding a llama2.c `.bin` model's weights."""
    header, weights = read_llama2c(path)
    config = model_config(header)
    model = WikiMiniModel(config)
    model.load_state_dict(to_state_dict(header, weights), strict=True)
    return model.eval(), header


def sentencepiece_tokenizer(model_file: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` equal to a llama2.c SentencePiece model (BOS `<s>` = 1, EOS
    `</s>` = 2), converted by `transformers`' Llama converter, set to our conventions."""
    model_file = Path(model_file)
    if not model_file.is_file():
        raise CheckpointError(f"SentencePiece tokenizer not found: {model_file}")
    try:
        from transformers import LlamaTokenizerFast
        from transformers.convert_slow_tokenizer import import_protobuf
    except ImportError as exc:
        raise CheckpointError(f"converting a SentencePiece tokenizer needs transformers ({exc})") from None
    try:
        proto = import_protobuf().ModelProto()
        proto.ParseFromString(model_file.read_bytes())
    except Exception as exc:  # protobuf's DecodeError, or protobuf missing
        raise CheckpointError(f"{model_file} is not a SentencePiece model ({type(exc).__name__}: {exc})") from None
    if not proto.pieces:
        raise CheckpointError(f"{model_file} is not a SentencePiece model (no pieces)")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(model_file, Path(tmp) / "tokenizer.model")
        try:  # from a folder holding only tokenizer.model, transformers 4.x and 5.x both convert
            hf_tokenizer = LlamaTokenizerFast.from_pretrained(tmp, legacy=False, add_bos_token=False,
                                                              add_eos_token=False, from_slow=True)
        except Exception as exc:
            raise CheckpointError(f"cannot convert the SentencePiece tokenizer {model_file}: {exc}") from None
    tokenizer = hf_tokenizer.backend_tokenizer
    if tokenizer.get_vocab_size() != len(proto.pieces):
        raise CheckpointError(f"converting {model_file} gave {tokenizer.get_vocab_size()} tokens, expected {len(proto.pieces)}")
    for token, expected in ((SP_BOS, 1), (SP_EOS, 2)):
        if tokenizer.token_to_id(token) != expected:
            raise CheckpointError(f"{model_file}: {token} has id {tokenizer.token_to_id(token)}, llama2.c expects {expected}")
    # SentencePiece's own normalization, which the converter leaves out: spaces at either end
    # dropped and runs of spaces read as one (remove_extra_whitespaces), then one "▁" before the
    # text (add_dummy_prefix), even when the text began with spaces.
    spec = proto.normalizer_spec
    steps = []
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")  # no BOS from encode()
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return Tokenizer.from_str(tokenizer.to_str())


def import_llama2c(model_file: str | Path, tokenizer_file: str | Path, output: str | Path,
                   eos_token: str = SP_BOS) -> Path:
    """llama2.c `.bin` + SentencePiece `.model` -> our checkpoint (fp32). A story starts after
    BOS and ends at `eos_token` (default BOS as well, see the module docstring)."""
    model, header = load_llama2c_model(model_file)
    tokenizer = sentencepiece_tokenizer(tokenizer_file)
    if tokenizer.token_to_id(eos_token) is None:
        raise CheckpointError(f"end-of-story token {eos_token!r} is not in the tokenizer {tokenizer_file}")
    if tokenizer.get_vocab_size() != header.vocab_size:
        raise CheckpointError(
            f"tokenizer {tokenizer_file} has {tokenizer.get_vocab_size()} tokens but the model {model_file} "
            f"has vocab_size {header.vocab_size}: not its tokenizer"
        )
    source = {"imported_from": str(model_file), "tokenizer": str(tokenizer_file), "format": f"llama2.c v{header.version}"}
    return save_checkpoint(output, model, tokenizer, config={"source": source}, eos_token=eos_token,
                           story_start_token=SP_BOS)
