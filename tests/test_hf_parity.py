"""Independent reference: transformers' LlamaForCausalLM (Qwen3ForCausalLM with QK-norm) with our
weights gives our logits."""

import pytest
import torch

from src.model import WikiMiniModel
from src.model.hf_convert import from_hf_model, to_hf_model
from tests.conftest import tiny_model_config

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install -r requirements.txt)")


def _eager_llama(model):
    hf = to_hf_model(model)
    hf.config._attn_implementation = "eager"  # explicit softmax path, not the SDPA we use
    return hf


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_kv_heads": 2}, {"tie_embeddings": False, "rope_theta": 500.0, "norm_eps": 1e-6},
     {"qk_norm": True, "n_kv_heads": 2}],
)
def test_our_weights_in_hf_llama_give_identical_logits(overrides):
    torch.manual_seed(0)
    ours = WikiMiniModel(tiny_model_config(**overrides)).eval()
    if ours.config.qk_norm:  # norms start at 1, where a swapped q/k norm would go unnoticed
        with torch.no_grad():
            for block in ours.layers:
                block.attention.q_norm.weight.uniform_(0.5, 1.5)
                block.attention.k_norm.weight.uniform_(0.5, 1.5)
    theirs = _eager_llama(ours)
    assert type(theirs).__name__ == ("Qwen3ForCausalLM" if ours.config.qk_norm else "LlamaForCausalLM")
    tokens = torch.randint(0, 384, (2, 50))
    with torch.no_grad():
        diff = (ours(tokens) - theirs(tokens).logits).abs().max().item()
    assert diff <= 1e-4


def test_hf_llama_weights_in_our_model_give_identical_logits():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="eager",
    )
    theirs = transformers.LlamaForCausalLM(config).eval()
    ours = from_hf_model(theirs)
    assert ours.config.n_kv_heads == 2 and ours.config.d_ffn == 160
    tokens = torch.randint(0, 384, (2, 40))
    with torch.no_grad():
        assert (ours(tokens) - theirs(tokens).logits).abs().max().item() <= 1e-4


def test_hf_qwen3_weights_in_our_model_give_identical_logits():
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6,
        tie_word_embeddings=True, attn_implementation="eager",
    )
    theirs = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in theirs.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    ours = from_hf_model(theirs)
    assert ours.config.qk_norm and ours.config.tie_embeddings
    tokens = torch.randint(0, 384, (2, 40))
    with torch.no_grad():
        assert (ours(tokens) - theirs(tokens).logits).abs().max().item() <= 1e-4


def test_parity_check_detects_a_wrong_weight():
    """Guard against a vacuous comparison: one changed weight must break parity."""
    torch.manual_seed(0)
    ours = WikiMiniModel(tiny_model_config()).eval()
    theirs = _eager_llama(ours)
    with torch.no_grad():
        theirs.model.layers[1].mlp.up_proj.weight[0, 0] += 1.0
        tokens = torch.randint(0, 384, (1, 20))
        assert (ours(tokens) - theirs(tokens).logits).abs().max().item() > 1e-4


def test_greedy_generation_matches_hf_generate(tokenizer):
    """Our KV-cached decoding picks the same tokens as HF's own generate() loop."""
    from src.generation import Generator, SamplingParams

    torch.manual_seed(3)
    ours = WikiMiniModel(tiny_model_config()).eval()
    theirs = to_hf_model(ours, tokenizer)
    generator = Generator(ours, tokenizer)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=40, stop_at_eos=False)
    prompt_ids = generator.story_prefix + generator.encode_prompt("Once upon a time there was")
    our_tokens = list(generator.decode(generator.new_request(generator.encode_prompt("Once upon a time there was"), params, 0)))
    with torch.no_grad():
        hf_out = theirs.generate(
            torch.tensor([prompt_ids]), max_new_tokens=40, do_sample=False, min_new_tokens=40,
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        )
    assert our_tokens == hf_out[0, len(prompt_ids):].tolist()
