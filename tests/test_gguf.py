"""GGUF export: read back with gguf.GGUFReader (names, shapes, metadata, tensors), a forward pass
with llama.cpp's semantics on the file's own tensors, f16/q8_0, the SentencePiece vocabulary of
an imported llama2.c model, and bad input. Where `llama_cpp` is importable, llama.cpp itself:
logits, greedy decoding and tokenization against ours.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.tokenizer import EOS_TOKEN, PAD_TOKEN
from src.generation.engine import Generator
from src.generation.presets import SamplingParams
from src.model.checkpoint import load_model, save_checkpoint
from src.model.transformer_block import WikiMiniModel
from tests.conftest import REPO_ROOT, tiny_model_config
from tests.test_llama2c import DIMS, llama2c_forward, random_weights, sp_model, write_legacy  # noqa: F401

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'gguf>=0.10')")

DEMO = REPO_ROOT / "checkpoints" / "demo" / "tinystories_demo.pth"
STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
TRICKY_TEXT = "Zoë's café: \"Olá!\" 😀🐶\n\nThe end.\n  Déjà vu, naïve façade — 日本語.\n"
try:
    import llama_cpp
except ImportError:
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama_cpp is not importable "
                                     "(pip install llama-cpp-python to check the file in llama.cpp itself)")


def run_cli(monkeypatch, *args) -> int:
    import convert_hf

    monkeypatch.setattr(sys, "argv", ["convert_hf.py", *map(str, args)])
    return convert_hf.main()


def field(reader, key):
    """A metadata value: str, number, bool or list (works with old and new GGUFReader)."""
    f = reader.fields[key]
    if hasattr(f, "contents"):
        return f.contents()
    values = [f.parts[i] for i in f.data]
    decoded = [bytes(v).decode("utf-8") if f.types[-1] == gguf.GGUFValueType.STRING else v.tolist()[0] for v in values]
    return decoded if f.types[0] == gguf.GGUFValueType.ARRAY else decoded[0]


def tensors(reader) -> dict:
    return {t.name: t for t in reader.tensors}


def f32(reader, name) -> np.ndarray:
    t = tensors(reader)[name]
    assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
    return np.asarray(t.data).reshape([int(n) for n in reversed(t.shape)])


def gguf_as_llama2c(reader, n_layers: int) -> dict[str, np.ndarray]:
    """The file's f32 tensors under the names `llama2c_forward` (run.c = llama.cpp semantics) uses."""
    names = {"attn_norm": "attention_norm", "attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo",
             "ffn_norm": "ffn_norm", "ffn_gate": "w1", "ffn_down": "w2", "ffn_up": "w3"}
    w = {"tok_embeddings": f32(reader, "token_embd.weight"), "norm": f32(reader, "output_norm.weight")}
    w["output"] = f32(reader, "output.weight") if "output.weight" in tensors(reader) else w["tok_embeddings"]
    for i in range(n_layers):
        for theirs, ours in names.items():
            w[f"{ours}.{i}"] = f32(reader, f"blk.{i}.{theirs}.weight")
    return w


@pytest.fixture()
def gqa_checkpoint(tmp_path, tokenizer) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "gqa.pth"
    save_checkpoint(path, WikiMiniModel(tiny_model_config(n_kv_heads=2, d_ffn=48)), tokenizer)
    return path


