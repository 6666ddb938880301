"""Against a live uvicorn on a free loopback port: concurrency, disconnects, the OpenAI client."""

import asyncio
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from src.generation import PRESETS, Generator
from src.model.checkpoint import load_model
from src.server.app import create_app
from src.server.settings import ServerSettings
from tests.conftest import before_each_forward, parse_sse


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_model(tiny_checkpoint)


def test_16_concurrent_streams_all_complete(loaded):
    with LiveServer(create_app(loaded, ServerSettings(max_concurrent=4, max_queue=16))) as live:

        async def one(client, seed):
            body = {"prompt": "Once upon a time", "max_tokens": 30, "seed": seed}
            async with client.stream("POST", f"{live.url}/generate", json=body) as response:
                assert response.status_code == 200
                return parse_sse([line async for line in response.aiter_lines()])

        async def all_streams():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(one(client, seed) for seed in range(16)))

        results = asyncio.run(all_streams())
        assert len(results) == 16
        generator = Generator.from_loaded(loaded)
        for seed, events in enumerate(results):
            assert events[-1] == "[DONE]" and events[-2]["done"] is True
            # decoded in a batch with the others, each story is the one it would be alone
            alone = generator.generate("Once upon a time", PRESETS["balanced"].replace(max_new_tokens=30, seed=seed))
            assert "".join(e["token"] for e in events if "token" in e) == alone.text
        assert httpx.get(f"{live.url}/health").json()["active_generations"] == 0


def test_disconnect_frees_the_slot_and_queue_overflow_is_503(loaded, monkeypatch):
    app = create_app(loaded, ServerSettings(max_concurrent=1, max_queue=1, engine="thread"))
    decoded = []

    def slow_step():  # 20 ms per forward pass: a long story holds its slot
        time.sleep(0.02)
        decoded.append(1)

    before_each_forward(monkeypatch, loaded.model, slow_step)
    with LiveServer(app) as live:
        long_body = {"prompt": "Once", "max_tokens": 1000, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                     "repetition_penalty": 1.0, "seed": 0}
        with httpx.Client(timeout=30) as client:
            with client.stream("POST", f"{live.url}/generate", json=long_body) as first:
                lines = first.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
                assert httpx.get(f"{live.url}/health").json()["active_generations"] == 1
                # one request may queue; the next one is refused at once
                with httpx.Client(timeout=30) as other:
                    with other.stream("POST", f"{live.url}/generate", json={"prompt": "Once", "max_tokens": 5}) as queued:
                        time.sleep(0.2)
                        busy = httpx.post(f"{live.url}/generate", json={"prompt": "Once", "max_tokens": 5})
                        assert busy.status_code == 503 and "Retry-After" in busy.headers
                        assert "busy" in busy.json()["error"]
                        queued.close()
            # `first` is now closed by the client: its slot must come back within a token or so
        deadline = time.time() + 10
        while httpx.get(f"{live.url}/health").json()["active_generations"] and time.time() < deadline:
            time.sleep(0.05)
        health = httpx.get(f"{live.url}/health").json()
        assert health["active_generations"] == 0 and health["queued"] == 0
        decoded_after_disconnect = len(decoded)
        time.sleep(0.3)
        assert 0 < len(decoded) == decoded_after_disconnect < 300  # decoding really stopped
        start = time.time()
        with httpx.stream("POST", f"{live.url}/generate", json={"prompt": "Once", "max_tokens": 5, "seed": 1}, timeout=30) as nxt:
            events = parse_sse(nxt.iter_lines())
        assert events[-1] == "[DONE]" and time.time() - start < 5


def test_official_openai_client_streamed_and_not(loaded):
    openai = pytest.importorskip("openai", reason="needs the openai client (pip install -r requirements-dev.txt)")
    with LiveServer(create_app(loaded)) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
        model_id = client.models.list().data[0].id
        completion = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=10, seed=3)
        text = completion.choices[0].text
        assert completion.choices[0].finish_reason in ("stop", "length")
        assert completion.usage.completion_tokens <= 10
        chunks = list(client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=10, seed=3, stream=True))
        assert "".join(c.choices[0].text for c in chunks) == text  # same seed, same story
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=model_id, prompt="Once", max_tokens=5, n=3)


def test_openai_stop_sequence_cuts_the_text(loaded):
    with LiveServer(create_app(loaded)) as live:
        base = {"prompt": "Once upon a time", "max_tokens": 40, "seed": 2, "temperature": 0}
        full = httpx.post(f"{live.url}/v1/completions", json=base, timeout=30).json()["choices"][0]["text"]
        assert len(full) > 6
        stop = full[3:6]
        cut = httpx.post(f"{live.url}/v1/completions", json={**base, "stop": [stop]}, timeout=30).json()["choices"][0]
        assert cut["text"] == full[: full.index(stop)] and cut["finish_reason"] == "stop"
