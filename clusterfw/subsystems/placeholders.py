"""Placeholder in-process subsystems for the default levels: MM 0, DLM 10,
VDM 20, SFS 30.

How this works
--------------
Each runs one thread that takes notifications from a bounded queue, logs
them and acknowledges at once.  They hold the levels (and the barrier counts
(1, 1, 1)) so that the transition framework runs through the real level
order today; the real DLM, VDM and SFS replace them one by one and keep the
same level and name.  Bounded: a queue of ``QUEUE_MAX`` notifications; only
the newest unacknowledged batch matters (a newer batch supersedes an older
one), so when the queue is full the oldest entry is dropped.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable

from .base import LocalSubsystem, Notification

DEFAULT_LEVELS: tuple[tuple[int, str], ...] = ((0, "mm"), (10, "dlm"), (20, "vdm"), (30, "sfs"))
QUEUE_MAX = 16


class PlaceholderSubsystem(LocalSubsystem):
    """Acks every notification immediately and logs it."""

    def __init__(self, level: int, name: str, barriers: tuple[int, int, int] = (1, 1, 1)) -> None:
        self.level = level
        self.name = name
        self.barriers = barriers
        self._queue: queue.Queue[Notification | None] = queue.Queue(maxsize=QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self._ack: Callable[[int], None] | None = None
        self._log: Callable[[str], None] = lambda _text: None

    def start(self, ack: Callable[[int], None], log: Callable[[str], None]) -> None:
        self._ack, self._log = ack, log
        self._thread = threading.Thread(target=self._run, name=f"subsystem-{self.name}", daemon=True)
        self._thread.start()

    def deliver(self, notification: Notification) -> None:
        while True:
            try:
                self._queue.put_nowait(notification)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # superseded anyway: keep the newest
                except queue.Empty:
                    pass

    def stop(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def _run(self) -> None:
        while True:
            notification = self._queue.get()
            if notification is None:
                return
            self._log(f"{self.name} (level {self.level}, placeholder) {notification.describe()}: ack")
            assert self._ack is not None
            self._ack(notification.batch)


def default_subsystems() -> list[PlaceholderSubsystem]:
    return [PlaceholderSubsystem(level, name) for level, name in DEFAULT_LEVELS]
