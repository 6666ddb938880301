"""Server settings: flags override environment variables, which override defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from src.device import DEVICE_CHOICES, PRECISION_CHOICES
from src.server.guards import default_allowed_hosts

ENGINE_CHOICES = ("auto", "process", "thread")  # where the decode loop runs (src/server/engines.py)
STEP_TIMEOUT_S = 30.0  # a decode worker with work that sends nothing for this long is hung: killed, restarted


@dataclass(frozen=True)
class ServerSettings:
    checkpoint: str | None = None  # None: the usual resolution (env, best checkpoint, demo)
    tokenizer: str | None = None  # override the checkpoint's own tokenizer
    device: str = "auto"
    precision: str = "auto"  # weight format, see src.device.inference_precision
    host: str = "127.0.0.1"
    port: int = 7779
    max_concurrent: int = 32  # generations decoded together (batch slots)
    max_queue: int = 32  # requests allowed to wait for a slot; beyond that, 503
    access_log: bool = False  # uvicorn's per-request log lines
    threads: int | None = None  # CPU threads for decoding; None: all cores but one (the event loop's)
    engine: str = "auto"  # where decoding runs: "process", "thread", or "auto" (see service.make_engine)
    compile_decode: bool = False  # torch.compile the decode step in the background (run_ui.py: on)
    allowed_hosts: tuple[str, ...] = ("*",)  # Host headers answered; run_ui.py: the bound host's names
    step_timeout_s: float = STEP_TIMEOUT_S  # a decode process silent this long with work is killed and restarted
    read_timeout_s: float = 30.0  # time a client has to send a whole request once it has begun

    @property
    def decode_step(self) -> str:
        """The decode step to ask for (src/generation/steps.py): native where it runs, else
        compiled when compile_decode is on, else eager."""
        return "compile" if self.compile_decode else "auto"

    def decode_threads(self, on_cpu: bool = True) -> int | None:
        """CPU threads for the decode loop: `threads`, else all cores but the event loop's."""
        if not on_cpu:
            return self.threads
        return self.threads or max(1, (os.cpu_count() or 2) - 1)


