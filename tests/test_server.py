"""The web app in-process: validation, SSE event order and content, errors, health, page."""

import pytest
from fastapi.testclient import TestClient

from src.model.checkpoint import load_model
from src.server.app import create_app
from src.server.settings import ServerSettings, parse_settings
from tests.conftest import before_each_forward, parse_sse


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@pytest.fixture()
def client(loaded):
    # decoding on a thread, in this process: tests can slow or fail the model (tests/test_engines.py covers the process)
    settings = ServerSettings(max_concurrent=2, max_queue=2, engine="thread")
    with TestClient(create_app(loaded, settings)) as test_client:
        yield test_client


def stream_events(client, body):
    with client.stream("POST", "/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(response.iter_lines())


def test_health_reports_the_model(client, loaded):
    info = client.get("/health").json()
    assert info["status"] == "ok" and info["model_loaded"] is True
    assert info["parameters"] == loaded.model.num_parameters()
    assert info["vocab_size"] == 384 and info["context_length"] == 64
    assert info["checkpoint"] == "tiny.pth" and info["device"] == "cpu"
    assert info["presets"]["conservative"]["repetition_penalty"] == 1.3


def test_generate_streams_tokens_then_done_then_DONE(client, loaded):
    events = stream_events(client, {"prompt": "Once upon a time", "max_tokens": 20, "seed": 4})
    assert events[-1] == "[DONE]"
    done = events[-2]
    assert done["done"] is True and done["finish_reason"] in ("eos", "length") and done["seed"] == 4
    tokens = events[:-2]
    assert tokens and all(set(e) == {"token"} for e in tokens)
    assert 1 <= done["tokens"] <= 20 and done["tokens_per_s"] > 0
    # the streamed text is exactly what the engine generates for the same seed
    from src.generation import Generator, PRESETS

    expected = Generator.from_loaded(loaded).generate("Once upon a time", PRESETS["balanced"].replace(max_new_tokens=20, seed=4))
    assert "".join(e["token"] for e in tokens) == expected.text


def test_preset_and_overrides_are_applied(client):
    body = {"prompt": "The happy cat found", "max_tokens": 15, "preset": "conservative", "temperature": 0}
    first, second = stream_events(client, body), stream_events(client, body)
    # greedy: identical text (how it splits into events depends on timing)
    assert "".join(e["token"] for e in first[:-2]) == "".join(e["token"] for e in second[:-2])
    assert first[-2]["tokens"] == 15


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "x", "temperature": 2.5}, "temperature"),
        ({"prompt": "x", "temperature": -0.1}, "temperature"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 1001}, "max_tokens"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_k": -1}, "top_k"),
        ({"prompt": "x", "repetition_penalty": 5}, "repetition_penalty"),
        ({"prompt": "x", "preset": "wild"}, "preset"),
        ({"prompt": ""}, "prompt"),
        ({"temperature": 1.0}, "prompt"),
        ({"prompt": "x", "colour": "red"}, "colour"),
    ],
)
def test_invalid_requests_get_422_with_a_json_message(client, body, field):
    response = client.post("/generate", json=body)
    assert response.status_code == 422
    assert field in response.json()["error"]


def test_prompt_longer_than_context_is_422(client):
    response = client.post("/generate", json={"prompt": "Once upon a time " * 40})
    assert response.status_code == 422
    assert "context is 64 tokens" in response.json()["error"]


def test_error_mid_stream_is_reported_then_DONE(client, loaded, monkeypatch):
    calls = []

    def fail_at_the_third_step():  # the prefill, two decode steps, then a failure
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated failure")

    before_each_forward(monkeypatch, loaded.model, fail_at_the_third_step)
    events = stream_events(client, {"prompt": "Once", "max_tokens": 50, "seed": 1})
    assert events[-1] == "[DONE]"
    assert events[-2] == {"error": "RuntimeError: simulated failure"}
    assert not any("done" in e for e in events[:-1])
    assert client.get("/health").json()["active_generations"] == 0


