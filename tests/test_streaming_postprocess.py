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


@pytest.mark.parametrize("raw, shown", [
    ("It was a sunny day. Mia was very", "It was a sunny day."),
    ('He said, "Hi!" then she', 'He said, "Hi!"'),
    ("It was", "It was"),  # no sentence has ended: nothing is cut, nothing is added
])
def test_a_length_cut_story_ends_at_its_last_complete_sentence_without_an_invented_stop(raw, shown):
    assert postprocess(raw, cut=True) == shown
    assert postprocess(raw) != shown or raw == shown  # a story that ended at EOS is still closed off


def test_the_cli_and_the_server_end_a_length_cut_story_alike():
    """The bundled model cut mid-sentence: generate.py prints the story to its last complete
    sentence, and /generate's done event gives the UI the same ending (same seed, same story)."""
    import json
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from src.generation.postprocess import without_cut_sentence
    from src.model.checkpoint import load_for_inference
    from src.server.app import create_app
    from src.server.settings import ServerSettings
    from tests.conftest import REPO_ROOT

    demo = str(REPO_ROOT / "checkpoints/demo/tinystories_demo.pth")
    prompt, request = "The cat sat. It was", ["--max-tokens", "12", "--seed", "3"]
    cli = subprocess.run([sys.executable, "generate.py", "--checkpoint", demo, "--prompt", prompt, "--json", *request],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    sample = json.loads(cli.stdout)["samples"][0]
    assert sample["finish_reason"] == "length" and not sample["continuation"].rstrip().endswith((".", "!", "?"))
    assert sample["text"] == postprocess(prompt + sample["continuation"], cut=True)
    assert (prompt + sample["continuation"]).startswith(sample["text"])  # cut, never added to
    with TestClient(create_app(load_for_inference(demo, announce=False), ServerSettings(engine="thread"))) as client:
        lines = client.post("/generate", json={"prompt": prompt, "max_tokens": 12, "seed": 3}).text.splitlines()
    events = [json.loads(line[5:]) for line in lines if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    streamed, done = "".join(e.get("token", "") for e in events), events[-1]
    assert streamed == sample["continuation"]
    assert done["finish_reason"] == "length" and done["text"] == without_cut_sentence(prompt, streamed)
    assert prompt + done["text"] == sample["text"]