def build_parser(env: dict[str, str]) -> argparse.ArgumentParser:
    """run_ui.py's flags; each falls back to its environment variable (read from `env`)."""
    parser = argparse.ArgumentParser(
        prog="run_ui.py",
        description="Serve the story generator: web UI at /, SSE API at POST /generate, "
        "OpenAI-compatible API at /v1, docs at /docs.",
    )
    parser.add_argument("--checkpoint", help="default: $CHECKPOINT_PATH, else the newest training run's best "
                        "checkpoint, else the bundled demo model")
    parser.add_argument("--tokenizer", default=env.get("TOKENIZER_PATH"), help="env TOKENIZER_PATH")
    parser.add_argument("--device", default=env.get("DEVICE", "auto"), choices=DEVICE_CHOICES, help="env DEVICE")
    parser.add_argument("--precision", default=env.get("PRECISION", "auto"), choices=PRECISION_CHOICES,
                        help="env PRECISION: auto, fp32, bf16 or int8 (CPU) weights")
    parser.add_argument("--host", default=env.get("HOST", "127.0.0.1"),
                        help="env HOST (default 127.0.0.1; use 0.0.0.0 to listen on all interfaces)")
    parser.add_argument("--port", type=int, default=None, help="env PORT (default 7779)")
    parser.add_argument("--max-concurrent", "--max_concurrent", dest="max_concurrent", type=int, default=None,
                        help="env MAX_CONCURRENT (default 32): streams decoded together in one batch")
    parser.add_argument("--max-queue", "--max_queue", dest="max_queue", type=int, default=None,
                        help="env MAX_QUEUE (default 32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="env THREADS: CPU threads for decoding (default: all cores but one, left to "
                        "the web server)")
    parser.add_argument("--engine", default=env.get("ENGINE", "auto"), choices=ENGINE_CHOICES,
                        help="env ENGINE: decode in a separate process (default on CPU: the event loop keeps "
                        "its own GIL) or on a thread of the server process (default on CUDA and Windows)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="env COMPILE=1/0: where the native step cannot run (bf16, GPU, no C++ compiler), "
                        "torch.compile the decode step in the background while serving eagerly (default on)")
    parser.add_argument("--allowed-host", dest="allowed_hosts", action="append", metavar="NAME",
                        help="env ALLOWED_HOSTS (comma-separated): a Host header to answer, repeatable; '*' answers "
                        "any. Default: the bound host's own names (loopback names for 127.0.0.1), any for 0.0.0.0")
    parser.add_argument("--step-timeout", type=float, default=None, metavar="SECONDS",
                        help=f"env STEP_TIMEOUT (default {STEP_TIMEOUT_S:g}): a decode process that has work but "
                        "answers nothing for this long is killed and restarted")
    parser.add_argument("--read-timeout", type=float, default=None, metavar="SECONDS",
                        help="env READ_TIMEOUT (default 30): time a client has to send a whole request (408 after)")
    parser.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    return parser


class _Reader:
    """Typed values from a flag, else its environment variable, else a default; a bad one is a usage error."""

    def __init__(self, parser: argparse.ArgumentParser, env: dict[str, str]) -> None:
        self.parser, self.env = parser, env

    def integer(self, flag_value: int | None, env_name: str, default: int | None) -> int | None:
        if flag_value is not None:
            return flag_value
        raw = self.env.get(env_name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            self.parser.error(f"{env_name} must be an integer, got {raw!r}")

    def seconds(self, flag_value: float | None, env_name: str, default: float) -> float:
        raw = flag_value if flag_value is not None else self.env.get(env_name) or default
        try:
            value = float(raw)
        except ValueError:
            self.parser.error(f"{env_name} must be a number of seconds, got {raw!r}")
        if not 0 < value < 86400:
            self.parser.error(f"{env_name.lower().replace('_', ' ')} must be between 0 and 86400 seconds, got {raw}")
        return value

    def switch(self, flag_value: bool | None, env_name: str, default: str) -> bool:
        if flag_value is not None:
            return flag_value
        raw = self.env.get(env_name, default).strip().lower()
        if raw not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            self.parser.error(f"{env_name} must be 1 or 0, got {raw!r}")
        return raw in ("1", "true", "yes", "on")


def parse_settings(argv: list[str] | None = None, env: dict[str, str] | None = None) -> ServerSettings:
    env = dict(os.environ if env is None else env)
    parser = build_parser(env)
    args = parser.parse_args(argv)
    read = _Reader(parser, env)
    port = read.integer(args.port, "PORT", 7779)
    max_concurrent = read.integer(args.max_concurrent, "MAX_CONCURRENT", 32)
    max_queue = read.integer(args.max_queue, "MAX_QUEUE", 32)
    if not 0 < port < 65536:
        parser.error(f"port must be 1-65535, got {port}")
    for name, value, choices in (("DEVICE", args.device, DEVICE_CHOICES), ("PRECISION", args.precision, PRECISION_CHOICES),
                                  ("ENGINE", args.engine, ENGINE_CHOICES)):
        if value not in choices:  # argparse checks choices on flags only, not on env defaults
            parser.error(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    compile_decode = read.switch(args.compile, "COMPILE", "1")
    step_timeout = read.seconds(args.step_timeout, "STEP_TIMEOUT", STEP_TIMEOUT_S)
    read_timeout = read.seconds(args.read_timeout, "READ_TIMEOUT", 30.0)
    hosts = args.allowed_hosts or [h for h in env.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
    allowed_hosts = tuple(h.strip() for h in hosts) or default_allowed_hosts(args.host)
    threads = read.integer(args.threads, "THREADS", None)
    if threads is not None and threads < 1:
        parser.error(f"threads must be >= 1, got {threads}")
    if max_concurrent < 1 or max_queue < 0:
        parser.error("max concurrent must be >= 1 and max queue >= 0")
    return ServerSettings(
        checkpoint=args.checkpoint or None, tokenizer=args.tokenizer or None, device=args.device,
        precision=args.precision, host=args.host, port=port, max_concurrent=max_concurrent,
        max_queue=max_queue, threads=threads, engine=args.engine, compile_decode=compile_decode,
        allowed_hosts=allowed_hosts, step_timeout_s=step_timeout, read_timeout_s=read_timeout,
        access_log=args.access_log,
    )
