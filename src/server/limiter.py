"""At most N generations at once, a bounded first-come-first-served queue behind them, and a fast
'busy' beyond that.

A freed slot is handed straight to the oldest waiter (not released for anyone to grab), so
queued requests start in the order they arrived. The limiter remembers how long recent queued
requests waited, which /health reports.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import time


class ServerBusy(Exception):
    """Every slot is taken and the queue is full."""


class ShuttingDown(Exception):
    """The server is stopping: no request is admitted, and queued ones give up their place."""


class SlotLimiter:
    def __init__(self, max_active: int, max_waiting: int) -> None:
        self.max_active = max_active
        self.max_waiting = max_waiting
        self.reserved = 0  # admitted requests: running or waiting
        self.active = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.recent_waits: collections.deque[float] = collections.deque(maxlen=256)  # seconds, queued ones
        self.closed: str | None = None  # why no request is admitted any more

    def shut_down(self, message: str) -> None:
        """Admit nothing from now on; queued requests raise ShuttingDown(message) at once."""
        self.closed = message
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(ShuttingDown(message))

    @property
    def waiting(self) -> int:
        return self.reserved - self.active

    def reserve(self) -> Ticket:
        """Admit a request or raise ServerBusy; called before the response starts."""
        if self.closed is not None:
            raise ShuttingDown(self.closed)
        if self.reserved >= self.max_active + self.max_waiting:
            raise ServerBusy
        self.reserved += 1
        return Ticket(self)

    def take_free_slot(self) -> bool:
        """Take a slot if one is free and nobody waits for it."""
        if self.closed is None and self.active < self.max_active and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire_slot(self) -> None:
        if self.take_free_slot():
            return
        started = time.monotonic()
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except ShuttingDown:
            raise
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release_slot()  # handed a slot while being cancelled: pass it on
            else:
                self._waiters.remove(future)
            raise
        self.recent_waits.append(time.monotonic() - started)

    def release_slot(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)  # the slot changes hands; `active` stays the same
                return
        self.active -= 1

    def queue_wait_ms(self) -> dict[str, float | int]:
        """How long recently queued requests waited for a slot (median and worst, ms)."""
        waits = list(self.recent_waits)
        if not waits:
            return {"queued_requests": 0, "p50_ms": 0.0, "max_ms": 0.0}
        return {"queued_requests": len(waits), "p50_ms": round(statistics.median(waits) * 1000, 1),
                "max_ms": round(max(waits) * 1000, 1)}


class Ticket:
    """One admitted request. `async with ticket:` waits for a slot and frees it on exit."""

    def __init__(self, limiter: SlotLimiter) -> None:
        self.limiter = limiter
        self.released = False
        self.running = False

    def take_free_slot(self) -> bool:
        """Hold a slot now if one is free (then `async with` does not wait); whether it holds one."""
        if not self.running and not self.released and self.limiter.take_free_slot():
            self.running = True
        return self.running

    async def __aenter__(self) -> Ticket:
        if self.running:
            return self
        try:
            await self.limiter.acquire_slot()
        except BaseException:  # cancelled while queued: the place is given up
            self.release()
            raise
        self.running = True
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.running:
            self.running = False
            self.limiter.release_slot()
        self.limiter.reserved -= 1

    def __del__(self) -> None:  # a response that never started still gives its place back
        if not self.released:
            self.release()
