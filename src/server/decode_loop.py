"""The server's decode loop: one DecodeBatch holds every active request and advances them together.

`DecodeLoop` holds the state: requests are added under a key; `admit` prefills what fits and
`step` decodes a token per row (a few when the rows are few), each returning (key, item) events, where an item is a token
id, `Finished(reason)` once the request has left the batch, or an exception if decoding failed.

`run_decode_loop` drives it, the same whether it runs on a thread or in a process of its own
(`src/server/engines.py`); only how requests arrive and events leave differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from src.generation.batch import DecodeBatch, Request
from src.model.transformer_block import WikiMiniModel


@dataclass(frozen=True)
class Finished:
    """A request's last item: it left the batch, for `reason` ("eos", "length" or "cancelled")."""

    reason: str


Event = tuple[Hashable, object]
BURST_QUIET_S = 0.001  # after an admission, keep admitting while requests arrive this often...
BURST_WINDOW_S = 0.015  # ...for at most this long before the next decode step
COMPILE_POLL_S = 0.5  # while idle and compiling, how often to look whether the compile is done
PREFIX_CACHE_BYTES = 32 * 2**20  # recently prefilled prompts kept for reuse (see PrefixCache)
# Row-tokens per decode call: a lone stream runs this many steps in one native call (one pipe
# message), 2 streams 8, 16 or more streams one step: fewer trips through Python and the pipe,
# while a request that arrives meanwhile waits at most one call for its prefill.
ROW_TOKENS_PER_CALL = 16


class DecodeLoop:
    def __init__(self, model: WikiMiniModel, eos_id: int | None, slots: int, decode: str = "auto") -> None:
        self.batch = DecodeBatch(model, eos_id, slots, prefix_cache_bytes=PREFIX_CACHE_BYTES, decode=decode)
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
        """Stop a request: at once if it is still waiting (its Finished is returned), else at the next step."""
        request = self.by_key.get(key)
        if request is None:
            return []
        request.cancelled = True
        for index, (pending_key, _) in enumerate(self.pending):
            if pending_key == key:
                del self.pending[index]
                del self.by_key[key]
                request.finish_reason = "cancelled"
                return [(key, Finished("cancelled"))]
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
        """Decode a token for every row: a few per row where the rows are few (ROW_TOKENS_PER_CALL)."""
        steps = max(1, ROW_TOKENS_PER_CALL // max(1, len(self.batch.requests)))
        return self._guarded(lambda: self.batch.step(steps))

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
            events.append((key, Finished(request.finish_reason or "cancelled")))
        return events


def run_decode_loop(loop: DecodeLoop, receive: Callable[[float | None], bool],
                    emit: Callable[[list[Event]], None], report: Callable[[str], None] | None = None) -> None:
    """Admit and decode until `receive` reports the loop closed.

    `receive(timeout)` applies the requests and cancellations that arrive within `timeout`
    seconds (None: wait for one) to `loop` and returns False once the loop should stop; `emit`
    sends a list of events on; `report(decode_step)` is told the decode step's state ("eager",
    "compiling", "ready" or "failed") when the loop starts and whenever it changes.

    New requests are admitted before the next step. While a burst keeps arriving (another
    request within BURST_QUIET_S), admission continues and the step waits, for up to
    BURST_WINDOW_S: a stream's first token then waits for its own prefill only, not for the
    other streams' decode steps.

    A compiled decode step is compiled on a thread of its own while this loop decodes eagerly,
    so the first request never waits for a compile.
    """
    batch = loop.batch
    batch.compile_in_background()
    reported = None
    while True:
        if report is not None and batch.compile_state != reported:
            reported = batch.compile_state
            report(reported)
        waiting_for_compile = batch.compile_state == "compiling"
        if not receive((COMPILE_POLL_S if waiting_for_compile else None) if loop.idle else 0):
            return
        if loop.pending and batch.free_slots:
            deadline = time.monotonic() + BURST_WINDOW_S
            while True:
                emit(loop.admit())
                arrived = loop.arrivals
                if time.monotonic() >= deadline or not batch.free_slots:
                    break
                if not receive(BURST_QUIET_S):
                    return
                if loop.arrivals == arrived:
                    break
        if batch.requests:
            emit(loop.step())
