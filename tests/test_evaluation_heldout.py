"""Held-out loss, perplexity and bits per byte against an independent computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from src.data.sources import DataSourceError
from src.data.tokenizer import EOS_TOKEN
from src.evaluation.heldout import evaluate_heldout
from src.model.checkpoint import load_model
from tests.conftest import TINY_STORIES

STORIES = TINY_STORIES * 3


def write_validation_text(path, stories=STORIES):
    """The dataset's own layout: each story, then a line `<|endoftext|>`."""
    path.write_text("".join(f"{story}\n{EOS_TOKEN}\n" for story in stories), encoding="utf-8")
    return path


def independent_total_nats(model, tokenizer, stories, seq_len):
    """Tokenize story by story (no cache), cut windows of seq_len + 1 every seq_len, sum CE with torch."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    ids = [i for story in stories for i in tokenizer.encode(story).ids + [eos]]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq_len):
            window = torch.tensor(ids[start : start + seq_len + 1])
            logits = model(window[:-1].unsqueeze(0))[0]
            total += F.cross_entropy(logits.float(), window[1:], reduction="sum").item()
            count += len(window) - 1
    return total, count


@pytest.fixture()
def loaded(tiny_checkpoint):
    return load_model(tiny_checkpoint)


def test_perplexity_and_bits_per_byte_match_a_direct_computation(loaded, tmp_path):
    valid = write_validation_text(tmp_path / "valid.txt")
    result = evaluate_heldout(loaded.model, loaded.tokenizer, str(valid), tmp_path / "cache", batch_size=3,
                              show_progress=False)
    seq_len = loaded.config.max_seq_len
    total, count = independent_total_nats(loaded.model, loaded.tokenizer, STORIES, seq_len)
    n_bytes = sum(len(story.encode("utf-8")) for story in STORIES)

    assert result.predicted_tokens == count and result.windows == math.ceil(count / seq_len) > 2
    assert result.total_nats == pytest.approx(total, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result.n_bytes == n_bytes and not result.capped
    assert result.bits_per_byte == pytest.approx(total / (math.log(2) * n_bytes), rel=1e-5)
    document = result.to_dict()
    assert document["loss"] == pytest.approx(total / count, rel=1e-5) and document["bits_per_byte"] > 0


def test_max_windows_scores_only_the_first_windows(loaded, tmp_path):
    valid = write_validation_text(tmp_path / "valid.txt")
    result = evaluate_heldout(loaded.model, loaded.tokenizer, str(valid), tmp_path / "cache", max_windows=1,
                              show_progress=False)
    seq_len = loaded.config.max_seq_len
    assert result.capped and result.windows == 1 and result.predicted_tokens == seq_len
    full = evaluate_heldout(loaded.model, loaded.tokenizer, str(valid), tmp_path / "cache", show_progress=False)
    assert 0 < result.n_bytes < full.n_bytes
    first, _ = independent_total_nats(loaded.model, loaded.tokenizer, STORIES, seq_len)
    assert result.total_nats < first


def test_a_worse_model_has_higher_perplexity(loaded, tmp_path):
    valid = write_validation_text(tmp_path / "valid.txt")
    before = evaluate_heldout(loaded.model, loaded.tokenizer, str(valid), tmp_path / "cache", show_progress=False)
    with torch.no_grad():  # sharpen the random output layer: confident and wrong
        loaded.model.output.weight.mul_(50)
    after = evaluate_heldout(loaded.model, loaded.tokenizer, str(valid), tmp_path / "cache", show_progress=False)
    assert after.perplexity > before.perplexity and after.bits_per_byte > before.bits_per_byte


def test_an_empty_or_missing_source_is_a_data_source_error(loaded, tmp_path):
    empty = write_validation_text(tmp_path / "valid.txt", [])
    for source in (str(empty), str(tmp_path / "missing.txt")):
        with pytest.raises(DataSourceError):
            evaluate_heldout(loaded.model, loaded.tokenizer, source, tmp_path / "cache", show_progress=False)
