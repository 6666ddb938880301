"""At most N generations at once, a bounded queue behind them, and a fast 'busy' beyond that."""

from __future__ import annotations

import asyncio


class ServerBusy(Exception):
    """Every slot is taken and the queue is full."""


class SlotLimiter:
    def __init__(self, max_active: int, max_waiting: int) -> None:
        self.max_active = max_active
        self.max_waiting = max_waiting
        self._semaphore = asyncio.Semaphore(max_active)
        self.reserved = 0  # admitted requests: running or waiting
        self.active = 0

    @property
    def waiting(self) -> int:
        return self.reserved - self.active

    def reserve(self) -> Ticket:
        """Admit a request or raise ServerBusy; called before the response starts."""
        if self.reserved >= self.max_active + self.max_waiting:
            raise ServerBusy
        self.reserved += 1
        return Ticket(self)


class Ticket:
    """One admitted request. `async with ticket:` waits for a slot and frees it on exit."""

    def __init__(self, limiter: SlotLimiter) -> None:
        self.limiter = limiter
        self.released = False
        self.running = False

    async def __aenter__(self) -> Ticket:
        await self.limiter._semaphore.acquire()
        self.running = True
        self.limiter.active += 1
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.running:
            self.running = False
            self.limiter.active -= 1
            self.limiter._semaphore.release()
        self.limiter.reserved -= 1

    def __del__(self) -> None:  # a response that never started still gives its place back
        if not self.released:
            self.release()