def test_error_mid_stream_of_a_streamed_completion_is_an_openai_error_then_DONE(client, loaded, monkeypatch):
    calls = []

    def fail_at_the_third_step():
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated failure")

    before_each_forward(monkeypatch, loaded.model, fail_at_the_third_step)
    with client.stream("POST", "/v1/completions", json={"prompt": "Once", "max_tokens": 50, "seed": 1,
                                                          "stream": True}) as response:
        events = parse_sse(response.iter_lines())
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["message"] == "RuntimeError: simulated failure"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])  # no chunk claimed an end
    assert client.get("/health").json()["active_generations"] == 0


def test_page_is_self_contained_and_inserts_text_safely(client):
    html = client.get("/").text
    assert "<title>TinyStories generator</title>" in html
    assert "http://" not in html and "https://" not in html  # no CDN: works offline
    assert "innerHTML" not in html and "appendData" in html  # story text is never parsed as HTML
    assert client.get("/docs").status_code == 200


def test_openai_non_streaming_and_unsupported_fields(client):
    response = client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 8, "seed": 1})
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "text_completion" and data["choices"][0]["finish_reason"] in ("stop", "length")
    assert data["usage"]["completion_tokens"] <= 8
    for bad in ({"logit_bias": {"1": 2}}, {"n": 2}, {"echo": 1}, {"presence_penalty": 0.5}, {"suffix": "x"}):
        bad_response = client.post("/v1/completions", json={"prompt": "Once", **bad})
        assert bad_response.status_code == 400, bad
        assert "message" in bad_response.json()["error"]
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"


def test_settings_from_env_and_flags():
    settings = parse_settings([], env={"PORT": "8000", "MAX_CONCURRENT": "3", "HOST": "0.0.0.0", "CHECKPOINT_PATH": "a.pth"})
    # CHECKPOINT_PATH is read in one place, when the checkpoint is resolved (load_for_inference)
    assert (settings.port, settings.max_concurrent, settings.host, settings.checkpoint) == (8000, 3, "0.0.0.0", None)
    flags = parse_settings(["--port", "9000", "--checkpoint", "b.pth"], env={"PORT": "8000"})
    assert flags.port == 9000 and flags.checkpoint == "b.pth" and flags.host == "127.0.0.1"
    with pytest.raises(SystemExit):
        parse_settings([], env={"PORT": "eighty"})
    tuned = parse_settings(["--precision", "fp32", "--access-log"], env={"THREADS": "3", "ENGINE": "thread"})
    assert (tuned.precision, tuned.access_log, tuned.threads, tuned.engine) == ("fp32", True, 3, "thread")
    defaults = parse_settings([], env={})
    assert (defaults.precision, defaults.access_log, defaults.threads, defaults.max_concurrent) == ("auto", False, None, 32)
    assert defaults.engine == "auto" and parse_settings(["--engine", "process"], env={}).engine == "process"
    assert defaults.compile_decode and not ServerSettings().compile_decode  # run_ui compiles; the API default does not
    assert not parse_settings(["--no-compile"], env={}).compile_decode
    assert not parse_settings([], env={"COMPILE": "0"}).compile_decode
    assert parse_settings(["--compile"], env={"COMPILE": "0"}).compile_decode
    for bad in ({"THREADS": "0"}, {"PRECISION": "int4"}, {"ENGINE": "fork"}, {"COMPILE": "maybe"}):
        with pytest.raises(SystemExit):
            parse_settings([], env=bad)