def test_f32_file_reads_back_with_llama_names_metadata_and_our_weights(tmp_path, monkeypatch, tokenizer, gqa_checkpoint):
    out = tmp_path / "tiny.gguf"
    assert run_cli(monkeypatch, "gguf", "--checkpoint", gqa_checkpoint, "--output", out) == 0
    reader = gguf.GGUFReader(str(out))
    loaded = load_model(gqa_checkpoint)
    c = loaded.config
    expected = {
        "general.architecture": "llama", "llama.context_length": c.max_seq_len, "llama.embedding_length": c.d_model,
        "llama.block_count": c.n_layers, "llama.feed_forward_length": 48, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": c.head_dim, "llama.vocab_size": c.vocab_size,
        "general.file_type": 0, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": tokenizer.token_to_id(EOS_TOKEN),  # stories start after <|endoftext|>
        "tokenizer.ggml.eos_token_id": tokenizer.token_to_id(EOS_TOKEN),
        "tokenizer.ggml.padding_token_id": tokenizer.token_to_id(PAD_TOKEN),
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
    }
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "llama.rope.freq_base") == pytest.approx(c.rope_theta)
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(c.norm_eps)

    vocab = [tokenizer.id_to_token(i) for i in range(c.vocab_size)]
    assert field(reader, "tokenizer.ggml.tokens") == vocab
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    assert field(reader, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[:2] == [gguf.TokenType.CONTROL] * 2 and set(types[2:]) == {gguf.TokenType.NORMAL}

    names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(c.n_layers)
        for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors(reader)) == names  # tied: no output.weight, llama.cpp reuses token_embd
    state = {k: v.numpy() for k, v in loaded.model.state_dict().items()}
    hd, q_rows, kv_rows = c.head_dim, c.n_heads * c.head_dim, c.kv_heads * c.head_dim
    qkv = state["layers.1.attention.qkv_proj.weight"]
    assert list(tensors(reader)["blk.1.attn_k.weight"].shape) == [c.d_model, kv_rows]  # GGUF lists ne0 (in) first
    assert np.array_equal(f32(reader, "token_embd.weight"), state["tok_embeddings.weight"])
    assert np.array_equal(f32(reader, "blk.1.attn_v.weight"), qkv[q_rows + kv_rows:])
    assert np.array_equal(f32(reader, "blk.1.ffn_down.weight"), state["layers.1.feed_forward.down_proj.weight"])
    assert np.array_equal(f32(reader, "blk.1.ffn_gate.weight"), state["layers.1.feed_forward.gate_up_proj.weight"][:48])
    # q/k rows in llama.cpp's interleaved RoPE order: row 2i of a head is our row i, row 2i+1 our row i + hd/2
    order = np.array([h * hd + j // 2 + (j % 2) * hd // 2 for h in range(c.kv_heads) for j in range(hd)])
    assert np.array_equal(f32(reader, "blk.1.attn_k.weight"), qkv[q_rows:q_rows + kv_rows][order])

    # the file's tensors run with llama.cpp's semantics (interleaved RoPE) give our logits
    dims = dict(dim=c.d_model, n_heads=c.n_heads, n_kv_heads=c.kv_heads, n_layers=c.n_layers)
    tokens = [0] + tokenizer.encode(STORY).ids[:40]
    with torch.no_grad():
        ours = loaded.model(torch.tensor([tokens]))[0].double().numpy()
    assert np.abs(llama2c_forward(gguf_as_llama2c(reader, c.n_layers), tokens, dims) - ours).max() < 1e-4


def qk_norm_checkpoint(tmp_path, tokenizer) -> Path:
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(qk_norm=True, n_kv_heads=2))
    with torch.no_grad():  # norms start at 1, where a swapped or permuted norm would go unnoticed
        for block in model.layers:
            block.attention.q_norm.weight.uniform_(0.5, 1.5)
            block.attention.k_norm.weight.uniform_(0.5, 1.5)
    return save_checkpoint(tmp_path / "qk.pth", model, tokenizer)


def test_qk_norm_goes_out_as_qwen3_with_unpermuted_rows_and_its_norms(tmp_path, tokenizer):
    from src.model.gguf_export import export_gguf

    checkpoint = qk_norm_checkpoint(tmp_path, tokenizer)
    reader = gguf.GGUFReader(str(export_gguf(checkpoint, tmp_path / "qk.gguf")))
    c = load_model(checkpoint).config
    state = {k: v.numpy() for k, v in load_model(checkpoint).model.state_dict().items()}
    assert field(reader, "general.architecture") == "qwen3"
    assert field(reader, "qwen3.attention.head_count_kv") == 2
    # qwen3 rotates halves as we do: q rows as they are, and each head's norm weights beside them
    q_rows = c.n_heads * c.head_dim
    assert np.array_equal(f32(reader, "blk.1.attn_q.weight"), state["layers.1.attention.qkv_proj.weight"][:q_rows])
    assert np.array_equal(f32(reader, "blk.1.attn_q_norm.weight"), state["layers.1.attention.q_norm.weight"])
    assert np.array_equal(f32(reader, "blk.1.attn_k_norm.weight"), state["layers.1.attention.k_norm.weight"])


def test_untied_embeddings_write_an_output_tensor(tmp_path, tokenizer):
    torch.manual_seed(1)
    model = WikiMiniModel(tiny_model_config(tie_embeddings=False))
    save_checkpoint(tmp_path / "untied.pth", model, tokenizer)
    from src.model.gguf_export import export_gguf

    reader = gguf.GGUFReader(str(export_gguf(tmp_path / "untied.pth", tmp_path / "untied.gguf")))
    assert np.array_equal(f32(reader, "output.weight"), model.output.weight.detach().numpy())
    assert not np.array_equal(f32(reader, "output.weight"), f32(reader, "token_embd.weight"))


def test_f16_and_q8_0_matrices_norms_stay_f32(tmp_path, monkeypatch, gqa_checkpoint):
    sizes = {}
    weights = {k: v.numpy() for k, v in load_model(gqa_checkpoint).model.state_dict().items()}
    down = weights["layers.0.feed_forward.down_proj.weight"]  # rows of 48: not whole q8_0 blocks of 32
    up = weights["layers.0.feed_forward.gate_up_proj.weight"][48:]
    for dtype, matrix_type in (("f16", "F16"), ("q8_0", "Q8_0")):
        out = tmp_path / f"{dtype}.gguf"
        assert run_cli(monkeypatch, "gguf", "--checkpoint", gqa_checkpoint, "--output", out, "--dtype", dtype) == 0
        sizes[dtype] = out.stat().st_size
        reader = gguf.GGUFReader(str(out))
        kinds = {name: t.tensor_type.name for name, t in tensors(reader).items()}
        assert {kinds[n] for n in kinds if "norm" in n} == {"F32"}
        assert kinds["blk.0.ffn_up.weight"] == kinds["token_embd.weight"] == matrix_type
        assert kinds["blk.0.ffn_down.weight"] == "F16"
        assert field(reader, "general.file_type") == {"f16": 1, "q8_0": 7}[dtype]
        t = tensors(reader)["blk.0.ffn_up.weight"]
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(up.shape)
        step = np.abs(up).max() / 127 if dtype == "q8_0" else np.abs(up).max() / 1024
        assert 0 < np.abs(values - up).max() <= step  # rounded, by at most one quantization step
        t = tensors(reader)["blk.0.ffn_down.weight"]
        assert np.abs(np.asarray(t.data).astype(np.float32).reshape(down.shape) - down).max() < 1e-3
    from src.model.gguf_export import export_gguf

    assert sizes["q8_0"] < sizes["f16"] < export_gguf(gqa_checkpoint, tmp_path / "f32.gguf").stat().st_size


def test_a_llama2c_model_gets_a_sentencepiece_vocabulary(tmp_path, sp_model):  # noqa: F811
    import sentencepiece

    from src.model.gguf_export import export_gguf
    from src.model.llama2c import import_llama2c

    processor = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
    dims = dict(DIMS, vocab_size=processor.vocab_size())
    write_legacy(tmp_path / "m.bin", random_weights(8, True, dims), True, dims)
    checkpoint = import_llama2c(tmp_path / "m.bin", sp_model, tmp_path / "m.pth")
    reader = gguf.GGUFReader(str(export_gguf(checkpoint, tmp_path / "m.gguf")))
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.tokens") == [processor.id_to_piece(i) for i in range(processor.vocab_size())]
    types = field(reader, "tokenizer.ggml.token_type")
    T = gguf.TokenType
    for i in range(processor.vocab_size()):
        kind = (T.UNKNOWN if processor.is_unknown(i) else T.CONTROL if processor.is_control(i)
                else T.BYTE if processor.is_byte(i) else T.NORMAL)
        assert types[i] == kind, processor.id_to_piece(i)
    scores = field(reader, "tokenizer.ggml.scores")
    normal = [i for i in range(processor.vocab_size()) if types[i] == T.NORMAL]
    assert [scores[i] for i in normal] == [processor.get_score(i) for i in normal]  # SentencePiece's merge order
    assert (field(reader, "tokenizer.ggml.bos_token_id"), field(reader, "tokenizer.ggml.add_bos_token")) == (1, True)
    assert field(reader, "tokenizer.ggml.add_space_prefix") is True


def test_bad_input_is_exit_2(tmp_path, monkeypatch, capsys, tiny_checkpoint):
    assert run_cli(monkeypatch, "gguf", "--checkpoint", tmp_path / "missing.pth", "--output", tmp_path / "x.gguf") == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert run_cli(monkeypatch, "gguf", "--checkpoint", tiny_checkpoint, "--output", tmp_path) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_cli(monkeypatch, "gguf", "--checkpoint", tiny_checkpoint, "--output", tmp_path / "x.gguf", "--dtype", "q4_0")
    assert exit_info.value.code == 2
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


# --- llama.cpp itself ---------------------------------------------------------------------------

def llama_cpp_model(path: Path, n_ctx: int):
    f32_cache = getattr(llama_cpp, "GGML_TYPE_F32", 0)  # llama.cpp keeps its KV cache in f16 by default
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                           type_k=f32_cache, type_v=f32_cache, n_threads=2)


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory) -> Path:
    if not DEMO.exists():
        pytest.skip(f"needs the bundled demo model {DEMO.relative_to(REPO_ROOT)}, which a full clone has")
    from src.model.gguf_export import export_gguf

    return export_gguf(DEMO, tmp_path_factory.mktemp("gguf") / "demo.gguf")


