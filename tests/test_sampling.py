"""Sampling semantics, checked against transformers' logits processors, and the engine loop."""

import pytest
import torch

from src.generation import PRESETS, Generator, SamplingParams
from src.generation.sampling import (
    RowSettings,
    apply_repetition_penalty,
    candidates,
    sample_tokens,
)
from src.model import WikiMiniModel
from tests.conftest import tiny_model_config

logits_process = pytest.importorskip("transformers.generation.logits_process",
                                     reason="needs transformers (pip install -r requirements.txt)")


def seen_mask(context_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(n, V) bool: which tokens occur in each row of context_ids (n, T), as DecodeBatch marks them."""
    return torch.zeros(context_ids.size(0), vocab_size, dtype=torch.bool).scatter_(1, context_ids, True)


def process_logits(logits: torch.Tensor, seen: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The full-vocabulary logits the sampler draws from, rebuilt from its own penalty and
    candidate functions, so they can be compared with transformers' logits processors."""
    rows = RowSettings.of([params] * logits.size(0), logits.device)
    logits = apply_repetition_penalty(logits.float(), seen, rows.penalty)
    if params.temperature == 0:
        return logits
    values, ids = candidates(logits, rows)
    return torch.full_like(logits, float("-inf")).scatter(-1, ids, values)

def hf_pipeline(params: SamplingParams):
    return logits_process.LogitsProcessorList([
        logits_process.RepetitionPenaltyLogitsProcessor(params.repetition_penalty),
        logits_process.TemperatureLogitsWarper(params.temperature),
        *([logits_process.TopKLogitsWarper(params.top_k)] if params.top_k > 0 else []),
        *([logits_process.TopPLogitsWarper(params.top_p)] if params.top_p < 1 else []),
    ])


def assert_same_filter(ours, theirs):
    assert torch.equal(ours == float("-inf"), theirs == float("-inf"))
    finite = ours > float("-inf")
    torch.testing.assert_close(ours[finite], theirs[finite])


def test_repetition_penalty_matches_hf_and_always_discourages_repeats():
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    context = torch.randint(0, 50, (3, 12))
    ours = apply_repetition_penalty(logits, seen_mask(context, 50), torch.full((3, 1), 1.3))
    theirs = logits_process.RepetitionPenaltyLogitsProcessor(1.3)(context, logits.clone())
    torch.testing.assert_close(ours, theirs)
    for row in range(3):
        for token in context[row].unique():
            assert ours[row, token] < logits[row, token]  # both signs are pushed down
        untouched = torch.ones(50, dtype=torch.bool)
        untouched[context[row]] = False
        torch.testing.assert_close(ours[row, untouched], logits[row, untouched])


@pytest.mark.parametrize("top_k", [1, 5, 49])
def test_top_k_matches_hf(top_k):
    logits = torch.randn(4, 50)
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=1.0, repetition_penalty=1.0)
    ours = process_logits(logits, seen_mask(torch.zeros(4, 0, dtype=torch.long), 50), params)
    theirs = logits_process.TopKLogitsWarper(top_k)(None, logits.clone())
    assert_same_filter(ours, theirs)
    assert (ours > float("-inf")).sum(-1).tolist() == [top_k] * 4


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95])
def test_top_p_matches_hf(top_p):
    torch.manual_seed(1)
    logits = torch.randn(4, 200) * 2
    params = SamplingParams(temperature=1.0, top_k=0, top_p=top_p, repetition_penalty=1.0)
    ours = process_logits(logits, seen_mask(torch.zeros(4, 0, dtype=torch.long), 200), params)
    theirs = logits_process.TopPLogitsWarper(top_p)(None, logits.clone())
    assert_same_filter(ours, theirs)


def test_process_logits_matches_hf_pipeline_order():
    torch.manual_seed(2)
    logits = torch.randn(2, 100) * 2
    context = torch.randint(0, 100, (2, 10))
    params = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.3)
    theirs = hf_pipeline(params)(context, logits.clone())
    assert_same_filter(process_logits(logits, seen_mask(context, 100), params), theirs)


def test_each_row_of_a_mixed_batch_is_filtered_with_its_own_settings():
    """The server decodes requests with different settings together; each row must match HF alone."""
    torch.manual_seed(3)
    vocab = 120
    logits = torch.randn(4, vocab) * 2
    context = torch.randint(0, vocab, (4, 15))
    params = [
        SamplingParams(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.3),
        SamplingParams(temperature=1.3, top_k=0, top_p=0.5, repetition_penalty=1.0),
        SamplingParams(temperature=0.9, top_k=5, top_p=1.0, repetition_penalty=2.0),
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.1),
    ]
    rows = RowSettings.of(params)
    penalized = apply_repetition_penalty(logits, seen_mask(context, vocab), rows.penalty)
    values, ids = candidates(penalized, rows)
    ours = torch.full_like(logits, float("-inf")).scatter(-1, ids, values)
    for row, p in enumerate(params):
        theirs = hf_pipeline(p)(context[row:row + 1], logits[row:row + 1].clone())
        assert_same_filter(ours[row:row + 1], theirs)


