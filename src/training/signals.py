"""Ctrl-C and SIGTERM ask the training loop to stop at the next step boundary.

The loop then saves checkpoint_latest.pth and exits cleanly, so an interrupted run resumes
where it stopped. A second signal aborts at once (default behaviour), for when saving hangs.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class GracefulStop:
    """Context manager; `requested` is the signal number received, or None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum
        for sig, handler in self._previous.items():  # the next signal acts as usual
            signal.signal(sig, handler)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        """Shell convention: 128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + self.requested if self.requested else 0
