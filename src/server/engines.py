"""Where the server's decode loop runs: in a process of its own, or on a thread beside the event loop.

Both engines take a Request on the event loop and return an asyncio.Queue that receives the
request's token ids, then `Finished(reason)`, or an exception if decoding failed.

`ProcessEngine` (the default on CPU) runs the DecodeLoop in a child process. On a thread, the
decode loop and the event loop share one GIL: every PyTorch op releases it, and while the event
loop is busy (a burst of requests arriving) the decode thread waits for it after each op, so
prefills and steps stretch out under load. A separate process has its own GIL; the event loop
only reads one small message per step from a pipe.

`ThreadEngine` keeps everything in one process: the default on CUDA and Windows.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Protocol

import torch
import torch.multiprocessing

from src.generation.batch import Request
from src.server.decode_loop import DecodeLoop, Finished, run_decode_loop
from src.model.transformer_block import WikiMiniModel
from src.server.settings import STEP_TIMEOUT_S

MAX_RESTARTS = 3  # decode-process restarts within RESTART_WINDOW_S; the next death stops generation
RESTART_WINDOW_S = 600.0
START_TIMEOUT_S = 120.0  # ...and one that has not come up this long after it was started

log = logging.getLogger("uvicorn.error")


class Engine(Protocol):
    """What the service asks of a decode engine; ThreadEngine and ProcessEngine are the two."""

    name: str  # "thread" or "process", for /health
    failure: str | None  # why generation is gone for good, or None
    restart_times: list[float]  # when the decode worker was restarted after dying

    @property
    def ready(self) -> bool: ...  # the decode loop takes requests

    @property
    def decode_step(self) -> str: ...  # the decode step's state (src/generation/steps.py)

    def start(self) -> None: ...

    def submit(self, request: Request) -> asyncio.Queue: ...  # its tokens, then Finished or an error

    def cancel(self, request: Request) -> None: ...

    def end_streams(self, message: str) -> None: ...  # every open stream ends with EngineUnavailable

    def close(self) -> None: ...


class DecodeError(RuntimeError):
    """Decoding failed in the decode process (the message names the original exception)."""


class EngineUnavailable(DecodeError):
    """The decode worker died, hung, is restarting or the server is shutting down: nothing was
    wrong with the request, and the same request can be retried shortly (HTTP 503)."""


class OpenStreams:
    """The requests an engine is decoding, each under a key, with the function that hands the
    request's items to its stream. A stream closes with its last item (Finished or an error)."""

    def __init__(self) -> None:
        self._streams: dict[int, tuple[Request, Callable[[object], None]]] = {}
        self._keys: dict[Request, int] = {}
        self._next_key = itertools.count()

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, request: Request, deliver: Callable[[object], None]) -> int:
        key = next(self._next_key)
        self._streams[key] = (request, deliver)
        self._keys[request] = key
        return key

    def key(self, request: Request) -> int | None:
        return self._keys.get(request)

    def keys(self) -> list[int]:
        return list(self._streams)

    def deliver(self, key: int, item: object) -> None:
        """Hand `item` to the stream under `key` (if still open); a last item closes it."""
        last = isinstance(item, (Finished, BaseException))
        stream = self._streams.pop(key, None) if last else self._streams.get(key)
        if stream is None:
            return
        if last:
            self._keys.pop(stream[0], None)
        stream[1](item)

    def end_all(self, error: BaseException) -> None:
        """Close every open stream with `error`."""
        for key in self.keys():
            self.deliver(key, error)


