#!/usr/bin/env python3
"""Server under load: time to first token (p50/p95) and aggregate tokens/s at 1, 8 and 32
concurrent streams against a live `run_ui.py` on a free loopback port, and against llama.cpp's
`llama-server` on the same weights when it is found.

    python -m bench.bench_server [--checkpoint CKPT] [--streams 1 8 32] [--max-tokens 100]

Uses the bundled demo model by default; `--distinct-prompts` gives every stream a prompt never
sent before (the default shares one, which the server's prefix cache serves after its first
prefill). Prints a Markdown table and JSON.

With `llama-server` on PATH (or `--llama-server BIN`), both servers are driven through
`/v1/completions` (streamed, plain sampling at temperature 1, usage from the last chunk) by the
same client, one server at a time, llama-server on a q8_0 GGUF export of the same checkpoint
with `-np MAX_CONCURRENT -cb` and as many threads as our decode process; the table then shows
both side by side with ratios. Without it, that column is skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from src.device import cpu_summary

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Once upon a time there was"
PROMPT_NUMBERS = itertools.count()
NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Tim", "Lucy", "Sam", "Zoe", "Jack"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def distinct_prompt(n: int) -> str:
    """The n-th prompt of a run; none repeats, so the server's prefix cache cannot serve any."""
    first, second = NAMES[n % len(NAMES)], NAMES[(n // len(NAMES) + 3) % len(NAMES)]
    return f"{first} and {second} had {n} marbles. {PROMPT}"


# Extra /v1/completions fields for llama-server: its default sampler chain (top-k 40, min-p,
# repetition penalty...) off, so both servers sample the same way.
LLAMA_SERVER_PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
                               "cache_prompt": True}


def request_body(api: str, prompt: str, max_tokens: int, seed: int) -> tuple[str, bytes]:
    """(path, JSON body): our /generate, or streamed /v1/completions ("openai", "llama-server")."""
    if api == "generate":
        return "/generate", json.dumps({"prompt": prompt, "max_tokens": max_tokens, "seed": seed}).encode()
    body = {"prompt": prompt, "max_tokens": max_tokens, "seed": seed, "stream": True, "temperature": 1.0,
            "top_p": 1.0, "stream_options": {"include_usage": True}}
    if api == "llama-server":
        body.update(LLAMA_SERVER_PLAIN_SAMPLING)
    return "/v1/completions", json.dumps(body).encode()


def stream_event(api: str, event: dict) -> tuple[bool, int | None]:
    """(does it carry text, the stream's token count if it says so) for one SSE data event."""
    if "error" in event:
        raise RuntimeError(event["error"])
    if api == "generate":
        return "token" in event, event.get("tokens") if event.get("done") else None
    text = any(choice.get("text") for choice in event.get("choices") or [])
    usage = event.get("usage") or {}
    count = usage.get("completion_tokens", (event.get("timings") or {}).get("predicted_n"))
    return text, count


async def one_stream(host: str, port: int, seed: int, max_tokens: int, prompt: str = PROMPT,
                     api: str = "generate") -> tuple[float, int]:
    """(seconds to the first text event, tokens generated) for one stream.

    A bare asyncio HTTP/1.1 client (chunked transfer + SSE parsing by hand): on a 2-core machine
    that also runs the server, a full client library's own per-request work would be counted
    as server latency.
    """
    path, body = request_body(api, prompt, max_tokens, seed)
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Accept: text/event-stream\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (path.encode(), host.encode(), len(body), body))
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"HTTP error: {status.decode().strip()}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        chunked |= line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
    first, tokens, text_events, buffer = None, None, 0, b""
    try:
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                buffer += await reader.readexactly(size)
                await reader.readexactly(2)
            else:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                if not raw.startswith(b"data:"):
                    continue
                payload = raw[5:].strip()
                if payload == b"[DONE]":
                    return (first if first is not None else float("nan")), tokens or text_events
                has_text, count = stream_event(api, json.loads(payload))
                if has_text:
                    text_events += 1
                    if first is None:
                        first = time.perf_counter() - start
                if count is not None:
                    tokens = count
    finally:
        writer.close()
    return (first if first is not None else float("nan")), tokens or text_events


