"""The event log: a bounded, append-only JSON-lines file, and its readers.

How this works
--------------
*Writing* (``EventLog``, the event manager only): every notification's
records are appended as one ``write`` of whole lines (one JSON object a
line, see record.py) and ``fsync``-ed before the event manager acks the
notification, so an acked event is on disk.  When the next append would take
the file over ``max_bytes`` (default 1 MiB) the file is renamed to
``PATH.1`` (replacing the previous ``.1``) and a new file is started; the
directory is fsync-ed after the rename and after a file is created.  The log
therefore never holds more than about ``2 * max_bytes``.  A torn last line
(a crash in the middle of a write) is ended with a newline when the log is
opened again, and readers skip lines that are not valid records.

*Reading* (``Follower``, ``clusterfw events``): a follower holds the current
file open and reads whole lines from where it stopped; each ``poll`` reads
what is new.  A rotation is seen as a new inode at PATH: the old file (now
``.1``) is read to its end first, then the new one from its start, so
``--follow`` loses nothing across a rotation.  ``history`` gives ``.1`` (when
it is not the file already held open) and the current file: every event the
log still holds, oldest first.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any, Iterator

from . import record as rec

DEFAULT_LOG = "/var/lib/clusterfw/events.jsonl"
DEFAULT_MAX_BYTES = 1 << 20
MIN_MAX_BYTES = 4096
READ_CHUNK = 1 << 16


class EventLogError(Exception):
    """The log cannot be opened or written; the message names the path and the fix."""


def rotated_path(path: str) -> str:
    return path + ".1"


def encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if rec.valid(obj) else None


class EventLog:
    """The writer.  ``append`` is thread-safe: the event manager's main thread
    appends membership records, its action threads the occurrences."""

    def __init__(self, path: str = DEFAULT_LOG, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes {max_bytes}: at least {MIN_MAX_BYTES}")
        self.path = path
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._size = 0
        self.rotations = 0
        self._lock = threading.RLock()

    # -------------------------------------------------------------- opening
    def open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise EventLogError(f"cannot create the directory of the event log {self.path}: {exc.strerror}; "
                                f"create it or choose another file with --log FILE") from None
        self._open_file()
        self._repair_tail()

    def _open_file(self) -> None:
        existed = os.path.exists(self.path)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EventLogError(f"cannot open the event log {self.path} for writing: {exc.strerror}; run as "
                                f"root or choose a writable file with --log FILE") from None
        self._fd = fd
        self._size = os.fstat(fd).st_size
        if not existed:
            _fsync_dir(self.path)

    def _repair_tail(self) -> None:
        """End a torn last line (a crash mid-write) so the next record starts a line of its own."""
        if self._size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(self._size - 1)
            last = f.read(1)
        if last != b"\n":
            self._write(b"\n")

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> EventLog:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- writing
    def append(self, records: list[dict[str, Any]]) -> None:
        """Append the records as whole lines, rotating first if they would
        not fit, and fsync.  Raises OSError when the disk refuses."""
        if not records:
            return
        data = b"".join(encode(r) for r in records)
        with self._lock:
            if self._fd is None:
                self.open()
            if self._size > 0 and self._size + len(data) > self.max_bytes:
                self.rotate()
            self._write(data)

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._size += len(data)

    def rotate(self) -> None:
        """PATH becomes PATH.1 (replacing it); a new PATH is started."""
        self.close()
        os.replace(self.path, rotated_path(self.path))
        self._open_file()
        _fsync_dir(self.path)
        self.rotations += 1

    @property
    def size(self) -> int:
        return self._size

    # ------------------------------------------------------------- reading back
    def last_key(self) -> tuple[Any, ...] | None:
        """The key (record.batch_key) of the last notification in the log
        (occurrence records are skipped), so that a notification delivered
        again is not recorded twice."""
        try:
            with Follower(self.path) as follower:
                records = follower.history()
        except FileNotFoundError:
            return None
        records = [r for r in records if not rec.is_occurrence(r)]
        if not records:
            return None
        last = records[-1]
        same = [r for r in records[-64:] if (r.get("level"), r.get("epoch"), r.get("batch"), r.get("observer"))
                == (last.get("level"), last.get("epoch"), last.get("batch"), last.get("observer"))]
        try:
            return rec.batch_key(int(last["level"]), int(last["epoch"]), int(last["batch"]),
                                 [(int(r["id"]), str(r["kind"]), int(r["barrier"])) for r in same])
        except (KeyError, TypeError, ValueError):
            return None


class Follower:
    """Reads the log's records in order, across rotations (see the module doc)."""

    def __init__(self, path: str = DEFAULT_LOG) -> None:
        self.path = path
        self._fh: Any = None
        self._ino: tuple[int, int] | None = None
        self._pos = 0
        self._partial = b""
        self.bad_lines = 0
        self._open_current()

    def _open_current(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - held open across polls
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        if self._fh is not None:
            self._fh.close()
        self._fh, self._ino, self._pos, self._partial = fh, (st.st_dev, st.st_ino), 0, b""
        return True

    def exists(self) -> bool:
        return self._fh is not None or os.path.exists(rotated_path(self.path))

    def history(self) -> list[dict[str, Any]]:
        """Everything the log holds now, oldest first (``.1`` then PATH).
        Raises FileNotFoundError if there is neither file."""
        if not self.exists():
            raise FileNotFoundError(self.path)
        out: list[dict[str, Any]] = []
        old = rotated_path(self.path)
        try:
            with open(old, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_dev, st.st_ino) != self._ino:  # not the file we hold (a rotation just now)
                    out.extend(self._parse_all(f.read()))
        except FileNotFoundError:
            pass
        out.extend(self.poll())
        return out

    def _parse_all(self, data: bytes) -> Iterator[dict[str, Any]]:
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            parsed = parse_line(line)
            if parsed is None:
                self.bad_lines += 1
            else:
                yield parsed

    def _read_available(self) -> list[dict[str, Any]]:
        if self._fh is None:
            return []
        self._fh.seek(self._pos)
        out: list[dict[str, Any]] = []
        while True:
            chunk = self._fh.read(READ_CHUNK)
            if not chunk:
                break
            self._pos += len(chunk)
            data = self._partial + chunk
            complete, _, self._partial = data.rpartition(b"\n")
            if complete:
                out.extend(self._parse_all(complete))
        return out

    def poll(self) -> list[dict[str, Any]]:
        """The records appended since the last poll (whole lines only)."""
        out = self._read_available()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return out  # rotated and not created again yet: keep the old file
        if self._fh is None or (st.st_dev, st.st_ino) != self._ino:
            out.extend(self._read_available())  # the rest of the rotated file
            if self._open_current():
                out.extend(self._read_available())
        elif st.st_size < self._pos:  # truncated by hand: start over
            self._pos, self._partial = 0, b""
            out.extend(self._read_available())
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
