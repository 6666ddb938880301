"""Faults an operator meets: absurd sizes, separator-less text, killed or stopped decode
workers, SIGTERM during streams, half-sent requests, foreign Host headers, leftover temp files."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from src.config_utils import ConfigError
from src.atomic_files import remove_stale_temps
from src.data.cache import chunks
from src.data.sources import MAX_STORY_CHARS, DataSourceWarning, open_source
from src.generation import Generator, SamplingParams
from src.model.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, load_model, save_checkpoint
from src.model.config import ModelConfig
from src.model.transformer_block import WikiMiniModel
from src.server.app import create_app
from src.server.engines import EngineUnavailable, ProcessEngine
from src.server.guards import default_allowed_hosts, host_name
from src.server.settings import ServerSettings, parse_settings
from tests.conftest import REPO_ROOT, parse_sse, tiny_model_config
from tests.test_engines import drain, wait_for_health
from tests.test_server_live import free_port

ENDLESS = SamplingParams(temperature=1.0, max_new_tokens=100_000, stop_at_eos=False)


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_model(tiny_checkpoint)


# ---------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize("key, value", [("max_seq_len", 10**9), ("vocab_size", 10**8), ("d_model", 10**6),
                                        ("n_layers", 10**5), ("d_ffn", 10**7)])
def test_absurd_model_sizes_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"model.{key} is {value:,}; the limit is"):
        ModelConfig(**{**tiny_model_config(), key: value})


def test_a_model_larger_than_memory_is_refused_before_allocating():
    config = ModelConfig(**tiny_model_config())
    config.check_fits_memory(memory=10**9)  # fits
    with pytest.raises(ConfigError, match="needs .* for its float32 weights; this machine has 1.0 KiB|this machine has"):
        config.check_fits_memory(memory=1024)
    with pytest.raises(ConfigError, match="model.d_model=16384"):  # within each limit, too big together
        ModelConfig(vocab_size=2**20, d_model=16_384, n_layers=256, n_heads=128, d_ffn=65_536)


def limited_run(args, memory_gib: int = 6):
    """Run a repo script with its address space capped: an allocation past the cap would fail."""
    code = ("import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({memory_gib} << 30, {memory_gib} << 30)); "
            f"sys.argv = {args!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, timeout=120)
    return proc, time.monotonic() - start


def test_train_refuses_a_huge_context_fast_under_a_memory_limit(tmp_path):
    proc, seconds = limited_run(["train.py", "--config", "config/smoke.yaml", "--set", "model.max_seq_len=1000000000",
                                 "--set", f"training.output_dir={tmp_path}"])
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "model.max_seq_len is 1,000,000,000" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and seconds < 20


def test_a_checkpoint_claiming_a_huge_context_is_refused_by_every_loader(tmp_path, tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["config"]["model"]["max_seq_len"] = 10**9
    path = tmp_path / "huge.pth"
    torch.save(checkpoint, path)
    for script in (["generate.py", "--checkpoint", str(path), "--max-tokens", "3"],
                   ["evaluate_model.py", "--checkpoint", str(path)]):
        proc, _ = limited_run(script)
        stderr = proc.stderr.decode()
        assert proc.returncode == 2, stderr
        assert "model.max_seq_len is 1,000,000,000" in stderr and "Traceback" not in stderr


def test_training_batch_whose_logits_exceed_memory_is_refused():
    from src.training.config import TrainConfig

    config = TrainConfig.from_dict({"model": tiny_model_config(), "training": {"batch_size": 8}})
    config.check_batch_fits_memory(memory=10**9)
    with pytest.raises(ConfigError, match="training.batch_size=8 windows of model.max_seq_len=64"):
        config.check_batch_fits_memory(memory=10**5)


# ---------------------------------------------------------------------------------------------
# Text without story separators


def test_separator_less_text_is_read_in_bounded_pieces_with_a_warning(tmp_path):
    words = ("the cat sat on the mat and looked at a big red ball " * 20_000).strip()  # ~1 MB, one line
    path = tmp_path / "no_separators.txt"
    path.write_text(words)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stories = list(open_source(str(path)).stories())
    assert len(stories) >= len(words) // MAX_STORY_CHARS
    assert max(map(len, stories)) <= MAX_STORY_CHARS
    assert " ".join(stories).split() == words.split()  # cut at spaces: no word lost or split
    assert [w for w in caught if issubclass(w.category, DataSourceWarning)], "no warning about the separators"


def test_tokenizer_chunks_are_bounded_by_text_size():
    stories = iter(["x" * 1000] * 100)
    sizes = [sum(map(len, chunk)) for chunk, _ in chunks(stories, max_stories=1000, max_bytes=10_000)]
    assert sum(sizes) == 100_000 and max(sizes) <= 10_000 + 1000


def test_tokenizer_chunks_are_bounded_in_bytes_not_characters():
    """Four-byte characters are up to four tokens each: a chunk counts the bytes."""
    stories = ["🙂" * 1000] * 100
    sizes = [size for _, size in chunks(iter(stories), max_stories=1000, max_bytes=10_000)]
    assert sum(sizes) == 400_000 and max(sizes) <= 10_000 + 4000


# ---------------------------------------------------------------------------------------------
# Checkpoint files: leftovers and messages


def test_stale_temp_files_of_dead_writers_are_removed_at_the_next_save(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".checkpoint_latest.pth.{int(dead.stdout)}.tmp"
    live = tmp_path / f".checkpoint_latest.pth.{os.getppid()}.tmp"  # a running writer's: kept
    other = tmp_path / f".other.pth.{int(dead.stdout)}.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    atomic_torch_save({"x": torch.zeros(1)}, target)
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temps(tmp_path) == [other] and live.exists()


def test_checkpoint_errors_say_what_is_wrong_in_one_line(tmp_path, tiny_checkpoint, tokenizer):
    random_bytes = tmp_path / "random.pth"
    random_bytes.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(random_bytes)
    assert "not a readable PyTorch checkpoint" in str(error.value) and "arbitrary" not in str(error.value)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pth"
    torch.save({"config": {"model": {}}, "model_state_dict": {}, "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="arbitrary Python objects"):
        load_checkpoint(evil)

    model = WikiMiniModel(tiny_model_config())
    fewer_layers = tmp_path / "fewer.pth"
    save_checkpoint(fewer_layers, model, tokenizer)
    checkpoint = torch.load(fewer_layers, weights_only=True)
    checkpoint["config"]["model"]["n_layers"] = 3
    torch.save(checkpoint, fewer_layers)
    with pytest.raises(CheckpointError) as error:
        load_model(fewer_layers)
    message = str(error.value)
    assert "\n" not in message and "missing (e.g. layers.2." in message


# ---------------------------------------------------------------------------------------------
# Decode worker: killed, stopped


def test_a_non_streaming_completion_whose_worker_dies_gets_503_with_retry_after(loaded):
    app = create_app(loaded, ServerSettings(engine="process"))
    with TestClient(app) as client:
        wait_for_health(client)
        engine = app.state.engine
        result = {}

        def complete():
            result["response"] = client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 1000})

        thread = threading.Thread(target=complete)
        thread.start()
        deadline = time.monotonic() + 30
        while not engine.streams and time.monotonic() < deadline:
            time.sleep(0.001)
        engine._process.kill()
        thread.join(30)
        response = result["response"]
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] and response.json()["error"]["type"] == "server_error"
        assert "exited" in response.json()["error"]["message"]


def test_a_stopped_worker_is_detected_killed_and_restarted(loaded):
    generator = Generator.from_loaded(loaded)

    async def run():
        engine = ProcessEngine(loaded.model, loaded.eos_id, slots=2, threads=1, step_timeout_s=1.0)
        engine.start()
        try:
            while not engine.ready:  # the watchdog's clock runs once the worker is up
                await asyncio.sleep(0.05)
            queue = engine.submit(generator.new_request([5, 6], ENDLESS, 0))
            await asyncio.wait_for(queue.get(), 60)
            os.kill(engine._process.pid, signal.SIGSTOP)
            items = await drain(queue, timeout=30)
            for _ in range(600):  # the new process comes up
                if engine.ready:
                    break
                await asyncio.sleep(0.05)
            after = await drain(engine.submit(generator.new_request([5, 6], ENDLESS.replace(max_new_tokens=3), 1)))
            return items, after, len(engine.restart_times)
        finally:
            engine.close()

    items, after, restarts = asyncio.run(run())
    assert isinstance(items[-1], EngineUnavailable) and "stopped responding" in str(items[-1])
    assert restarts == 1 and len(after) == 4  # three tokens and Finished from the new process


def test_health_is_503_while_the_worker_starts(loaded):
    app = create_app(loaded, ServerSettings(engine="process"))
    with TestClient(app) as client:
        first = client.get("/health")
        assert first.status_code == 503 and first.json()["status"] == "loading"
        assert wait_for_health(client)["status"] == "ok"


# ---------------------------------------------------------------------------------------------
# Host header and half-sent requests


def test_host_header_is_checked_against_the_bound_host(loaded):
    assert default_allowed_hosts("0.0.0.0") == ("*",)
    assert "localhost" in default_allowed_hosts("127.0.0.1") and "::1" in default_allowed_hosts("127.0.0.1")
    assert host_name("[::1]:7779") == "::1" and host_name("localhost:7779") == "localhost"
    assert parse_settings(["--host", "127.0.0.1"], env={}).allowed_hosts == default_allowed_hosts("127.0.0.1")
    assert parse_settings(["--allowed-host", "stories.example"], env={}).allowed_hosts == ("stories.example",)
    settings = ServerSettings(engine="thread", allowed_hosts=default_allowed_hosts("127.0.0.1"))
    with TestClient(create_app(loaded, settings), base_url="http://localhost:7779") as client:
        assert client.get("/health").status_code == 200
        rebound = client.get("/health", headers={"Host": "attacker.example:7779"})
        assert rebound.status_code == 421 and "Host header" in rebound.json()["error"]
        openai = client.get("/v1/models", headers={"Host": "attacker.example"})
        assert openai.status_code == 421 and openai.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------------------------------------
# The real server process: read timeout, SIGTERM during streams


def decode_child(pid: int) -> int:
    """The PID of the server's decode process (a spawned child that is not a resource tracker)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for task in os.listdir(f"/proc/{pid}/task"):
            for child in open(f"/proc/{pid}/task/{task}/children").read().split():
                cmdline = open(f"/proc/{child}/cmdline", "rb").read()
                if b"spawn" in cmdline and b"resource_tracker" not in cmdline:
                    return int(child)
        time.sleep(0.1)
    raise AssertionError("no decode process")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc to find the decode process")