async def burst(port: int, streams: int, max_tokens: int, distinct: bool, api: str) -> tuple[list[float], int, float]:
    """(TTFTs in ms, tokens, wall seconds) of `streams` streams started together."""
    start = time.perf_counter()
    prompts = [distinct_prompt(next(PROMPT_NUMBERS)) if distinct else PROMPT for _ in range(streams)]
    results = await asyncio.gather(*(one_stream("127.0.0.1", port, seed, max_tokens, prompt, api)
                                     for seed, prompt in enumerate(prompts)))
    return [r[0] * 1000 for r in results], sum(r[1] for r in results), time.perf_counter() - start


def load_level(port: int, streams: int, max_tokens: int, rounds: int, distinct: bool, api: str = "generate") -> dict:
    """`rounds` bursts (a pause between them); TTFT percentiles over every stream of every burst."""
    ttfts, tokens, wall, completed = [], 0, 0.0, 0
    for _ in range(rounds):
        times, n_tokens, seconds = asyncio.run(burst(port, streams, max_tokens, distinct, api))
        ttfts += times
        tokens += n_tokens
        wall += seconds
        completed += sum(t == t for t in times)  # NaN: no token arrived
        time.sleep(0.3)
    return {"streams": streams, "rounds": rounds, "completed": completed, "started": streams * rounds,
            "ttft_p50_ms": statistics.median(ttfts), "ttft_p95_ms": percentile(ttfts, 0.95),
            "tokens": tokens, "aggregate_tok_s": tokens / wall, "wall_s": wall}


@contextlib.contextmanager
def running(command: list[str], url: str, ready_path: str, name: str):
    """Start a server process and wait until `ready_path` answers 200; stop it afterwards. Its log
    goes to a file: a pipe nobody drains would block a server that logs every request."""
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log, env=os.environ)
    try:
        deadline = time.time() + 180
        while True:
            if server.poll() is not None:
                log.seek(0)
                sys.exit(f"{name} exited: {log.read().decode(errors='replace')[-2000:]}")
            try:
                response = httpx.get(f"{url}{ready_path}", timeout=2)
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                sys.exit(f"{name} did not start within 180 s")
            time.sleep(0.3)
        yield response
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # llama-server can wait on idle keep-alive connections
            server.kill()
            server.wait(timeout=10)
        log.close()


