"""Hostile and careless clients: every bad body gets a fast 4xx in the documented JSON shape."""

import json

import pytest
from fastapi.testclient import TestClient

from src.model.checkpoint import load_model
from src.server.app import create_app
from src.server.schemas import MAX_BODY_BYTES
from src.server.settings import ServerSettings


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    settings = ServerSettings(max_concurrent=2, max_queue=2, engine="thread")
    with TestClient(create_app(load_model(tiny_checkpoint), settings), raise_server_exceptions=False) as test_client:
        yield test_client


def post_raw(client, path, raw: bytes, content_type="application/json"):
    return client.post(path, content=raw, headers={"content-type": content_type})


def assert_error(response, status, *words, openai=False):
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    message = body["error"]["message"] if openai else body["error"]
    assert isinstance(message, str)
    for word in words:
        assert word in message, message
    return body


@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422_not_500(client, field, literal):
    raw = f'{{"prompt": "Once", "{field}": {literal}}}'.encode()
    assert_error(post_raw(client, "/generate", raw), 422, field, "finite")


def test_non_finite_numbers_on_the_openai_endpoint_are_400(client):
    assert_error(post_raw(client, "/v1/completions", b'{"prompt": "Once", "temperature": NaN}'), 400,
                 "temperature", openai=True)


@pytest.mark.parametrize("body", [
    b'{"prompt": "\\ud800"}',
    b'{"prompt": "Once", "preset": "\\ud800"}',
    b'{"prompt": "Once", "\\udfff": 1}',
])
def test_lone_surrogates_are_refused_on_both_endpoints(client, body):
    assert_error(post_raw(client, "/generate", body), 422)
    assert_error(post_raw(client, "/v1/completions", body.replace(b'"preset"', b'"model"')), 400, openai=True)


@pytest.mark.parametrize("body, field", [
    ({"prompt": "Once", "max_tokens": True}, "max_tokens"),
    ({"prompt": "Once", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "Once", "seed": False}, "seed"),
    ({"prompt": "Once", "top_k": 3.5}, "top_k"),
    ({"prompt": "Once", "temperature": "0.5"}, "temperature"),
    ({"prompt": "Once", "temperature": "nan"}, "valid number"),
    ({"prompt": 5}, "prompt"),
])
def test_lax_types_are_rejected(client, body, field):
    assert_error(client.post("/generate", json=body), 422, field)


@pytest.mark.parametrize("body, field", [
    ({"prompt": "Once", "frequency_penalty": False}, "frequency_penalty"),
    ({"prompt": "Once", "max_tokens": True}, "max_tokens"),
    ({"prompt": "Once", "stream": "yes"}, "stream"),
    ({"prompt": ["a", 5]}, "prompt"),  # texts and token ids are not mixed
    ({"prompt": "Once", "stop": ["a"] * 5}, "stop"),
    ({"prompt": "Once", "stream_options": {"include_usage": 1}}, "include_usage"),
])
def test_openai_lax_types_are_rejected(client, body, field):
    assert_error(client.post("/v1/completions", json=body), 400, field, openai=True)