def test_run_ui_with_a_bad_checkpoint_exits_with_a_message(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    proc = subprocess.run([sys.executable, "run_ui.py", "--checkpoint", str(tmp_path / "none.pth")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr


def test_tokens_that_arrive_together_go_out_as_one_delta(loaded):
    """A client (or event loop) that falls behind the decoder catches up: the tokens waiting in
    the stream's queue are sent as one delta, and the text is the same."""
    import asyncio

    from src.generation.presets import PRESETS
    from src.server.decode_loop import Finished
    from src.server.service import StoryService

    service = StoryService(loaded, ServerSettings(engine="thread"))
    ids = loaded.tokenizer.encode(" Lily saw a big red ball.").ids

    async def run() -> list:
        queue = asyncio.Queue()
        for token in ids[:2]:
            queue.put_nowait(token)
        service.engine.submit = lambda request: queue
        service.engine.cancel = lambda request: None
        prompt = service.text_prompt("Once", openai=False)
        out = []
        async for item in service.generate(prompt, PRESETS["balanced"], service.limiter.reserve()):
            out.append(item)
            if len(out) == 1:  # the rest arrives while the first delta is being sent
                for token in ids[2:]:
                    queue.put_nowait(token)
                queue.put_nowait(Finished("eos"))
        return out

    *deltas, result = asyncio.run(run())
    service.close()
    assert deltas == [loaded.tokenizer.decode(ids[:2]), loaded.tokenizer.decode(ids)[len(loaded.tokenizer.decode(ids[:2])):]]
    assert result.text == loaded.tokenizer.decode(ids) and result.token_ids == ids and result.finish_reason == "eos"
    values = {m.name: m.samples for m in service.metrics.registry.collect()}
    assert values["tinystories_generated_tokens"][0].value == len(ids)


def test_a_story_is_submitted_before_its_response_starts_when_a_slot_is_free(loaded):
    """The prefill then runs while the response starts. Without a free slot, the request waits
    for one and is submitted only then; closing a story that never ran frees its slot."""
    import asyncio

    from src.generation.presets import PRESETS
    from src.server.decode_loop import Finished
    from src.server.service import StoryService

    service = StoryService(loaded, ServerSettings(engine="thread", max_concurrent=1, max_queue=1))
    submitted = []

    def submit(request):
        submitted.append(request)
        queue = asyncio.Queue()
        queue.put_nowait(Finished("eos"))
        return queue

    async def run() -> None:
        service.engine.submit, service.engine.cancel = submit, lambda request: None
        prompt = service.text_prompt("Once", openai=False)
        first = service.generate(prompt, PRESETS["balanced"], service.limiter.reserve())
        assert len(submitted) == 1 and service.limiter.active == 1  # at once: the slot was free
        second = service.generate(prompt, PRESETS["balanced"], service.limiter.reserve())
        assert len(submitted) == 1 and service.limiter.waiting == 1  # queued behind the first
        waiting = asyncio.ensure_future(anext(aiter(second)))
        await asyncio.sleep(0)
        assert len(submitted) == 1
        await first.aclose()  # never iterated: its slot passes to the queued story
        assert (await waiting).finish_reason == "eos" and len(submitted) == 2
        await second.aclose()
        assert service.limiter.active == 0 and service.limiter.reserved == 0

    asyncio.run(run())
    service.close()


def test_an_idle_stream_is_pinged_and_a_client_that_leaves_frees_its_story(monkeypatch):
    """A client waiting with nothing to read gets a comment line every PING_S; one that
    disconnects before any event cancels the stream, and its close still runs."""
    import asyncio

    from src.server import sse

    monkeypatch.setattr(sse, "PING_S", 0.05)

    async def run(disconnect_after: float | None) -> tuple[list[bytes], list[str]]:
        sent, closed, release = [], [], asyncio.Event()

        async def events():
            await release.wait()
            yield "1"

        async def receive():
            if disconnect_after is None:
                await asyncio.Event().wait()
            await asyncio.sleep(disconnect_after)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message.get("body", b"start"))

        async def on_close():
            closed.append("closed")

        response = sse.EventStream(events(), on_close)
        task = asyncio.ensure_future(response({"type": "http"}, receive, send))
        if disconnect_after is None:
            await asyncio.sleep(0.18)
            release.set()
        await asyncio.wait_for(task, 5)
        return sent, closed

    sent, closed = asyncio.run(run(None))
    assert sent[0] == b"start" and sent.count(b": ping\n\n") >= 2 and sent[-2:] == [b"data: 1\n\n", b""]
    assert closed == ["closed"]
    sent, closed = asyncio.run(run(0.01))
    assert sent == [b"start"] and closed == ["closed"]  # no event, no error: the client is gone
