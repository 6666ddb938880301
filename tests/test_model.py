"""WikiMiniModel: config validation, shapes, the single label shift, KV-cache parity."""

import pytest
import torch
import torch.nn.functional as F

from src.config_utils import ConfigError
from src.model import ModelConfig, WikiMiniModel
from tests.conftest import tiny_model_config


def test_reference_config_parameter_count():
    with torch.device("meta"):
        model = WikiMiniModel(ModelConfig())
    # The number README.md states: vocab 10000, d_model 448, 7 layers, 7 heads, d_ffn 1536.
    assert model.num_parameters() == 24_557_120


def test_config_round_trips_and_rejects_unknown_keys():
    config = ModelConfig.from_dict(tiny_model_config(rope_theta="1e4", dropout="0"))
    assert config.rope_theta == 10000.0
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) model\.n_layer\b.*valid keys:.*n_layers"):
        ModelConfig.from_dict({"n_layer": 3})
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig.from_dict(tiny_model_config(d_model=30, n_heads=4))
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig.from_dict(tiny_model_config(n_kv_heads=3))
    with pytest.raises(ConfigError, match="expected an integer"):
        ModelConfig.from_dict(tiny_model_config(n_layers="two"))


def test_llama_ffn_rule_when_d_ffn_is_none():
    config = ModelConfig(d_model=448, d_ffn=None, multiple_of=512)
    assert config.ffn_dim == 1536  # 512 * ceil(int(8/3 * 448) / 512)


def test_logits_shape_and_loss_uses_targets_as_given(tiny_model):
    x = torch.randint(0, 384, (2, 12))
    y = torch.randint(0, 384, (2, 12))
    logits = tiny_model(x)
    assert logits.shape == (2, 12, 384)
    logits2, loss = tiny_model(x, y)
    torch.testing.assert_close(logits2, logits)
    # targets are already aligned: loss is CE(logits[t], y[t]), with no further shift
    expected = F.cross_entropy(logits.view(-1, 384), y.view(-1))
    torch.testing.assert_close(loss, expected)
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, 384), y[:, 1:].reshape(-1))
    assert not torch.allclose(loss, shifted)


def test_ignore_index_targets_do_not_count(tiny_model):
    x = torch.randint(0, 384, (1, 8))
    y = torch.randint(0, 384, (1, 8))
    masked = y.clone()
    masked[0, 4:] = -100
    _, loss = tiny_model(x, masked)
    logits = tiny_model(x)
    torch.testing.assert_close(loss, F.cross_entropy(logits[0, :4], y[0, :4]))


def test_causality_future_tokens_do_not_change_past_logits(tiny_model):
    x = torch.randint(0, 384, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 384
    torch.testing.assert_close(tiny_model(x)[:, :10], tiny_model(y)[:, :10])


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
@pytest.mark.parametrize("prompt_len", [1, 5, 17])
def test_kv_cache_decoding_matches_full_recompute(prompt_len, n_kv_heads):
    torch.manual_seed(1)
    model = WikiMiniModel(tiny_model_config(n_kv_heads=n_kv_heads)).eval()
    tokens = torch.randint(0, 384, (2, prompt_len + 20))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_kv_cache(rows=2)
        pieces = [model(tokens[:, :prompt_len], kv_cache=cache, input_pos=torch.arange(prompt_len)[None])]
        for t in range(prompt_len, tokens.shape[1]):
            pieces.append(model(tokens[:, t : t + 1], kv_cache=cache, input_pos=torch.tensor([[t]])))
    cached = torch.cat(pieces, dim=1)
    assert (cached - full).abs().max().item() <= 1e-4


def test_kv_cache_chunked_prefill_matches_full_recompute(tiny_model):
    tokens = torch.randint(0, 384, (1, 40))
    with torch.no_grad():
        full = tiny_model(tokens)
        cache = tiny_model.new_kv_cache()
        chunks = [tiny_model(tokens[:, a:b], kv_cache=cache, input_pos=torch.arange(a, b)[None])
                  for a, b in ((0, 7), (7, 19), (19, 20), (20, 40))]
    assert (torch.cat(chunks, dim=1) - full).abs().max().item() <= 1e-4


def test_kv_cache_rows_at_different_positions_match_each_alone(tiny_model):
    """A ragged step (each row at its own position, one token each) gives every row the logits
    it gets decoding alone; rows() prefills part of the cache without touching the others."""
    torch.manual_seed(3)
    stories = [torch.randint(0, 384, (1, n)) for n in (5, 12, 30)]
    with torch.no_grad():
        alone = [tiny_model(story)[:, -1] for story in stories]
        cache = tiny_model.new_kv_cache(rows=3)
        for row, story in enumerate(stories):
            prefix = story[:, :-1]
            tiny_model(prefix, kv_cache=cache.rows(row, row + 1), input_pos=torch.arange(prefix.shape[1])[None])
        last = torch.cat([story[:, -1:] for story in stories])
        positions = torch.tensor([[story.shape[1] - 1] for story in stories])
        ragged = tiny_model(last, kv_cache=cache, input_pos=positions)[:, -1]
        fixed = tiny_model(last, kv_cache=cache, input_pos=positions, key_span=cache.capacity)[:, -1]
    for row in range(3):
        torch.testing.assert_close(ragged[row], alone[row][0], atol=1e-4, rtol=0)
        torch.testing.assert_close(fixed[row], alone[row][0], atol=1e-4, rtol=0)


def test_kv_cache_refuses_positions_past_its_capacity(tiny_model):
    cache = tiny_model.new_kv_cache()
    with pytest.raises(ValueError, match="needs input_pos"):
        tiny_model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        tiny_model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache, input_pos=torch.tensor([[64]]))