def test_errors_do_not_echo_the_input(client):
    huge_prompt = "x" * (MAX_BODY_BYTES // 2)  # under the body limit, over the prompt limit
    response = client.post("/generate", json={"prompt": huge_prompt, "bogus_" + "y" * 5000: 1})
    body = assert_error(response, 422, "prompt")
    assert len(response.content) < 2000 and "xxxxxxxxxx" not in response.text
    assert all(set(d) == {"loc", "msg", "type"} for d in body["detail"])
    openai = client.post("/v1/completions", json={"prompt": huge_prompt})
    assert_error(openai, 400, "prompt", openai=True)
    assert len(openai.content) < 2000


def test_prompt_too_long_in_characters_is_refused_before_tokenizing(client, monkeypatch):
    generator = client.app.state.generator
    monkeypatch.setattr(generator, "encode_prompt", lambda text: pytest.fail("tokenized an impossible prompt"))
    assert_error(client.post("/generate", json={"prompt": "a" * 19_000}), 422, "characters")
    assert_error(client.post("/v1/completions", json={"prompt": "a" * 19_000}), 400, "characters", openai=True)


def test_oversized_bodies_are_413_by_content_length_and_when_chunked(client):
    big = json.dumps({"prompt": "x" * (MAX_BODY_BYTES + 10)}).encode()
    assert_error(post_raw(client, "/generate", big), 413, "larger than")
    assert_error(post_raw(client, "/v1/completions", big), 413, openai=True)

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    chunked = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert_error(chunked, 413, "larger than")


@pytest.mark.parametrize("raw, words", [
    (b'{"prompt": "caf\xe9"}', ("UTF-8",)),  # latin-1
    (b'{"prompt": "\xff\xfe"}', ("UTF-8",)),
    (b'[' * 100_000 + b']' * 100_000, ("nested",)),
    (b'{"prompt": "Once"', ()),  # truncated JSON
])
def test_unparseable_bodies_get_the_documented_error_shape(client, raw, words):
    for path, openai in (("/generate", False), ("/v1/completions", True)):
        response = post_raw(client, path, raw)
        assert response.status_code in (400, 422), response.text[:200]
        body = assert_error(response, response.status_code, *words, openai=openai)
        assert "detail" not in body or isinstance(body["detail"], list)


def test_the_connection_survives_every_error(client):
    for raw in (b'{"prompt": NaN}', b'{"prompt": "\\ud800"}', b'\xff'):
        post_raw(client, "/generate", raw)
    assert client.get("/health").json()["status"] == "ok"


def test_openapi_documents_errors_and_event_streams(client):
    spec = client.get("/openapi.json").json()
    generate = spec["paths"]["/generate"]["post"]["responses"]
    assert {"200", "400", "413", "422", "503"} <= set(generate)
    assert "text/event-stream" in generate["200"]["content"]
    completions = spec["paths"]["/v1/completions"]["post"]["responses"]
    assert {"200", "400", "413", "503"} <= set(completions)
    assert {"application/json", "text/event-stream"} <= set(completions["200"]["content"])


def test_docs_and_favicon_are_served_locally(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/docs/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert client.get("/static/docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/docs/swagger-ui.css").status_code == 200
    favicon = client.get("/favicon.ico")
    assert favicon.status_code == 200 and favicon.headers["content-type"].startswith("image/svg+xml")


def test_queued_requests_start_in_arrival_order_and_their_wait_is_reported():
    import asyncio

    from src.server.limiter import SlotLimiter

    async def run():
        limiter = SlotLimiter(max_active=2, max_waiting=10)
        started: list[int] = []
        gates = {i: asyncio.Event() for i in range(8)}

        async def request(i: int):
            async with limiter.reserve():
                started.append(i)
                await gates[i].wait()

        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(request(i)))
            await asyncio.sleep(0)  # arrival order 0, 1, 2, ...
        await asyncio.sleep(0.01)
        assert started == [0, 1] and limiter.waiting == 6
        tasks[3].cancel()  # a queued client that goes away gives its place up
        await asyncio.sleep(0)
        for i in (0, 1, 2, 4, 5, 6, 7):
            gates[i].set()
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks, return_exceptions=True)
        assert started == [0, 1, 2, 4, 5, 6, 7]
        assert limiter.active == 0 and limiter.reserved == 0
        report = limiter.queue_wait_ms()
        assert report["queued_requests"] == 5 and report["max_ms"] >= report["p50_ms"] > 0

    asyncio.run(run())


def test_health_reports_queue_wait(client):
    health = client.get("/health").json()
    assert set(health["queue_wait"]) == {"queued_requests", "p50_ms", "max_ms"}


def test_integral_floats_are_integers_but_fractions_and_zero_for_false_are_not(client):
    assert client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 2.0, "seed": 7.0}).status_code == 200
    assert_error(client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 2.5}), 400, "max_tokens", openai=True)
    assert_error(client.post("/v1/completions", json={"prompt": "Once", "echo": 0}), 400, "echo", openai=True)
    schema = client.get("/openapi.json").json()["components"]["schemas"]["CompletionRequest"]["properties"]
    assert schema["seed"]["anyOf"][0]["minimum"] == 0  # constraints reach the published schema
