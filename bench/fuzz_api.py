#!/usr/bin/env python3
"""Hostile clients against a live `run_ui.py`: schemathesis, hand-made bad bodies, and a 20 MB body
sent while stories stream. Prints what came back; exit status 1 if any reply was a 5xx or broke
the documented error shape.

    pip install schemathesis
    python -m bench.fuzz_api                          # the bundled demo model
    python -m bench.fuzz_api --checkpoint CKPT --max-examples 300

1. `schemathesis run /openapi.json --checks all`: every check it has, on every operation.
2. Hand-made cases: NaN/Infinity, lone surrogates, wrong types, invalid UTF-8/latin-1/binary
   bodies, deep nesting, wrong content types, oversized bodies. Each reply must be a 4xx in the
   documented JSON shape ({"error": "..."} on /generate, OpenAI's {"error": {"message": ...}} on
   /v1), short (no echo of the input), and the server must still answer /health.
3. While 4 stories stream, 20 MB bodies are sent to both endpoints (with Content-Length and
   chunked) and /health is polled every 20 ms: its latency, the rejection time, and the gap
   between tokens of the live streams before and during the attack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
NESTED = b"[" * 100_000 + b"]" * 100_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(checkpoint: str | None, port: int) -> subprocess.Popen:
    command = [sys.executable, "run_ui.py", "--port", str(port)] + (["--checkpoint", checkpoint] if checkpoint else [])
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
        if process.poll() is not None:
            raise SystemExit(f"run_ui.py exited: {process.stderr.read().decode()[-500:]}")
    raise SystemExit("run_ui.py did not answer /health within 120 s")


def run_schemathesis(base: str, max_examples: int) -> dict:
    exe = shutil.which("schemathesis") or shutil.which("st")
    if exe is None:
        return {"skipped": "schemathesis is not installed (pip install schemathesis)"}
    started = time.perf_counter()
    proc = subprocess.run([exe, "run", f"{base}/openapi.json", "--checks", "all", "--max-examples",
                           str(max_examples), "--workers", "1"], capture_output=True, text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    generated = re.search(r"(\d+) generated", out)
    failures = dict((name.strip(), int(n)) for name, n in re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", out))
    statuses = re.findall(r"^\[(\d{3})\]", out, flags=re.M)
    return {"cases": int(generated.group(1)) if generated else None, "failures": failures,
            "5xx": sum(1 for s in statuses if s.startswith("5")), "seconds": round(time.perf_counter() - started, 1),
            "version": subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()}


def hostile_cases() -> list[tuple[str, str, bytes, str]]:
    """(name, path, body, content type)."""
    j = "application/json"
    cases = []
    for path in ("/generate", "/v1/completions"):
        for literal in ("NaN", "Infinity", "-Infinity", '"nan"', "1e999"):
            cases.append((f"temperature {literal}", path, f'{{"prompt": "Once", "temperature": {literal}}}'.encode(), j))
        for field, value in (("max_tokens", "true"), ("max_tokens", '"5"'), ("seed", "false"), ("seed", "-1"),
                             ("seed", "1e300"), ("top_p", "[]"), ("prompt", "null"), ("prompt", "{}"),
                             ("prompt", "[]"), ("prompt", '["a", "b"]'), ("stop", '{"a": 1}')):
            cases.append((f"{field} {value}", path, f'{{"prompt": "Once", "{field}": {value}}}'.encode()
                          if field != "prompt" else f'{{"prompt": {value}}}'.encode(), j))
        cases += [
            ("lone surrogate prompt", path, b'{"prompt": "Once \\ud800"}', j),
            ("lone surrogate stop", path, b'{"prompt": "Once", "stop": "\\udfff"}', j),
            ("latin-1 body", path, b'{"prompt": "caf\xe9"}', j),
            ("invalid UTF-8", path, b'{"prompt": "\xff\xfe\xfd"}', j),
            ("binary body", path, os.urandom(4096), j),
            ("deeply nested", path, NESTED, j),
            ("truncated JSON", path, b'{"prompt": "Once"', j),
            ("empty body", path, b"", j),
            ("text/plain", path, b'{"prompt": "Once"}', "text/plain"),
            ("multipart", path, b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x"),
            ("unknown field", path, b'{"prompt": "Once", "evil": 1}', j),
            ("huge prompt, in limit of bytes", path, json.dumps({"prompt": "a" * 200_000}).encode(), j),
        ]
        if path == "/generate":
            cases.append(("preset surrogate", path, b'{"prompt": "Once", "preset": "\\ud800"}', j))
            cases.append(("preset unknown", path, b'{"prompt": "Once", "preset": "wild"}', j))
    return cases


def check_reply(path: str, response: httpx.Response) -> str | None:
    """What is wrong with an error reply, or None."""
    if response.status_code >= 500:
        return f"{response.status_code}"
    if response.status_code < 400:
        return f"accepted ({response.status_code})"
    if len(response.content) > 4096:
        return f"{len(response.content)}-byte reply (echo?)"
    try:
        body = response.json()
    except ValueError:
        return "not JSON"
    message = body.get("error", {}).get("message") if path.startswith("/v1/") else body.get("error")
    return None if isinstance(message, str) and message else f"shape {list(body)}"


def run_hostile(base: str) -> dict:
    problems, statuses = [], {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for name, path, body, content_type in hostile_cases():
            response = client.post(path, content=body, headers={"content-type": content_type})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            problem = check_reply(path, response)
            if problem:
                problems.append(f"{path} {name}: {problem}")
        alive = client.get("/health").status_code == 200
    return {"cases": sum(statuses.values()), "statuses": statuses, "problems": problems, "alive": alive}


async def stream_story(client: httpx.AsyncClient, stamps: list[float]) -> None:
    """Stories back to back (a gap is only counted inside one story), until cancelled."""
    seed = 0
    while True:
        seed += 1
        body = {"prompt": "Once upon a time", "max_tokens": 1000, "seed": seed, "temperature": 0.8}
        async with client.stream("POST", "/generate", json=body) as response:
            story: list[float] = []
            stamps.append(story)
            async for line in response.aiter_lines():
                if line.startswith("data:") and '"token"' in line:
                    story.append(time.perf_counter())


def big_body(port: int, path: str, chunked: bool) -> tuple[str, float]:
    """Send a 20 MB JSON body over a plain socket (in a thread, so this client's event loop keeps
    measuring) and return the server's status line and how long it took to arrive."""
    size = 20 * 1024 * 1024
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {size}\r\n") + "\r\n").encode()
    block = b"x" * 65536
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        reply, sent = b"", 0
        while sent < size and b"\r\n" not in reply:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                sent += len(block)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                time.sleep(0.001)
            try:
                reply += sock.recv(4096)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
        sock.setblocking(True)
        while b"\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    status = reply.split(b"\r\n", 1)[0].decode(errors="replace") or "(connection closed)"
    return status, time.perf_counter() - started


