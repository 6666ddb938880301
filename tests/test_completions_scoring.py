"""/v1/completions as lm-evaluation-harness and OpenAI clients use it for scoring: echo,
logprobs, max_tokens 0, token-id and batched prompts, the tokenizer endpoints, /metrics, and
the 400s for what cannot be served."""

from __future__ import annotations

import math

import pytest
import torch
from fastapi.testclient import TestClient

from src.model.checkpoint import load_model
from src.server.app import create_app
from src.server.settings import ServerSettings


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    with TestClient(create_app(loaded, ServerSettings(engine="thread", max_concurrent=4, max_queue=4))) as client:
        yield loaded, client


def reference_logprobs(loaded, ids):
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([ids])).float()
    logprobs = torch.log_softmax(logits[0], dim=-1)
    return [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_echo_scores_each_prompt_token_in_one_request(served):
    loaded, client = served
    info = client.get("/tokenizer_info").json()
    assert info["model_max_length"] == loaded.config.max_seq_len and info["eos_token"] == "<|endoftext|>"
    tokenized = client.post("/tokenize", json={"prompt": "The happy dog ran", "add_special_tokens": True}).json()
    ids = tokenized["tokens"]
    assert ids[0] == loaded.story_start_id and tokenized["count"] == len(ids)
    assert client.post("/detokenize", json={"tokens": ids[1:]}).json()["prompt"] == "The happy dog ran"

    body = {"prompt": [ids, ids[:3]], "max_tokens": 0, "echo": True, "logprobs": 2}
    reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    first, second = reply.json()["choices"]
    assert [first["index"], second["index"]] == [0, 1]
    expected = reference_logprobs(loaded, ids)
    got = first["logprobs"]["token_logprobs"]
    assert got[0] is None and len(got) == len(ids)
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(got[1:], expected))
    assert second["logprobs"]["token_logprobs"][1:] == pytest.approx(expected[:2], abs=1e-4)
    top = first["logprobs"]["top_logprobs"][1]
    assert len(top) == 2 and max(top.values()) >= got[1] - 1e-6
    assert first["text"] == "".join(first["logprobs"]["tokens"])
    assert reply.json()["usage"]["prompt_tokens"] == len(ids) + 3


def test_greedy_token_with_logprobs_is_the_models_argmax(served):
    loaded, client = served
    ids = client.post("/tokenize", json={"prompt": "Once upon a", "add_special_tokens": True}).json()["tokens"]
    reply = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 1,
                                                 "temperature": 0}).json()
    logprobs = reply["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + 1
    last_top = logprobs["top_logprobs"][-1]
    assert logprobs["token_logprobs"][-1] == pytest.approx(max(last_top.values()), abs=1e-5)  # greedy
    assert reply["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize("body, words", [
    ({"prompt": [[10**6]], "max_tokens": 0, "echo": True}, "outside the vocabulary"),
    ({"prompt": [], "max_tokens": 1}, "prompt"),
    ({"prompt": "Once", "logprobs": 6}, "logprobs"),
    ({"prompt": [[1]] * 65, "max_tokens": 0, "echo": True}, "prompt"),
    ({"prompt": [1] * 200, "max_tokens": 0, "echo": True}, "exceeds the model's context"),
    ({"prompt": "Once", "max_tokens": 0}, "use it with echo"),
    ({"prompt": "Once", "stream": True, "logprobs": 1}, "stream takes one prompt"),
    ({"prompt": "Once", "n": 2}, "n:"),
])
def test_what_cannot_be_served_is_a_400_in_openais_shape(served, body, words):
    _, client = served
    reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 400 and words in reply.json()["error"]["message"]
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_metrics_count_requests_and_tokens(served):
    _, client = served
    client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 3, "seed": 1})
    text = client.get("/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values["tinystories_generation_requests_total"] >= 1
    assert values["tinystories_generated_tokens_total"] >= 1 and values["tinystories_prompt_tokens_total"] >= 1
    assert "tinystories_active_streams" in values and "tinystories_token_interval_seconds_count" in values