def test_sigterm_ends_every_open_stream_properly_and_half_sent_requests_time_out(tiny_checkpoint):
    port = free_port()
    server = subprocess.Popen([sys.executable, "run_ui.py", "--checkpoint", str(tiny_checkpoint), "--port", str(port),
                               "--no-compile", "--max-concurrent", "1", "--read-timeout", "3"],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the server did not come up"
            time.sleep(0.2)

        # a request that never finishes its headers gets 408 and is disconnected
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            reply = sock.recv(4096)
            assert reply.startswith(b"HTTP/1.1 408") and sock.recv(4096) == b""

        # one running stream, two queued behind it; the worker is stopped so none can finish
        streams, started = [], threading.Barrier(4)

        def stream(path, body):
            lines = []
            with httpx.stream("POST", f"{base}{path}", json=body, timeout=60) as response:
                started.wait()
                lines.extend(response.iter_lines())
            streams.append((response.status_code, parse_sse(lines)))

        bodies = [("/generate", {"prompt": "Once", "max_tokens": 1000}),
                  ("/generate", {"prompt": "Once", "max_tokens": 1000}),
                  ("/v1/completions", {"prompt": "Once", "max_tokens": 1000, "stream": True})]
        os.kill(decode_child(server.pid), signal.SIGSTOP)
        threads = [threading.Thread(target=stream, args=b) for b in bodies]
        for thread in threads:
            thread.start()
        started.wait(timeout=30)
        server.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    finally:
        if server.poll() is None:
            server.kill()
    assert len(streams) == 3
    for status, events in streams:
        assert status == 200 and events[-1] == "[DONE]", (status, events)
        error = events[-2]["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert "shutting down" in message, events
