"""The server's decode loop: one DecodeBatch holds every active request and advances them together.

`DecodeLoop` holds the state: requests are added under a key; `admit` prefills what fits and
`step` decodes one token per row, each returning (key, item) events, where an item is a token
id, END once the request has left the batch, or an exception if decoding failed.

`run_decode_loop` drives it, the same whether it runs on a thread (`BatchScheduler`) or in a
process of its own (`src/server/engines.py`); only how requests arrive and events leave differs.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable

from src.generation.batch import DecodeBatch, Request
from src.model.transformer_block import WikiMiniModel

END = object()
Event = tuple[Hashable, object]
BURST_QUIET_S = 0.001  # after an admission, keep admitting while requests arrive this often...
BURST_WINDOW_S = 0.015  # ...for at most this long before the next decode step
PREFIX_CACHE_BYTES = 32 * 2**20  # recently prefilled prompts kept for reuse (see PrefixCache)


class DecodeLoop:
    def __init__(self, model: WikiMiniModel, eos_id: int | None, slots: int) -> None:
        self.batch = DecodeBatch(model, eos_id, slots, prefix_cache_bytes=PREFIX_CACHE_BYTES)
        self.pending: list[tuple[Hashable, Request]] = []
        self.keys: dict[Request, Hashable] = {}  # requests in the batch
        self.by_key: dict[Hashable, Request] = {}  # requests pending or in the batch
        self.arrivals = 0

    @property
    def idle(self) -> bool:
        return not self.pending and not self.batch.requests

    def add(self, key: Hashable, request: Request) -> None:
        self.by_key[key] = request
        self.pending.append((key, request))
        self.arrivals += 1

    def cancel(self, key: Hashable) -> list[Event]:
        """Stop a request: at once if it is still waiting (its END is returned), else at the next step."""
        request = self.by_key.get(key)
        if request is None:
            return []
        request.cancelled = True
        for index, (pending_key, _) in enumerate(self.pending):
            if pending_key == key:
                del self.pending[index]
                del self.by_key[key]
                request.finish_reason = "cancelled"
                return [(key, END)]
        return []

    def admit(self) -> list[Event]:
        """Prefill the waiting requests that fit into free rows, oldest first. Their first tokens
        come from the prefill, so they go out before the next step."""
        joining = self.pending[:self.batch.free_slots]
        del self.pending[:len(joining)]
        for key, request in joining:
            self.keys[request] = key
        return self._guarded(lambda: self.batch.admit([request for _, request in joining]))

    def step(self) -> list[Event]:
        """Decode one token for every row."""
        return self._guarded(self.batch.step)

    def _guarded(self, decode: Callable[[], list[tuple[Request, int]]]) -> list[Event]:
        try:
            events: list[Event] = [(self.keys[request], token) for request, token in decode()]
        except Exception as exc:  # noqa: BLE001 - every request in flight is told, then the batch restarts
            events = [(key, exc) for key in self.keys.values()]
            for key in self.keys.values():
                self.by_key.pop(key, None)
            self.keys.clear()
            self.batch.clear()
            return events
        still_running = set(self.batch.requests)
        for request in [r for r in self.keys if r not in still_running]:
            key = self.keys.pop(request)
            self.by_key.pop(key, None)
            events.append((key, END))
        return events


def run_decode_loop(loop: DecodeLoop, receive: Callable[[float | None], bool],
                    emit: Callable[[list[Event]], None]) -> None:
    """Admit and decode until `receive` reports the loop closed.

    `receive(timeout)` applies the requests and cancellations that arrive within `timeout`
    seconds (None: wait for one) to `loop` and returns False once the loop should stop; `emit`
    sends a list of events on.

    New requests are admitted before the next step. While a burst keeps arriving (another
    request within BURST_QUIET_S), admission continues and the step waits, for up to
    BURST_WINDOW_S: a stream's first token then waits for its own prefill only, not for the
    other streams' decode steps.
    """
    while receive(None if loop.idle else 0):
        if loop.pending and loop.batch.free_slots:
            deadline = time.monotonic() + BURST_WINDOW_S
            while True:
                emit(loop.admit())
                arrived = loop.arrivals
                if time.monotonic() >= deadline or not loop.batch.free_slots:
                    break
                if not receive(BURST_QUIET_S):
                    return
                if loop.arrivals == arrived:
                    break
        if loop.batch.requests:
            emit(loop.step())


Callback = Callable[[object], None]


class BatchScheduler:
    """Runs the decode loop on a thread of this process. `submit` hands over a request and a
    callback, which receives the request's items on the decode thread."""

    def __init__(self, model: WikiMiniModel, eos_id: int | None, slots: int) -> None:
        self.loop = DecodeLoop(model, eos_id, slots)
        self.batch = self.loop.batch
        self._callbacks: dict[int, Callback] = {}
        self._inbox: collections.deque[tuple] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, request: Request, callback: Callback) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the decode loop has been shut down")
            self._callbacks[id(request)] = callback
            self._inbox.append(("submit", request))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="decode-loop", daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self, request: Request) -> None:
        """Stop a request at the next step (a client went away); harmless once it is done."""
        with self._wake:
            self._inbox.append(("cancel", request))
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        run_decode_loop(self.loop, self._receive, self._deliver)

    def _receive(self, timeout: float | None) -> bool:
        with self._wake:
            if not self._inbox and not self._closed and timeout != 0:
                self._wake.wait(timeout)
            messages = list(self._inbox)
            self._inbox.clear()
            closed = self._closed
        for kind, request in messages:
            if kind == "submit":
                self.loop.add(id(request), request)
            else:
                self._deliver(self.loop.cancel(id(request)))
        return not closed

    def _deliver(self, events: list[Event]) -> None:
        for key, item in events:
            done = item is END or isinstance(item, BaseException)
            callback = self._callbacks.pop(key, None) if done else self._callbacks.get(key)
            if callback is not None:
                callback(item)