class ThreadToLoopRelay:
    """Hands items from the decode thread to asyncio queues, waking the event loop once per
    batch of items rather than once per item (a step makes one token for every stream)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.items: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.wake_pending = False

    def sender(self, queue: asyncio.Queue):
        self.loop = asyncio.get_running_loop()

        def send(item) -> None:
            self.items.append((queue, item))
            with self.lock:
                if self.wake_pending:
                    return
                self.wake_pending = True
            self.loop.call_soon_threadsafe(self._deliver)

        return send

    def _deliver(self) -> None:
        with self.lock:
            self.wake_pending = False
        while self.items:
            queue, item = self.items.popleft()
            queue.put_nowait(item)


class ThreadEngine:
    """Runs the decode loop on a thread of this process, started with the first request."""

    name = "thread"

    def __init__(self, model: WikiMiniModel, eos_id: int | None, slots: int, decode: str = "auto") -> None:
        self.loop = DecodeLoop(model, eos_id, slots, decode)
        self.relay = ThreadToLoopRelay()
        self.failure: str | None = None
        self.restart_times: list[float] = []  # a thread is never restarted; here for /health's sake
        self.streams = OpenStreams()
        self._inbox: collections.deque[tuple[str, int | None, Request | None]] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the decode thread (which first compiles its step, if asked to); without this
        call it starts with the first request."""
        with self._wake:
            self._start_thread()

    def _start_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=run_decode_loop, args=(self.loop, self._receive, self._deliver),
                                            name="decode-loop", daemon=True)
            self._thread.start()

    @property
    def ready(self) -> bool:
        return True  # the loop is built with the engine; requests wait in the inbox meanwhile

    @property
    def decode_step(self) -> str:
        return self.loop.batch.compile_state

    def submit(self, request: Request) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        with self._wake:
            if self._closed:
                raise EngineUnavailable("the server is shutting down")
            key = self.streams.open(request, self.relay.sender(queue))
            self._inbox.append(("submit", key, request))
            self._start_thread()
            self._wake.notify()
        return queue

    def cancel(self, request: Request) -> None:
        """Stop a request at the next step (a client went away); harmless once it is done."""
        with self._wake:
            key = self.streams.key(request)
            if key is not None:
                self._inbox.append(("cancel", key, request))
                self._wake.notify()

    def end_streams(self, message: str) -> None:
        """End every open stream now with EngineUnavailable(message) (the server is stopping)."""
        with self._wake:
            self._closed = True
            self._inbox.append(("cancel_all", None, None))
            self._wake.notify()
            self.streams.end_all(EngineUnavailable(message))

    def close(self) -> None:
        """Stop the decode thread; streams still open end with an error, as ProcessEngine's do."""
        self.end_streams("the server is shutting down")
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _receive(self, timeout: float | None) -> bool:
        """On the decode thread: apply what arrived within `timeout`; False once closed."""
        with self._wake:
            if not self._inbox and not self._closed and timeout != 0:
                self._wake.wait(timeout)
            messages = list(self._inbox)
            self._inbox.clear()
            closed = self._closed
        for kind, key, request in messages:
            if kind == "submit":
                self.loop.add(key, request)
            elif kind == "cancel":
                self._deliver(self.loop.cancel(key))
            else:
                for open_key in list(self.loop.by_key):
                    self.loop.cancel(open_key)
        return not closed

    def _deliver(self, events: list) -> None:
        with self._wake:
            for key, item in events:
                self.streams.deliver(key, item)