def test_last_logits_only_and_context_limit(tiny_model):
    x = torch.randint(0, 384, (1, 10))
    torch.testing.assert_close(tiny_model(x, last_logits_only=True), tiny_model(x)[:, -1:])
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        tiny_model(torch.zeros(1, 65, dtype=torch.long))


def test_tied_embeddings_share_storage_and_untied_do_not():
    tied = WikiMiniModel(tiny_model_config())
    assert tied.output.weight is tied.tok_embeddings.weight
    untied = WikiMiniModel(tiny_model_config(tie_embeddings=False))
    assert untied.output.weight is not untied.tok_embeddings.weight
    assert untied.num_parameters() == tied.num_parameters() + 384 * 32


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(d_model=256, n_heads=4, d_ffn=512, n_layers=8))
    std_out = model.layers[0].attention.out_proj.weight.std().item()
    std_qkv = model.layers[0].attention.qkv_proj.weight.std().item()
    assert abs(std_qkv - 0.02) < 0.002
    assert abs(std_out - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8)


def test_qk_norm_normalizes_each_heads_queries_and_keys_and_counts_its_weights():
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(qk_norm=True))
    attention = model.layers[0].attention
    assert attention.q_norm.weight.shape == (model.config.head_dim,)
    assert model.num_parameters() == model.config.num_weights() == WikiMiniModel(tiny_model_config()).num_parameters() \
        + 2 * model.config.n_layers * model.config.head_dim
    with torch.no_grad():  # scaling the query and key projections changes nothing once they are normalized
        attention.qkv_proj.weight[: 2 * model.config.d_model] *= 10.0
    ids = torch.randint(0, 384, (1, 8))
    scaled = model(ids)
    with torch.no_grad():
        attention.qkv_proj.weight[: 2 * model.config.d_model] /= 10.0
    torch.testing.assert_close(model(ids), scaled, atol=1e-4, rtol=1e-4)


def test_residual_dropout_without_attention_dropout_keeps_sdpa_dropout_free(monkeypatch):
    """model.attention_dropout 0 with model.dropout > 0: the residual stream is regularized
    (two training passes differ) while SDPA is asked for no dropout (its fast CPU kernel)."""
    seen = []
    real = F.scaled_dot_product_attention

    def recording(*args, dropout_p=0.0, **kwargs):
        seen.append(dropout_p)
        return real(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    ids = torch.randint(0, 64, (2, 16))
    for attention_dropout, expected in ((0.0, 0.0), (None, 0.2)):
        torch.manual_seed(0)
        model = WikiMiniModel(ModelConfig.from_dict(tiny_model_config(dropout=0.2, attention_dropout=attention_dropout)))
        model.train()
        seen.clear()
        first, second = model(ids), model(ids)
        assert not torch.equal(first, second)  # dropout is on somewhere
        assert seen and all(p == expected for p in seen)
        model.eval()
        assert torch.equal(model(ids), model(ids))
    with pytest.raises(ConfigError, match="attention_dropout"):
        ModelConfig.from_dict(tiny_model_config(attention_dropout=1.5))
