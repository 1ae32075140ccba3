"""Requests too slow for the API thread, answered from a thread of their
own: the ``locks`` request, which reads and decodes the whole lock area
(up to 1 MiB).

How this works
--------------
The API thread hands the request over (``submit``) and returns
``api.DEFERRED`` at once; the "lock-table" thread answers it with the
server's ``reply``.  One read answers every request waiting when it ends.
A privileged peer (root, group ``clusterfw``) gets a read that started
after its request arrived; an unprivileged peer may get the last read if
it ended at most ``MAX_AGE_S`` ago.  So however many connections other
users open (and the API's per-uid rate bounds how often each asks), the
disk is read for them at most about once a second, and nothing they ask
waits on the API thread.  Every reply says how old its read is
(``age_ms``: since the read ended) and whether it was made for an earlier
request (``cached``).

Invariant: every submitted request gets exactly one reply (an error one
when the read or the answer fails, or the daemon stops).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

MAX_AGE_S = 1.0
WAIT_MAX_S = 1.0


@dataclass
class _Waiting:
    conn_id: int
    privileged: bool
    at: float  # monotonic: when it arrived


@dataclass
class _Read:
    started: float
    ended: float
    result: dict[str, Any]


class LockTableReader:
    """``read()`` reads the disk (the part of the reply that may be cached);
    ``finish(part)`` completes a reply with what is cheap and must be fresh;
    ``reply(conn_id, message)`` sends it."""

    def __init__(self, read: Callable[[], dict[str, Any]], finish: Callable[[dict[str, Any]], dict[str, Any]],
                 reply: Callable[[int, dict[str, Any]], bool], log: Callable[[str, str], None],
                 max_age_s: float = MAX_AGE_S) -> None:
        self._read = read
        self._finish = finish
        self._reply = reply
        self._log = log
        self.max_age_s = max_age_s
        self._cond = threading.Condition()
        self._queue: list[_Waiting] = []
        self._stopping: str | None = None
        self._last: _Read | None = None
        self._thread: threading.Thread | None = None
        self.reads = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lock-table", daemon=True)
        self._thread.start()

    def submit(self, conn_id: int, privileged: bool) -> None:
        with self._cond:
            stopping = self._stopping
            if stopping is None:
                self._queue.append(_Waiting(conn_id, privileged, time.monotonic()))
                self._cond.notify()
        if stopping is not None:
            self._reply(conn_id, {"ok": False, "op": "locks", "error": stopping})

    def stop(self, reason: str) -> None:
        with self._cond:
            self._stopping = reason
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._stopping is None:
                    self._cond.wait(WAIT_MAX_S)
                batch, self._queue = self._queue, []
                stopping = self._stopping
            if stopping is not None:
                for w in batch:
                    self._reply(w.conn_id, {"ok": False, "op": "locks", "error": stopping})
                return
            self._answer(batch)

    def _answer(self, batch: list[_Waiting]) -> None:
        last = self._last
        now = time.monotonic()
        if last is None or any(last.started < w.at if w.privileged else now - last.ended > self.max_age_s
                               for w in batch):
            started = time.monotonic()
            try:
                result = self._read()
            except Exception as exc:  # noqa: BLE001 - every request still gets its one reply
                self._failed(batch, exc)
                return
            self.reads += 1
            last = self._last = _Read(started, time.monotonic(), result)
        for w in batch:
            try:
                message = {"ok": True, "op": "locks", **self._finish(dict(last.result)),
                           "age_ms": int((time.monotonic() - last.ended) * 1000), "cached": last.started < w.at}
            except Exception as exc:  # noqa: BLE001
                self._failed([w], exc)
                continue
            self._reply(w.conn_id, message)

    def _failed(self, batch: list[_Waiting], exc: Exception) -> None:
        self._log("error", f"lock table: answering failed: {type(exc).__name__}: {exc}")
        for w in batch:
            self._reply(w.conn_id, {"ok": False, "op": "locks",
                                    "error": f"internal error reading the lock table: {type(exc).__name__}"})