async def attack(base: str, port: int, duration: float = 5.0) -> dict:
    stamps: list[list[list[float]]] = [[] for _ in range(4)]
    health_ms: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        streams = [asyncio.create_task(stream_story(client, s)) for s in stamps]
        await asyncio.sleep(2.0)
        quiet_until = time.perf_counter()
        stop = asyncio.Event()

        async def poll():
            async with httpx.AsyncClient(base_url=base, timeout=10) as health:
                while not stop.is_set():
                    t = time.perf_counter()
                    await health.get("/health")
                    health_ms.append((time.perf_counter() - t) * 1e3)
                    await asyncio.sleep(0.02)

        poller = asyncio.create_task(poll())
        started = time.perf_counter()
        rejections = []
        while time.perf_counter() - started < duration:
            for path in ("/generate", "/v1/completions"):
                for chunked in (False, True):
                    rejections.append((path, chunked, *await asyncio.to_thread(big_body, port, path, chunked)))
        attack_end = time.perf_counter()
        stop.set()
        await poller
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)

    def gaps(lo: float, hi: float) -> list[float]:
        return [(b - a) * 1e3 for stream in stamps for s in stream for a, b in zip(s, s[1:]) if lo <= a and b <= hi]

    before, during = gaps(0, quiet_until), gaps(started, attack_end)
    pct = lambda xs, q: statistics.quantiles(xs, n=100)[q - 1] if len(xs) >= 2 else float("nan")
    return {"rejections": rejections, "health_p50": pct(health_ms, 50), "health_p99": pct(health_ms, 99),
            "health_n": len(health_ms), "gap_before_p50": pct(before, 50), "gap_during_p50": pct(during, 50),
            "gap_during_p99": pct(during, 99), "attack_s": attack_end - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: what run_ui.py picks (the bundled demo model)")
    parser.add_argument("--max-examples", type=int, default=100, help="schemathesis examples per operation")
    parser.add_argument("--url", help="test a server that is already running instead of starting one")
    args = parser.parse_args()
    port = free_port()
    server = None if args.url else start_server(args.checkpoint, port)
    base = args.url or f"http://127.0.0.1:{port}"
    try:
        fuzz = run_schemathesis(base, args.max_examples)
        hostile = run_hostile(base)
        live = asyncio.run(attack(base, int(base.rsplit(":", 1)[1])))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    bad = False
    print("| part | result |\n|---|---|")
    if "skipped" in fuzz:
        print(f"| schemathesis | skipped: {fuzz['skipped']} |")
    else:
        failures = ", ".join(f"{k}: {v}" for k, v in fuzz["failures"].items()) or "none"
        print(f"| schemathesis ({fuzz['version']}, --checks all, {args.max_examples} examples) | {fuzz['cases']} cases, "
              f"{fuzz['5xx']} replies 5xx, failed checks: {failures} ({fuzz['seconds']} s) |")
        bad |= fuzz["5xx"] > 0 or any(not k.startswith("ST202") for k in fuzz["failures"])
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(hostile["statuses"].items()))
    print(f"| hand-made bad requests | {hostile['cases']} cases; statuses {statuses}; "
          f"{len(hostile['problems'])} problems; /health after: {'ok' if hostile['alive'] else 'DOWN'} |")
    for problem in hostile["problems"]:
        print(f"|   problem | {problem} |")
    bad |= bool(hostile["problems"]) or not hostile["alive"]
    for path in ("/generate", "/v1/completions"):
        for chunked in (False, True):
            rows = [(status, seconds) for p, c, status, seconds in live["rejections"] if (p, c) == (path, chunked)]
            replies = sorted({status for status, _ in rows})
            print(f"| 20 MB body to {path} ({'chunked' if chunked else 'Content-Length'}), x{len(rows)} | "
                  f"{'; '.join(replies)}; answered in {max(s for _, s in rows) * 1e3:.0f} ms at most |")
            bad |= any(" 413 " not in status + " " for status, _ in rows)
    print(f"| /health while 20 MB bodies are refused ({live['health_n']} polls, {live['attack_s']:.2f} s) | "
          f"p50 {live['health_p50']:.1f} ms, p99 {live['health_p99']:.1f} ms |")
    print(f"| gap between tokens of 4 live streams | before p50 {live['gap_before_p50']:.1f} ms; during p50 "
          f"{live['gap_during_p50']:.1f} ms, p99 {live['gap_during_p99']:.1f} ms |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