def test_draws_follow_the_filtered_distribution():
    """Inverse-CDF draws: empirical frequencies match softmax of the filtered logits."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    params = SamplingParams(temperature=1.0, top_k=4, top_p=1.0, repetition_penalty=1.0)
    rows = RowSettings.of([params])
    rng = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_tokens(logits, rows, [rng]) for _ in range(4000)]).flatten()
    counts = torch.bincount(draws, minlength=6).float() / 4000
    expected = logits[0, :4].softmax(-1)
    assert counts[4:].sum() == 0  # filtered tokens never drawn
    assert (counts[:4] - expected).abs().max() < 0.03


def test_a_rows_draws_do_not_depend_on_its_batch_mates():
    torch.manual_seed(4)
    logits = torch.randn(3, 80)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    alone = [sample_tokens(logits[1:2], RowSettings.of([params]), [torch.Generator().manual_seed(9)])]
    gens = [torch.Generator().manual_seed(s) for s in (1, 9, 2)]
    together = sample_tokens(logits, RowSettings.of([params, params.replace(temperature=0.0), params]), gens)
    assert together[1] == logits[1].argmax()  # the greedy row ignores its draw
    gens = [torch.Generator().manual_seed(s) for s in (1, 9, 2)]
    together = sample_tokens(logits, RowSettings.of([params] * 3), gens)
    assert int(together[1]) == int(alone[0][0])


def test_presets_are_the_seed_values():
    expected = {"balanced": (0.8, 50, 0.95, 1.2), "conservative": (0.7, 40, 0.9, 1.3), "creative": (0.9, 60, 0.95, 1.1)}
    for name, (t, k, p, rp) in expected.items():
        preset = PRESETS[name]
        assert (preset.temperature, preset.top_k, preset.top_p, preset.repetition_penalty) == (t, k, p, rp)


@pytest.mark.parametrize(
    "bad", [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"repetition_penalty": 0}, {"max_new_tokens": 0}]
)
def test_invalid_sampling_params_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


@pytest.fixture()
def generator(tokenizer):
    torch.manual_seed(0)
    return Generator(WikiMiniModel(tiny_model_config(max_seq_len=32)).eval(), tokenizer)


def test_same_seed_same_story_different_seed_different_story(generator):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=30, seed=7, stop_at_eos=False)
    first = generator.generate("Once upon a time", params)
    again = generator.generate("Once upon a time", params)
    other = generator.generate("Once upon a time", params.replace(seed=8))
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids
    assert first.seed == 7


def test_greedy_is_argmax_of_full_recompute(generator):
    """Temperature 0 follows the argmax of an uncached forward over the whole context."""
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12, stop_at_eos=False)
    result = generator.generate("The happy cat found", params)
    context = generator.story_prefix + generator.encode_prompt("The happy cat found")
    with torch.no_grad():
        for token in result.token_ids:
            expected = int(generator.model(torch.tensor([context]))[0, -1].argmax())
            assert token == expected
            context.append(token)


def test_context_slides_past_max_seq_len_instead_of_crashing(generator):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=100, seed=0, stop_at_eos=False)
    result = generator.generate("Once upon a time there was a cat", params)
    assert result.finish_reason == "length"
    assert len(result.token_ids) == 100  # 100 > the context of 32


def test_stops_at_eos_and_excludes_it(tokenizer):
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(tie_embeddings=False)).eval()
    generator = Generator(model, tokenizer)
    eos = generator.eos_id

    class EosHead(torch.nn.Module):  # every position predicts EOS
        def forward(self, hidden):
            logits = torch.zeros(*hidden.shape[:-1], 384)
            logits[..., eos] = 10.0
            return logits

    model.output = EosHead()
    prompt_ids = generator.story_prefix + generator.encode_prompt("Once")
    assert int(model(torch.tensor([prompt_ids]))[0, -1].argmax()) == eos  # precondition

    result = generator.generate("Once", SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=50))
    assert result.finish_reason == "eos"
    assert result.token_ids == [] and result.text == "" and result.tokens == 1
    longer = generator.generate(
        "Once", SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=5, stop_at_eos=False)
    )
    assert longer.finish_reason == "length" and len(longer.token_ids) == 5


def test_repetition_penalty_reduces_repeats(generator):
    base = SamplingParams(temperature=0.0, max_new_tokens=60, stop_at_eos=False, top_k=0, top_p=1.0)
    plain = generator.generate("the the the", base.replace(repetition_penalty=1.0))
    penalised = generator.generate("the the the", base.replace(repetition_penalty=3.0))
    assert len(set(penalised.token_ids)) > len(set(plain.token_ids))
