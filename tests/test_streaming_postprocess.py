"""Streaming deltas never garble text; post-processing does what it says and nothing more."""

import pytest
import torch

from src.generation import Generator, SamplingParams
from src.generation.postprocess import (
    capitalize_sentences,
    ensure_terminal_punctuation,
    normalize_whitespace,
    postprocess,
)
from src.generation.text import REPLACEMENT_CHAR, StoryText
from src.model import WikiMiniModel
from tests.conftest import tiny_model_config


@pytest.mark.parametrize("text", ["héllo wörld", " emoji 😀🐱 and CJK 世界 ok", "naïve café — “quotes”", "a  b\n\nc"])
def test_stream_decoder_deltas_concatenate_to_decode(tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text.split())  # multi-byte characters really are split across tokens
    story = StoryText(tokenizer, "", 0, seed=0)
    deltas = [story.push(i) for i in ids] + [story.finish("eos")]
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    assert story.result().finish_reason == "eos" and story.result().token_ids == ids


@pytest.mark.parametrize("stops", [["bird"], ["sky.", "xyz"], ["\n\n"], ["b"]])
def test_story_text_cuts_before_a_stop_and_never_shows_its_start(tokenizer, stops):
    text = "The sun is up. A bird sings in the sky.\n\nThe end, bye."
    cut = min(text.find(s) for s in stops if s in text)
    story = StoryText(tokenizer, "", 0, seed=0, stops=stops)
    shown = ""
    for token in tokenizer.encode(text).ids:
        shown += story.push(token)
        assert text.startswith(shown) and len(shown) <= cut  # nothing at or past the stop, ever
    shown += story.finish("length")
    assert shown == text[:cut] == story.result().text and story.result().finish_reason == "stop"


def test_story_text_holds_a_partial_stop_until_it_cannot_match(tokenizer):
    story = StoryText(tokenizer, "", 0, seed=0, stops=["The end"])
    shown = "".join(story.push(t) for t in tokenizer.encode("They ran. The en").ids)
    assert "The en" not in shown
    shown += "".join(story.push(t) for t in tokenizer.encode("emy came.").ids) + story.finish("eos")
    assert shown == "They ran. The enemy came." and story.result().finish_reason == "eos"


def test_random_byte_soup_streams_exactly(tokenizer):
    """An untrained model samples arbitrary byte tokens, including invalid UTF-8."""
    torch.manual_seed(0)
    generator = Generator(WikiMiniModel(tiny_model_config()).eval(), tokenizer)
    params = SamplingParams(temperature=2.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=150, seed=5)
    for seed in range(3):
        stream = generator.stream("Once", params.replace(seed=seed))
        deltas = list(stream)
        assert "".join(deltas) == stream.result.text == tokenizer.decode(stream.result.token_ids)


def test_closing_a_stream_stops_generation(tokenizer):
    torch.manual_seed(0)
    generator = Generator(WikiMiniModel(tiny_model_config()).eval(), tokenizer)
    stream = generator.stream("Once", SamplingParams(max_new_tokens=500, stop_at_eos=False, seed=1))
    iterator = iter(stream)
    next(iterator)
    stream.close()
    assert stream.result.finish_reason == "cancelled"
    assert len(stream.result.token_ids) < 10


def test_postprocess_steps():
    assert normalize_whitespace("  the  cat ,sat .\n\n\n\nend ") == "the cat,sat.\n\nend"
    assert capitalize_sentences('once upon a time. the cat sat! "hi," she said. ok') == (
        'Once upon a time. The cat sat! "Hi," she said. Ok'
    )
    assert ensure_terminal_punctuation("The end") == "The end."
    assert ensure_terminal_punctuation("The end,") == "The end."
    assert ensure_terminal_punctuation('"Yes!"') == '"Yes!"'
    assert postprocess("the dog ran  . it was happy") == "The dog ran. It was happy."
    assert postprocess("") == ""


def test_no_capital_after_a_quoted_exclamation_or_question():
    assert postprocess('"Look, mom!" said Mom. "Why?" asked Tom.') == '"Look, mom!" said Mom. "Why?" asked Tom.'
    assert postprocess('"I am done." the end came. (it was late.) then') == '"I am done." The end came. (It was late.) Then.'
