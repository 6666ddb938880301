"""Shared fixtures: a tiny tokenizer, tiny models and checkpoints, built in seconds, no network."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from src.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from src.generation.native import NativeStep  # noqa: E402
from src.model.checkpoint import save_checkpoint  # noqa: E402
from src.model.transformer_block import WikiMiniModel  # noqa: E402

TINY_STORIES = [
    "Once upon a time there was a little cat named Tom. Tom liked to play in the sun.",
    "One day, a little girl named Lily found a red ball in the garden. She was very happy.",
    "The happy dog ran to the park. He saw a big tree and a small bird.",
    "In the garden, a small bird sang a song. The sun was warm and the sky was blue.",
    "A big dog wanted to play with the ball. \"Can I play too?\" asked the dog.",
    "Mia and Ben went to the beach. They built a sand castle and ate ice cream.",
]


def tiny_model_config(**overrides) -> dict:
    config = dict(vocab_size=384, d_model=32, n_layers=2, n_heads=4, d_ffn=64, max_seq_len=64)
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe_tokenizer(TINY_STORIES * 20, vocab_size=384, min_frequency=1)


@pytest.fixture()
def tiny_model():
    torch.manual_seed(0)
    return WikiMiniModel(tiny_model_config()).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config())
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(path, model, tokenizer, metrics={"val_ppl": 123.0})
    return path


def before_each_forward(monkeypatch, model, hook) -> None:
    """Call `hook()` before every forward pass of `model` (each prefill and each decode step):
    to slow decoding down, count the steps, or make one fail."""
    real_forward = model.forward

    def forward(*args, **kwargs):
        hook()
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    for name in ("__call__", "decode"):  # decode steps that run natively, without forward
        def native_step(step, *args, real_step=getattr(NativeStep, name), **kwargs):
            if step.model is model:
                hook()
            return real_step(step, *args, **kwargs)

        monkeypatch.setattr(NativeStep, name, native_step)


def parse_sse(lines) -> list:
    """The `data:` payloads of a server-sent-event stream, JSON-decoded except `[DONE]`."""
    import json

    events = []
    for line in lines:
        line = line.decode() if isinstance(line, bytes) else line
        if line.startswith("data:"):
            payload = line[5:].strip()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def native_library_or_skip():
    """The native decode step's library, or a skip that says what builds it."""
    from src.generation import native

    lib = native.library()
    if lib is None:
        pytest.skip("needs the native decode step, which the system's C++ compiler builds (apt-get install g++, "
                    f"or set CXX); here: {native.unavailable()}")
    return lib


# A stand-in OpenAI-compatible chat endpoint, for the judge's tests


def completion(content: str) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


class Endpoint:
    """An OpenAI-compatible chat endpoint whose every answer comes from `respond(body, n)`: a
    (status, body bytes or JSON-able, seconds to wait first[, content type]) tuple; n counts the
    requests. Bytes go out as text/html unless a content type is given."""

    def __init__(self, respond) -> None:
        self.requests, self.headers = [], []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(body)
                endpoint.headers.append({key.lower(): value for key, value in self.headers.items()})
                status, payload, delay, *named_type = respond(body, len(endpoint.requests))
                time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                content_type = named_type[0] if named_type else (
                    "text/html" if isinstance(payload, bytes) else "application/json")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
