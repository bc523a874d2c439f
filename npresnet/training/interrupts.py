"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

::

    stop = StopRequest()
    with stop_on_signals(stop):
        trainer = Trainer(config, stop=stop)      # checks ``stop`` after every step and every write
        trainer.fit()                             # raises TrainingInterrupted once a signal came

The signal handler only records the signal; the trainer checks the record between steps
(``StopRequest.check``), so a stop never lands inside an optimizer update or a file write: the
checkpoint on disk is always the one written at the end of the last finished epoch, and the run
continues from it with ``--resume``. A second signal stops at once (``KeyboardInterrupt``); even
then a file being written is either fully replaced or left as it was (``npresnet.atomic_write``).

The command line exits with ``128 + signal number``, the shells' convention: 130 for SIGINT, 143
for SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["StopRequest", "TrainingInterrupted", "stop_on_signals"]


class TrainingInterrupted(Exception):
    """A stop was requested by a signal; ``signal`` is its number, ``exit_code`` 128 + that number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signal = signum
        self.exit_code = 128 + signum


class StopRequest:
    """The first stop signal received, if any (``signal`` is None until then)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def requested(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, the first of ``signals`` sets ``stop.signal``; a second raises KeyboardInterrupt.

    Outside the main thread (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.signal is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        stop.signal = signum

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