def llama_cpp_logit_gap(checkpoint: Path, gguf_path: Path, text: str = STORY) -> float:
    """Largest |logit difference| between llama.cpp on `gguf_path` and us, over a story's tokens."""
    loaded = load_model(checkpoint, precision="fp32")
    tokens = [loaded.story_start_id] + loaded.tokenizer.encode(text).ids
    llm = llama_cpp_model(gguf_path, loaded.config.max_seq_len)
    llm.reset()
    llm.eval(tokens)
    theirs = np.asarray(llm.scores[: len(tokens)], dtype=np.float32)
    with torch.no_grad():
        ours = loaded.model(torch.tensor([tokens]))[0].numpy()
    return float(np.abs(theirs - ours).max())


@needs_llama_cpp
def test_llama_cpp_logits_equal_ours(demo_gguf):
    assert llama_cpp_logit_gap(DEMO, demo_gguf) <= 2e-3


@needs_llama_cpp
def test_llama_cpp_logits_equal_ours_with_qk_norm(tmp_path, tokenizer):
    from src.model.gguf_export import export_gguf

    checkpoint = qk_norm_checkpoint(tmp_path, tokenizer)
    assert llama_cpp_logit_gap(checkpoint, export_gguf(checkpoint, tmp_path / "qk.gguf"), STORY[:60]) <= 2e-3


