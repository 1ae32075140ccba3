"""The in-process subsystems that only acknowledge, at the default levels
(core/levels.py): MM 0, VDM 20, SFS 30.  The DLM at 10 is real
(subsystems/dlm/) and constructed on its own.

How this works
--------------
Each runs one thread that takes notifications from a bounded queue, logs
them and acknowledges at once.  Level 0 is the membership manager's own
level: the daemon does its work, so acknowledging at once is all it has to
do.  VDM and SFS are *placeholders*: they hold the levels (and the barrier
counts (1, 1, 1)) so that the transition framework runs through the real
level order today; ``clusterfw status`` shows them as ``placeholder``
instead of ``joined``.  The real VDM and SFS replace them and keep the same
level and name.  Bounded: a queue of ``QUEUE_MAX`` notifications; only
the newest unacknowledged batch matters (a newer batch supersedes an older
one), so when the queue is full the oldest entry is dropped.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable

from clusterfw.core import levels
from clusterfw.core.model import ViewRecord

from .base import LocalSubsystem, Notification

ACK_ONLY_LEVELS = (levels.MM, levels.VDM, levels.SFS)
PLACEHOLDER_LEVELS = frozenset({levels.VDM, levels.SFS})
"""Levels whose subsystem is still to come: shown as ``placeholder``."""
QUEUE_MAX = 16


class PlaceholderSubsystem(LocalSubsystem):
    """Acks every notification immediately and logs it."""

    def __init__(self, level: int, name: str, barriers: tuple[int, int, int] = (1, 1, 1),
                 placeholder: bool = True) -> None:
        self.level = level
        self.name = name
        self.barriers = barriers
        self.placeholder = placeholder
        self._queue: queue.Queue[Notification | None] = queue.Queue(maxsize=QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self._ack: Callable[[int], None] | None = None
        self._log: Callable[[str], None] = lambda _text: None

    def start(self, ack: Callable[[int], None], log: Callable[[str], None]) -> None:
        self._ack, self._log = ack, log
        self._thread = threading.Thread(target=self._run, name=f"subsystem-{self.name}", daemon=True)
        self._thread.start()

    def deliver(self, view: ViewRecord | None, notification: Notification | None = None) -> None:
        if notification is None:
            return  # a view alone: nothing to acknowledge
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
            what = "placeholder" if self.placeholder else "in-process"
            self._log(f"{self.name} (level {self.level}, {what}) {notification.describe()}: ack")
            assert self._ack is not None
            self._ack(notification.batch)


def default_subsystems() -> list[PlaceholderSubsystem]:
    return [PlaceholderSubsystem(level, levels.NAMES[level], placeholder=level in PLACEHOLDER_LEVELS)
            for level in ACK_ONLY_LEVELS]
