"""Ctrl-C and SIGTERM: finish the current step, save, and exit; a second Ctrl-C exits at once."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopSignal:
    """Records the first SIGINT/SIGTERM; the loop polls ``received`` after each step."""

    def __init__(self) -> None:
        self.received: int | None = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, whatever is running
        self.received = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.received, 1)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignal]:
        """Install the handlers for the duration of training (main thread only)."""
        previous = {}
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in EXIT_CODES:
                previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