@needs_llama_cpp
def test_llama_cpp_greedy_100_tokens_equal_ours(demo_gguf):
    loaded = load_model(DEMO, precision="fp32")
    generator = Generator.from_loaded(loaded)
    params = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=100,
                            stop_at_eos=False)
    ours = generator.generate("Once upon a time", params).token_ids
    llm = llama_cpp_model(demo_gguf, loaded.config.max_seq_len)
    tokens = llm.tokenize(b"Once upon a time", add_bos=True, special=False)
    assert tokens == generator.story_prefix + generator.encode_prompt("Once upon a time")  # starts a story as we do
    llm.reset()
    llm.eval(tokens)
    theirs = []
    for _ in range(100):
        theirs.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([theirs[-1]])
    assert theirs == ours


@needs_llama_cpp
def test_llama_cpp_tokenizer_gives_our_ids(demo_gguf):
    loaded = load_model(DEMO, precision="fp32")
    llm = llama_cpp_model(demo_gguf, loaded.config.max_seq_len)
    ours = loaded.tokenizer.encode(TRICKY_TEXT).ids
    assert llm.tokenize(TRICKY_TEXT.encode("utf-8"), add_bos=False, special=False) == ours
    assert llm.detokenize(ours).decode("utf-8") == TRICKY_TEXT
