#!/usr/bin/env python3
"""Server under load: time to first token (p50/p95) and aggregate tokens/s at 1, 8 and 32
concurrent streams against a live `run_ui.py` on a free loopback port.

    python bench/bench_server.py [--checkpoint CKPT] [--streams 1 8 32] [--max-tokens 100]

Uses the bundled demo model by default; `--distinct-prompts` gives every stream a prompt never
sent before (the default shares one, which the server's prefix cache serves after its first
prefill). Prints a Markdown table and JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

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


async def one_stream(host: str, port: int, seed: int, max_tokens: int, prompt: str = PROMPT) -> tuple[float, int]:
    """(seconds to the first token event, tokens generated) for one /generate stream.

    A bare asyncio HTTP/1.1 client (chunked transfer + SSE parsing by hand): on a 2-core machine
    that also runs the server, a full client library's own per-request work would be counted
    as server latency.
    """
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "seed": seed}).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /generate HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Accept: text/event-stream\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (host.encode(), len(body), body))
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"HTTP error: {status.decode().strip()}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        chunked |= line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
    first, tokens, buffer = None, 0, b""
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
                    return (first if first is not None else float("nan")), tokens
                event = json.loads(payload)
                if "token" in event and first is None:
                    first = time.perf_counter() - start
                if event.get("done"):
                    tokens = event["tokens"]
                if "error" in event:
                    raise RuntimeError(event["error"])
    finally:
        writer.close()
    return (first if first is not None else float("nan")), tokens


async def burst(port: int, streams: int, max_tokens: int, distinct: bool) -> tuple[list[float], int, float]:
    """(TTFTs in ms, tokens, wall seconds) of `streams` streams started together."""
    start = time.perf_counter()
    prompts = [distinct_prompt(next(PROMPT_NUMBERS)) if distinct else PROMPT for _ in range(streams)]
    results = await asyncio.gather(*(one_stream("127.0.0.1", port, seed, max_tokens, prompt)
                                     for seed, prompt in enumerate(prompts)))
    return [r[0] * 1000 for r in results], sum(r[1] for r in results), time.perf_counter() - start


def load_level(port: int, streams: int, max_tokens: int, rounds: int, distinct: bool) -> dict:
    """`rounds` bursts (a pause between them); TTFT percentiles over every stream of every burst."""
    ttfts, tokens, wall, completed = [], 0, 0.0, 0
    for _ in range(rounds):
        times, n_tokens, seconds = asyncio.run(burst(port, streams, max_tokens, distinct))
        ttfts += times
        tokens += n_tokens
        wall += seconds
        completed += sum(t == t for t in times)  # NaN: no token arrived
        time.sleep(0.3)
    return {"streams": streams, "rounds": rounds, "completed": completed, "started": streams * rounds,
            "ttft_p50_ms": statistics.median(ttfts), "ttft_p95_ms": percentile(ttfts, 0.95),
            "tokens": tokens, "aggregate_tok_s": tokens / wall, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: the usual resolution (bundled demo model)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="bursts per level; percentiles pool them")
    parser.add_argument("--distinct-prompts", action="store_true",
                        help="a new prompt for every stream, never repeated (default: one shared prompt, as "
                        "from the web UI, which the server's prefix cache serves after its first prefill)")
    parser.add_argument("--max-concurrent", type=int, default=32, help="the server's MAX_CONCURRENT")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="the server's --precision (auto, fp32, bf16, int8)")
    parser.add_argument("--engine", default="auto", help="the server's --engine (auto, process, thread)")
    args = parser.parse_args()

    port = free_port()
    command = [sys.executable, "run_ui.py", "--port", str(port), "--max-concurrent", str(args.max_concurrent),
               "--max-queue", "64", "--device", args.device, "--precision", args.precision, "--engine", args.engine]
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                sys.exit(f"run_ui.py exited: {server.stderr.read().decode()[-2000:]}")
            try:
                health = httpx.get(f"{url}/health", timeout=2).json()
                break
            except httpx.HTTPError:
                if time.time() > deadline:
                    sys.exit("run_ui.py did not start within 120 s")
                time.sleep(0.3)
        load_level(port, 2, 10, 1, args.distinct_prompts)  # warm-up
        rows = [load_level(port, n, args.max_tokens, args.rounds, args.distinct_prompts) for n in args.streams]
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"\nServer: {health['checkpoint']} ({health['parameters']:,} params) on {health['device']}, "
          f"precision {health.get('precision', '?')}, decode engine {health.get('engine', '?')}, "
          f"MAX_CONCURRENT {args.max_concurrent}, {args.max_tokens} max tokens per stream, {os.cpu_count()} CPU cores\n")
    print(f"prompts: {'one per stream' if args.distinct_prompts else 'shared'}; {args.rounds} bursts per level, "
          "TTFT percentiles over all of them\n")
    print("| streams | completed | TTFT p50 ms | TTFT p95 ms | aggregate tok/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['streams']} | {r['completed']}/{r['started']} | {r['ttft_p50_ms']:.1f} | {r['ttft_p95_ms']:.1f} "
              f"| {r['aggregate_tok_s']:.1f} |")
    print("\n" + json.dumps({"health": {k: health.get(k) for k in ("checkpoint", "device", "parameters", "precision", "engine")}, "distinct_prompts": args.distinct_prompts, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
