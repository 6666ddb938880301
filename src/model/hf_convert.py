"""Convert between our checkpoints and Hugging Face Llama (or Qwen3) directories.

Our layout differs from `LlamaForCausalLM` only in fusion (q/k/v in one matrix, gate/up in
one matrix) and names; RoPE already uses HF's rotate-half layout, so no permutation is needed.
A model with QK-norm goes out as `Qwen3ForCausalLM`: Llama plus an RMSNorm on each head's
queries and keys before RoPE, exactly our `model.qk_norm`.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from tokenizers import Tokenizer

from src.data.tokenizer import EOS_TOKEN, PAD_TOKEN
from src.model.checkpoint import CheckpointError, load_model, save_checkpoint
from src.model.config import ModelConfig
from src.model.transformer_block import WikiMiniModel


HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def hf_model_type(config: ModelConfig) -> str:
    return "qwen3" if config.qk_norm else "llama"


def hf_model_class(model_type: str | None):
    """The transformers class that holds a `model_type` we can import, or a one-line error."""
    import transformers

    if model_type not in HF_ARCHITECTURES:
        raise CheckpointError(f"only Llama and Qwen3 models can be imported, got model_type={model_type!r}")
    return getattr(transformers, HF_ARCHITECTURES[model_type])


def to_hf_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    q_size = config.n_heads * config.head_dim
    kv_size = config.kv_heads * config.head_dim
    hf = {
        "model.embed_tokens.weight": state["tok_embeddings.weight"],
        "model.norm.weight": state["norm.weight"],
        "lm_head.weight": state["output.weight"],
    }
    for i in range(config.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "attention.qkv_proj.weight"].split((q_size, kv_size, kv_size))
        gate, up = state[ours + "feed_forward.gate_up_proj.weight"].chunk(2)
        hf.update({
            theirs + "self_attn.q_proj.weight": q,
            theirs + "self_attn.k_proj.weight": k,
            theirs + "self_attn.v_proj.weight": v,
            theirs + "self_attn.o_proj.weight": state[ours + "attention.out_proj.weight"],
            theirs + "mlp.gate_proj.weight": gate,
            theirs + "mlp.up_proj.weight": up,
            theirs + "mlp.down_proj.weight": state[ours + "feed_forward.down_proj.weight"],
            theirs + "input_layernorm.weight": state[ours + "attention_norm.weight"],
            theirs + "post_attention_layernorm.weight": state[ours + "ffn_norm.weight"],
        })
        if config.qk_norm:
            hf[theirs + "self_attn.q_norm.weight"] = state[ours + "attention.q_norm.weight"]
            hf[theirs + "self_attn.k_norm.weight"] = state[ours + "attention.k_norm.weight"]
    return {k: v.contiguous() for k, v in hf.items()}


def from_hf_state_dict(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    embed = hf["model.embed_tokens.weight"]
    state = {
        "tok_embeddings.weight": embed,
        "norm.weight": hf["model.norm.weight"],
        "output.weight": hf.get("lm_head.weight", embed) if config.tie_embeddings else hf["lm_head.weight"],
    }
    for i in range(config.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        state.update({
            ours + "attention.qkv_proj.weight": torch.cat([hf[theirs + f"self_attn.{n}_proj.weight"] for n in "qkv"]),
            ours + "attention.out_proj.weight": hf[theirs + "self_attn.o_proj.weight"],
            ours + "feed_forward.gate_up_proj.weight": torch.cat(
                (hf[theirs + "mlp.gate_proj.weight"], hf[theirs + "mlp.up_proj.weight"])
            ),
            ours + "feed_forward.down_proj.weight": hf[theirs + "mlp.down_proj.weight"],
            ours + "attention_norm.weight": hf[theirs + "input_layernorm.weight"],
            ours + "ffn_norm.weight": hf[theirs + "post_attention_layernorm.weight"],
        })
        if config.qk_norm:
            state[ours + "attention.q_norm.weight"] = hf[theirs + "self_attn.q_norm.weight"]
            state[ours + "attention.k_norm.weight"] = hf[theirs + "self_attn.k_norm.weight"]
    return state


def hf_config(config: ModelConfig, tokenizer: Tokenizer | None = None, eos_token: str = EOS_TOKEN,
              bos_token: str | None = None):
    """The `transformers.LlamaConfig` (or `Qwen3Config`, with QK-norm) with the same shapes as
    `config`. `bos_token` is the token a story starts after (default: `eos_token`, our models'
    convention)."""
    import transformers

    eos_id = tokenizer.token_to_id(eos_token) if tokenizer is not None else None
    bos_id = tokenizer.token_to_id(bos_token or eos_token) if tokenizer is not None else None
    pad_id = tokenizer.token_to_id(PAD_TOKEN) if tokenizer is not None else None
    shapes = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.ffn_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        tie_word_embeddings=config.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    if config.qk_norm:
        return transformers.Qwen3Config(**shapes, use_sliding_window=False)
    return transformers.LlamaConfig(**shapes, mlp_bias=False)


def to_hf_model(model: WikiMiniModel, tokenizer: Tokenizer | None = None, eos_token: str = EOS_TOKEN,
                bos_token: str | None = None):
    """A `LlamaForCausalLM` (`Qwen3ForCausalLM` with QK-norm) holding a copy of `model`'s weights
    (for export and parity tests)."""
    model_class = hf_model_class(hf_model_type(model.config))
    hf_model = model_class(hf_config(model.config, tokenizer, eos_token, bos_token))
    hf_model.load_state_dict(to_hf_state_dict(model.state_dict(), model.config), strict=True)
    return hf_model.to(model.tok_embeddings.weight.dtype).eval()


def from_hf_model(hf_model) -> WikiMiniModel:
    """A WikiMiniModel holding a copy of a Llama (or Qwen3) model's weights."""
    hf_config = hf_model.config
    model_type = getattr(hf_config, "model_type", None)
    hf_model_class(model_type)
    unsupported = []
    if getattr(hf_config, "use_sliding_window", False):
        unsupported.append("sliding-window attention")
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={hf_config.hidden_act}")
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        unsupported.append("biases")
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        unsupported.append(f"rope scaling {rope.get('rope_type')}")
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    if head_dim * hf_config.num_attention_heads != hf_config.hidden_size:
        unsupported.append(f"head_dim {head_dim} != hidden_size / num_attention_heads")
    if unsupported:
        raise CheckpointError(f"cannot import this {model_type} model: unsupported {', '.join(unsupported)}")
    rope_theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    n_kv = hf_config.num_key_value_heads
    config = ModelConfig(
        vocab_size=hf_config.vocab_size,
        d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers,
        n_heads=hf_config.num_attention_heads,
        n_kv_heads=None if n_kv == hf_config.num_attention_heads else n_kv,
        d_ffn=hf_config.intermediate_size,
        max_seq_len=hf_config.max_position_embeddings,
        rope_theta=float(rope_theta),
        norm_eps=hf_config.rms_norm_eps,
        tie_embeddings=bool(hf_config.tie_word_embeddings),
        qk_norm=model_type == "qwen3",
    )
    model = WikiMiniModel(config)
    state = from_hf_state_dict(hf_model.state_dict(), config)
    model.load_state_dict(state, strict=True)
    return model.to(hf_model.dtype).eval()