def measure(port: int, args, api: str) -> list[dict]:
    """Every level, with enough bursts that its TTFT percentiles pool at least --min-streams streams."""
    load_level(port, 2, 10, 1, args.distinct_prompts, api)  # warm-up
    return [load_level(port, n, args.max_tokens, max(args.rounds, -(-args.min_streams // n)), args.distinct_prompts, api)
            for n in args.streams]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: the usual resolution (bundled demo model)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="bursts per level; percentiles pool them")
    parser.add_argument("--min-streams", type=int, default=24,
                        help="more bursts where a level would pool fewer streams than this (default 24)")
    parser.add_argument("--distinct-prompts", action="store_true",
                        help="a new prompt for every stream, never repeated (default: one shared prompt, as "
                        "from the web UI, which the server's prefix cache serves after its first prefill)")
    parser.add_argument("--max-concurrent", type=int, default=32, help="the server's MAX_CONCURRENT")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="the server's --precision (auto, fp32, bf16, int8)")
    parser.add_argument("--engine", default="auto", help="the server's --engine (auto, process, thread)")
    parser.add_argument("--threads", type=int, help="decode threads for both servers (default: ours's default)")
    parser.add_argument("--llama-server", default=shutil.which("llama-server"), help="llama-server binary")
    parser.add_argument("--native-arch", help="target flags for our native step (WIKIMINI_NATIVE_ARCH), e.g. "
                        "-march=x86-64-v3 for its AVX2 kernel; give llama-server a build of the same features")
    args = parser.parse_args()
    if args.llama_server and not (os.path.isfile(args.llama_server) and os.access(args.llama_server, os.X_OK)):
        parser.error(f"--llama-server: {args.llama_server} is not an executable file")
    if args.native_arch:
        os.environ["WIKIMINI_NATIVE_ARCH"] = args.native_arch  # our server inherits it

    api = "openai" if args.llama_server else "generate"
    port = free_port()
    command = [sys.executable, "run_ui.py", "--port", str(port), "--max-concurrent", str(args.max_concurrent),
               "--max-queue", "64", "--device", args.device, "--precision", args.precision, "--engine", args.engine]
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    if args.threads:
        command += ["--threads", str(args.threads)]
    with running(command, f"http://127.0.0.1:{port}", "/health", "run_ui.py") as response:
        health = response.json()
        rows = measure(port, args, api)

    theirs, skipped = None, "llama-server not on PATH (build llama.cpp, or --llama-server BIN)"
    if args.llama_server:
        from src.model.checkpoint import resolve_checkpoint
        from src.model.gguf_export import export_gguf
        from src.server.settings import ServerSettings

        threads = args.threads or ServerSettings().decode_threads()
        with tempfile.TemporaryDirectory() as tmp:
            gguf = export_gguf(resolve_checkpoint(args.checkpoint)[0], Path(tmp) / "model.gguf", "q8_0")
            port = free_port()
            command = [args.llama_server, "-m", str(gguf), "--port", str(port), "-np", str(args.max_concurrent),
                       "-cb", "-t", str(threads), "-tb", str(threads),
                       "-c", str(args.max_concurrent * health["context_length"])]
            with running(command, f"http://127.0.0.1:{port}", "/health", "llama-server"):
                theirs = measure(port, args, "llama-server")
        skipped = None

    print(f"\nServer: {health['checkpoint']} ({health['parameters']:,} params) on {health['device']}, "
          f"precision {health.get('precision', '?')}, decode engine {health.get('engine', '?')}, "
          f"MAX_CONCURRENT {args.max_concurrent}, {args.max_tokens} max tokens per stream")
    print(cpu_summary() + (f"; llama-server: {args.llama_server}" if args.llama_server else ""))
    print(f"prompts: {'one per stream' if args.distinct_prompts else 'shared'}; at least {args.rounds} bursts and "
          f"{args.min_streams} streams per level, TTFT percentiles over all of them; API {'/v1/completions' if api != 'generate' else '/generate'}\n")
    if skipped:
        print(f"skipped llama-server: {skipped}\n")
    if theirs is None:
        print("| streams | completed | TTFT p50 ms | TTFT p95 ms | aggregate tok/s |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['streams']} | {r['completed']}/{r['started']} | {r['ttft_p50_ms']:.1f} | {r['ttft_p95_ms']:.1f} "
                  f"| {r['aggregate_tok_s']:.1f} |")
    else:
        print("| streams | ours tok/s | llama-server tok/s | ours / llama-server | ours TTFT p50 ms | "
              "llama-server TTFT p50 ms | ours TTFT p95 ms | llama-server TTFT p95 ms |")
        print("|---|---|---|---|---|---|---|---|")
        for r, t in zip(rows, theirs):
            print(f"| {r['streams']} | {r['aggregate_tok_s']:.0f} | {t['aggregate_tok_s']:.0f} | "
                  f"{r['aggregate_tok_s'] / t['aggregate_tok_s']:.2f}x | {r['ttft_p50_ms']:.1f} | {t['ttft_p50_ms']:.1f} | "
                  f"{r['ttft_p95_ms']:.1f} | {t['ttft_p95_ms']:.1f} |")
    print("\n" + json.dumps({"health": {k: health.get(k) for k in ("checkpoint", "device", "parameters", "precision", "engine")},
                             "distinct_prompts": args.distinct_prompts, "rows": rows, "llama_server_rows": theirs}, indent=1))


if __name__ == "__main__":
    main()
