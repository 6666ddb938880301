"""The decode process: what it streams equals decoding alone; cancelling stops it; if it dies,
streams and new requests get a clear error instead of hanging."""

import asyncio
import time

import pytest
from fastapi.testclient import TestClient

from src.generation import Generator, SamplingParams
from src.server.decode_loop import Finished
from src.model.checkpoint import load_model
from src.server.app import create_app
from src.server.engines import DecodeError, ProcessEngine
from src.server.settings import ServerSettings


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_model(tiny_checkpoint)


ENDLESS = SamplingParams(temperature=1.0, max_new_tokens=100_000, stop_at_eos=False)


def started_engine(loaded, slots: int = 2, compile_decode: bool = False) -> ProcessEngine:
    """A decode process for `loaded`; call on the event loop that will read its tokens."""
    engine = ProcessEngine(loaded.model, loaded.eos_id, slots=slots, threads=1,
                           decode="compile" if compile_decode else "auto")
    engine.start()
    return engine


async def drain(queue: asyncio.Queue, timeout: float = 120) -> list:
    items = []
    while True:
        item = await asyncio.wait_for(queue.get(), timeout)
        if isinstance(item, (Finished, BaseException)):
            return items + [item]
        items.append(item)


@pytest.mark.parametrize("compile_decode", [False, True], ids=["eager", "compiled"])
def test_process_engine_streams_equal_each_request_alone(loaded, compile_decode):
    generator = Generator.from_loaded(loaded)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=25, stop_at_eos=False)
    sampled = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.2, max_new_tokens=25)
    # more requests than slots (some wait), a shared prompt, mixed settings
    cases = [("Once upon a time", greedy, 0), ("Once upon a time", sampled, 1), ("The dog", sampled, 2),
             ("Once upon a time", sampled, 3), ("Lily and Tom", greedy, 4), ("The dog", sampled, 5)]

    async def run():
        engine = started_engine(loaded, slots=4, compile_decode=compile_decode)
        try:
            queues = [engine.submit(generator.new_request(generator.encode_prompt(p), params, seed))
                      for p, params, seed in cases]
            return await asyncio.gather(*(drain(q) for q in queues))
        finally:
            engine.close()

    streamed = asyncio.run(run())
    for (prompt, params, seed), items in zip(cases, streamed):
        assert items[-1] == Finished("length" if len(items) - 1 == params.max_new_tokens else "eos")
        alone = list(generator.decode(generator.new_request(generator.encode_prompt(prompt), params, seed)))
        assert items[:-1] == alone


def test_cancel_stops_the_decode_process_mid_story(loaded):
    generator = Generator.from_loaded(loaded)

    async def run():
        engine = started_engine(loaded)
        try:
            request = generator.new_request(generator.encode_prompt("Once"), ENDLESS, 0)
            queue = engine.submit(request)
            for _ in range(3):
                await asyncio.wait_for(queue.get(), 30)
            engine.cancel(request)
            rest = await drain(queue, timeout=10)
            # the slot is free again: a new request runs to its end
            short = engine.submit(generator.new_request(generator.encode_prompt("Once"), ENDLESS.replace(max_new_tokens=4), 1))
            return rest, await drain(short)
        finally:
            engine.close()

    rest, short = asyncio.run(run())
    assert rest[-1] == Finished("cancelled") and len(rest) < 5_000  # it stopped long before its 100,000 tokens
    assert short[-1] == Finished("length") and len(short) == 5


def wait_for_health(client, timeout: float = 60) -> dict:
    """/health's body once it answers 200; every answer before that is a 503 saying "loading"."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/health")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response.json()
        assert response.status_code == 503 and response.json()["status"] == "loading"
        time.sleep(0.05)


def test_a_dead_decode_process_fails_its_streams_and_is_restarted_within_a_limit(loaded):
    app = create_app(loaded, ServerSettings(engine="process"))
    with TestClient(app) as client:
        engine = app.state.engine
        assert client.get("/health").json()["engine"] == "process"
        generator = Generator.from_loaded(loaded)

        async def kill_mid_stream():
            queue = engine.submit(generator.new_request([5, 6], ENDLESS, 0))
            await asyncio.wait_for(queue.get(), 30)
            engine._process.kill()
            return await drain(queue)

        items = client.portal.call(kill_mid_stream)
        assert isinstance(items[-1], DecodeError) and "exited" in str(items[-1]) and "restarted" in str(items[-1])
        health = wait_for_health(client)
        assert health["status"] == "ok" and health["engine_restarts"] == 1
        response = client.post("/generate", json={"prompt": "Once upon a time", "max_tokens": 5})
        assert response.status_code == 200 and '"done": true' in response.text  # the new process serves

        engine.max_restarts = 1  # the limit is reached at the next death: no more restarts
        items = client.portal.call(kill_mid_stream)
        assert isinstance(items[-1], DecodeError) and "not restarted" in str(items[-1])
        response = client.get("/health")
        assert response.status_code == 503 and response.headers["retry-after"]
        assert response.json()["status"] == "error" and "exited" in response.json()["error"]
        response = client.post("/generate", json={"prompt": "Once upon a time"})
        assert response.status_code == 503 and "generation is unavailable" in response.json()["error"]


def test_close_ends_open_streams_and_cancel_after_a_crash_is_harmless(loaded):
    generator = Generator.from_loaded(loaded)

    async def run():
        engine = started_engine(loaded)
        crashed = generator.new_request([5, 6], ENDLESS, 0)
        queue = engine.submit(crashed)
        await asyncio.wait_for(queue.get(), 30)
        engine._process.kill()
        engine._process.join(10)
        engine.cancel(crashed)  # the pipe may be broken already: no exception either way
        after_crash = await drain(queue)
        engine.close()
        engine.start()  # a restart after close() serves again
        assert engine.failure is None
        running = engine.submit(generator.new_request([5, 6], ENDLESS, 1))
        await asyncio.wait_for(running.get(), 30)
        engine.close()  # a stream still open ends with an error instead of hanging
        return after_crash, await drain(running, timeout=10)

    after_crash, at_close = asyncio.run(run())
    assert isinstance(after_crash[-1], DecodeError)
    assert isinstance(at_close[-1], DecodeError) and "shutting down" in str(at_close[-1])