def save_hf_tokenizer(tokenizer: Tokenizer, output_dir: str | Path, eos_token: str = EOS_TOKEN,
                      bos_token: str | None = None) -> None:
    """Write tokenizer.json and the config files `transformers.AutoTokenizer` reads. `bos_token`
    (default `eos_token`) is the token a story starts after; import reads it back."""
    from transformers import PreTrainedTokenizerFast

    special = {"eos_token": eos_token, "bos_token": bos_token or eos_token}
    if tokenizer.token_to_id(PAD_TOKEN) is not None:
        special["pad_token"] = PAD_TOKEN
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special).save_pretrained(str(output_dir))
    # transformers 5.x records its own backend class name, which 4.x cannot resolve; the
    # generic fast class loads the same tokenizer.json in both.
    config_path = Path(output_dir) / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _readable_by_all(directory: Path) -> None:
    """safetensors writes 0600 files; an export is for sharing, so give them the usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~umask)


def export_checkpoint(checkpoint: str | Path, output_dir: str | Path) -> Path:
    """Our checkpoint -> HF Llama (or Qwen3) directory (config.json, model.safetensors, tokenizer files)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise CheckpointError(f"{output_dir} is a file; an export is a directory (choose a new --output)")
    loaded = load_model(checkpoint)
    output_dir.mkdir(parents=True, exist_ok=True)
    eos = loaded.tokenizer.id_to_token(loaded.eos_id) if loaded.eos_id is not None else EOS_TOKEN
    bos = loaded.tokenizer.id_to_token(loaded.story_start_id) if loaded.story_start_id is not None else None
    hf_model = to_hf_model(loaded.model, loaded.tokenizer, eos, bos)
    hf_model.save_pretrained(str(output_dir), safe_serialization=True)
    save_hf_tokenizer(loaded.tokenizer, output_dir, eos, bos)
    _readable_by_all(output_dir)
    return output_dir


def _weights_error(input_dir: Path, exc: Exception) -> str:
    """Say why the weights cannot be read, without torch's advice to turn off safe loading."""
    text = str(exc)
    if "weights_only" in text or isinstance(exc, pickle.UnpicklingError):
        return (f"{input_dir}: the .bin weights hold pickled objects other than tensors, and loading "
                "never unpickles arbitrary objects; save the model as model.safetensors and import that")
    return f"cannot read the weights in {input_dir}: {text.splitlines()[0] if text else type(exc).__name__}"


def import_hf(input_dir: str | Path, output: str | Path) -> Path:
    """HF Llama or Qwen3 directory (e.g. a llama2.c TinyStories model in HF format) -> our checkpoint."""
    from transformers import AutoConfig, AutoTokenizer

    input_dir = Path(input_dir)
    if not (input_dir / "config.json").exists():
        raise CheckpointError(f"{input_dir} is not a Hugging Face model directory (no config.json)")
    hf_config = AutoConfig.from_pretrained(str(input_dir))
    model_class = hf_model_class(hf_config.model_type)
    try:
        hf_model = model_class.from_pretrained(str(input_dir), dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise CheckpointError(_weights_error(input_dir, exc)) from None
    model = from_hf_model(hf_model)
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(str(input_dir))
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer in {input_dir}: {exc}") from None
    tokenizer = getattr(hf_tokenizer, "backend_tokenizer", None)
    if tokenizer is None:
        raise CheckpointError(f"{input_dir} has no fast (tokenizer.json) tokenizer")
    eos_token = hf_tokenizer.eos_token or EOS_TOKEN
    # A story starts after the BOS token (our exports write <|endoftext|> there); the engine puts
    # it before the prompt, so the stored tokenizer need not add it itself.
    bos_token = hf_tokenizer.bos_token if tokenizer.token_to_id(hf_tokenizer.bos_token or "") is not None else None
    source = {"imported_from": str(input_dir)}
    return save_checkpoint(output, model, tokenizer, config={"source": source}, eos_token=eos_token,
                           story_start_token=bos_token)
