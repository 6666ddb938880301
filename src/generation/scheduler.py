"""The server's decode loop: one thread steps a DecodeBatch that holds every active request.

Requests arrive from the event loop (`submit`), join the batch at the next step, and get each
token through their callback, called on the decode thread. Concurrent streams therefore share
each forward pass instead of queueing for the model one token at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from src.generation.batch import DecodeBatch, Request
from src.generation.engine import Generator

# A callback receives each token id, then END once the request has left the batch, or an
# exception if decoding failed.
END = object()
Callback = Callable[[object], None]
BURST_QUIET_S = 0.001  # from idle, admit once no request has arrived for this long...
BURST_WINDOW_S = 0.015  # ...or once this much time has passed


class BatchScheduler:
    def __init__(self, generator: Generator, slots: int) -> None:
        self.batch = DecodeBatch(generator.model, generator.eos_id, slots)
        self._pending: list[tuple[Request, Callback]] = []
        self._callbacks: dict[Request, Callback] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, request: Request, callback: Callback) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the decode loop has been shut down")
            self._pending.append((request, callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="decode-loop", daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self, request: Request) -> None:
        """Stop a request at the next step (a client went away); harmless once it is done."""
        request.cancelled = True
        with self._wake:
            for index, (pending, callback) in enumerate(self._pending):
                if pending is request:
                    del self._pending[index]
                    request.finish_reason = "cancelled"
                    callback(END)
                    break

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._pending and not self.batch.requests:
                    self._wake.wait()
                if self._closed:
                    return
                if not self.batch.requests:
                    self._gather_burst()
                joining = self._pending[:self.batch.free_slots]
                del self._pending[:len(joining)]
            try:
                for request, callback in joining:
                    self._callbacks[request] = callback
                # newcomers get their first token from their prefill, before the next step
                for request, token in self.batch.admit([request for request, _ in joining]):
                    self._callbacks[request](token)
                self._end_finished()
                for request, token in self.batch.step():
                    self._callbacks[request](token)
            except Exception as exc:  # noqa: BLE001 - every request in flight is told, then the batch restarts
                for callback in self._callbacks.values():
                    callback(exc)
                self._callbacks.clear()
                self.batch.clear()
                continue
            self._end_finished()

    def _gather_burst(self) -> None:
        """From idle, wait while requests keep arriving (up to BURST_WINDOW_S) so a burst is
        prefilled in one pass instead of one request, then the rest. Called holding the lock."""
        deadline = time.monotonic() + BURST_WINDOW_S
        while len(self._pending) < self.batch.free_slots and time.monotonic() < deadline:
            count = len(self._pending)
            self._wake.wait(timeout=BURST_QUIET_S)
            if len(self._pending) == count:
                return

    def _end_finished(self) -> None:
        still_running = set(self.batch.requests)
        for request in [r for r in self._callbacks if r not in still_running]:
            self._callbacks.pop(request)(END)