class ProcessEngine:
    """Runs the DecodeLoop in a child process (spawned: safe with PyTorch's thread pools and
    CUDA). The model's tensors reach the child through shared memory, without pickling their
    data; the child then decodes from its own copy (see run_decode_process).

    A child that dies (its pipe closes) or hangs (has work but sends nothing for
    `step_timeout_s`; it is then killed) fails its in-flight streams with EngineUnavailable and
    is restarted, up to `max_restarts` times within RESTART_WINDOW_S; the next death leaves the
    engine failed (`failure` says why, /health answers 503).
    """

    name = "process"

    def __init__(self, model: WikiMiniModel, eos_id: int | None, slots: int, threads: int | None = None,
                 max_restarts: int = MAX_RESTARTS, decode: str = "auto",
                 step_timeout_s: float = STEP_TIMEOUT_S) -> None:
        self._child_args = (model, eos_id, slots, threads, decode)
        self.max_restarts = max_restarts
        self.step_timeout_s = step_timeout_s
        self.restart_times: list[float] = []  # when the decode process was restarted after dying
        self.ready = False  # the child has built its decode loop and reads requests
        self.decode_step = "starting"  # the child reports its decode step once it is up
        self._process = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task | None = None
        self._last_progress = 0.0  # monotonic time of the child's last message, or of the first request
        self.streams = OpenStreams()
        self._closing = False
        self.failure: str | None = None  # set once the decode process is gone for good

    def start(self) -> None:
        """Spawn the decode process (once); call on the event loop that will read its tokens."""
        if self._process is not None:
            return
        self.failure = None  # a restart after close()
        self._closing = False
        self.ready = False
        context = torch.multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self._process = context.Process(target=run_decode_process, args=(child_end, *self._child_args),
                                        name="decode-loop", daemon=True)
        self._process.start()
        child_end.close()
        self._conn = parent_end
        self._last_progress = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(parent_end.fileno(), self._on_readable)
        if self._watchdog is None:
            self._watchdog = self._loop.create_task(self._watch())

    def submit(self, request: Request) -> asyncio.Queue:
        if self._closing:
            raise EngineUnavailable("the server is shutting down")
        if self.failure is not None:
            raise EngineUnavailable(self.failure)
        self.start()
        if not self.streams:
            self._last_progress = time.monotonic()  # the watchdog's clock starts with the work
        queue: asyncio.Queue = asyncio.Queue()
        key = self.streams.open(request, queue.put_nowait)
        self._send(("submit", key, request))
        return queue

    def cancel(self, request: Request) -> None:
        """Stop a request (a client went away); harmless once it is done or the process is gone."""
        key = self.streams.key(request)
        if key is not None and self.failure is None:
            try:
                self._send(("cancel", key))
            except DecodeError:
                pass  # _send has already failed every open stream

    def end_streams(self, message: str) -> None:
        """End every open stream now with EngineUnavailable(message), and refuse new ones (the
        server is stopping); the child drops their rows."""
        self._closing = True
        for key in self.streams.keys():
            self.streams.deliver(key, EngineUnavailable(message))
            if self.failure is None and self._conn is not None:
                try:
                    self._conn.send(("cancel", key))
                except OSError:
                    pass

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._process is None:
            return
        alive = self.failure is None
        self._fail("the server is shutting down")  # streams still open end with this error
        if alive:
            try:
                self._conn.send(("close",))
            except OSError:
                pass
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=2)
        if self._process.is_alive():  # stopped or hung: SIGTERM waits, SIGKILL does not
            self._process.kill()
            self._process.join(timeout=5)
        self._conn.close()
        self._process = self._conn = None

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except OSError as exc:
            self._on_child_exit()
            raise EngineUnavailable(f"the decode process is gone ({exc})") from None

    def _on_readable(self) -> None:
        """Deliver every message waiting on the pipe: one per decode step, each a list of
        (key, token id | Finished | error message), or ("state", decode step) from the child."""
        try:
            while self._conn.poll():
                message = self._conn.recv()
                self._last_progress = time.monotonic()
                if isinstance(message, tuple):  # ("state", decode_step): the child is up
                    self.ready, self.decode_step = True, message[1]
                    continue
                for key, item in message:  # an error arrives as its message
                    self.streams.deliver(key, DecodeError(item) if isinstance(item, str) else item)
        except (EOFError, OSError):
            self._on_child_exit()

    async def _watch(self) -> None:
        """Kill a child that has work but has sent nothing for step_timeout_s (stopped, deadlocked,
        swapping), or START_TIMEOUT_S while it starts; _on_child_exit then fails its streams and
        restarts it."""
        while True:
            await asyncio.sleep(min(1.0, self.step_timeout_s / 4))
            silent = time.monotonic() - self._last_progress
            limit = self.step_timeout_s if self.ready else max(self.step_timeout_s, START_TIMEOUT_S)
            if self._process is not None and self.failure is None and self.streams and silent > limit:
                log.error("the decode process has had work but sent nothing for %.0f s; killing it", silent)
                self._process.kill()
                self._on_child_exit(f"the decode process stopped responding (nothing for {silent:.0f} s) and was killed")

    def _on_child_exit(self, message: str | None = None) -> None:
        """Fail the streams it was decoding, then start a new decode process, within a limit."""
        self._process.join(timeout=1)
        message = message or f"the decode process exited (exit code {self._process.exitcode})"
        in_flight = len(self.streams)
        now = time.monotonic()
        self.restart_times = [t for t in self.restart_times if now - t < RESTART_WINDOW_S]
        if len(self.restart_times) >= self.max_restarts:
            self._fail(f"{message}; not restarted: it failed {len(self.restart_times) + 1} times in "
                       f"{RESTART_WINDOW_S:.0f} s")
            log.error("%s; %d in-flight request(s) failed; not restarting (%d failures in %.0f s)",
                      message, in_flight, len(self.restart_times) + 1, RESTART_WINDOW_S)
            return
        self._fail(f"{message} while decoding this request; the server restarted it, retry the request")
        self.restart_times.append(now)
        log.warning("%s; %d in-flight request(s) failed; restarting it (restart %d of %d allowed in %.0f s)",
                    message, in_flight, len(self.restart_times), self.max_restarts, RESTART_WINDOW_S)
        self._conn.close()
        self._process = self._conn = None
        self.start()

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message
        self.ready = False
        if self._loop is not None and self._conn is not None:
            self._loop.remove_reader(self._conn.fileno())
        self.streams.end_all(EngineUnavailable(message))


def run_decode_process(conn: Connection, model: WikiMiniModel, eos_id: int | None, slots: int,
                       threads: int | None, decode: str = "auto") -> None:
    """The child's main: read submit/cancel messages from the pipe, send each admission's and
    each step's events back as one message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which then closes us
    if threads is not None:
        torch.set_num_threads(threads)
    # The model arrives in shared memory; decoding from a private copy is faster per step
    # step here (shared-memory pages are not backed by transparent huge pages).
    loop = DecodeLoop(copy.deepcopy(model), eos_id, slots, decode)
    del model

    def emit(events: list) -> None:
        if events:
            conn.send([(key, item if isinstance(item, (int, Finished)) else f"{type(item).__name__}: {item}")
                       for key, item in events])

    def report(decode_step: str) -> None:
        conn.send(("state", decode_step))

    def receive(timeout: float | None) -> bool:
        if not conn.poll(timeout):
            return True
        while True:
            message = conn.recv()
            if message[0] == "submit":
                loop.add(*message[1:])
            elif message[0] == "cancel":
                emit(loop.cancel(message[1]))
            else:
                return False
            if not conn.poll():
                return True

    try:
        run_decode_loop(loop, receive, emit, report)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the server went away
