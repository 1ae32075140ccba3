"""``BlockDevice``: aligned O_DIRECT + O_DSYNC I/O with a timeout on every I/O.

How this works
--------------
The device is opened with ``O_DIRECT | O_DSYNC``: reads come from the disk,
not the page cache (another host may have written the block), and a write
returns only once the device has it.  O_DIRECT needs the buffer, offset and
length aligned to the logical block size, so

* the logical block size is read from the device: ``BLKSSZGET`` for a block
  device.  A regular file (used in unit tests) has no logical block size of
  its own; it gets 4096 -- a multiple of every block size a filesystem's
  device can have -- unless the filesystem reports ``st_blksize == 512``,
  in which case 512.  ``file_block_size_bytes`` overrides that (tests);
* the size is ``BLKGETSIZE64`` for a block device, ``st_size`` (rounded down
  to whole blocks) for a file;
* every buffer is an anonymous ``mmap`` (page-aligned), and every offset and
  length is checked to be whole logical blocks (``UnalignedIo`` otherwise).

Every I/O runs on a worker thread and the caller waits at most
``timeout_ms``.  An I/O that does not finish in time raises ``IoTimeout`` and
its worker is *abandoned*: it stays blocked in the kernel, holding its own
buffer, and exits when (if ever) the I/O returns; its result is dropped.
Later I/Os use a fresh worker.  Bounds and rules:

* at most ``abandoned_workers_max`` abandoned workers may be stuck at once;
  past that every I/O fails with ``IoTimeout`` at once, without starting a
  thread (the device is as good as gone);
* a write never overlaps a still-stuck earlier write: an abandoned write
  may still land, and if a newer write to the same blocks were issued the
  disk could end up with the *older* data (a heartbeat going backwards, a
  Disk Paxos ballot going backwards).  Such a write fails at once with
  ``IoTimeout``; the caller treats it as a failed renewal, as for any other
  timeout;
* one I/O at a time per ``BlockDevice`` (a lock; waiting for it counts
  against the timeout).  Open the device twice for concurrent I/O;
* the file descriptor is closed only when no worker can still use it.

Errors: ``IoError`` carries the errno of a failed I/O (EIO, ...);
``IoTimeout`` a timed-out one; both are ``DeviceError`` -- a failed renewal
for the daemon, distinct from a rejected block (``BlockError``).  ``open``
and the ioctls are not run under a timeout.

The names ``ClusterDisk``, ``SimDisk``, ``format_disk`` and ``probe`` are also
importable from here (they live in their own modules).
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import stat
import struct
import threading
import time
import weakref
from typing import Any, Callable

from .errors import IoError, IoTimeout
from .simdisk import SECTOR_SIZES_BYTES, check_extent

BLKSSZGET = 0x1268  # ioctl: logical block size (int)
BLKGETSIZE64 = 0x80081272  # ioctl: size in bytes (u64)
DEFAULT_IO_TIMEOUT_MS = 10_000  # admin tools; the daemon passes its io_timeout_ms
ABANDONED_WORKERS_MAX = 4
FILE_BLOCK_SIZE_BYTES = 4096


class _Request:
    """One I/O handed to a worker."""

    __slots__ = ("op", "offset", "length", "run", "done", "result", "error")

    def __init__(self, op: str, offset: int, length: int, run: Callable[[], Any]):
        self.op = op
        self.offset = offset
        self.length = length
        self.run = run
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def overlaps(self, offset: int, length: int) -> bool:
        return self.offset < offset + length and offset < self.offset + self.length


class _Worker:
    """A daemon thread that runs requests one at a time until told to stop.
    An abandoned worker is told to stop right away; it exits after its stuck
    request returns."""

    def __init__(self, name: str, on_finished: Callable[[], None]):
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        # Weak, so that an idle worker does not keep its device alive: a
        # device that is dropped without close() is closed by __del__.
        self._on_finished = weakref.WeakMethod(on_finished)
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def submit(self, request: _Request) -> None:
        self._queue.put(request)

    def stop(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            self._execute(request)
            del request  # hold nothing (and so no device) while idle

    def _execute(self, request: _Request) -> None:
        try:
            request.result = request.run()
        except BaseException as exc:  # handed to the waiting caller
            request.error = exc
        finally:
            request.run = None  # type: ignore[assignment]
            request.done.set()
            on_finished = self._on_finished()
            if on_finished is not None:
                on_finished()
            del on_finished


class BlockDevice:
    """A block device (or a regular file) opened for aligned direct I/O."""

    def __init__(self, path: str, *, readonly: bool = False, io_timeout_ms: int = DEFAULT_IO_TIMEOUT_MS,
                 abandoned_workers_max: int = ABANDONED_WORKERS_MAX,
                 file_block_size_bytes: int | None = None):
        if io_timeout_ms <= 0:
            raise ValueError(f"io_timeout_ms={io_timeout_ms}: must be positive")
        if abandoned_workers_max < 1:
            raise ValueError(f"abandoned_workers_max={abandoned_workers_max}: must be >= 1")
        if file_block_size_bytes is not None and file_block_size_bytes not in SECTOR_SIZES_BYTES:
            raise ValueError(f"file_block_size_bytes={file_block_size_bytes}: must be 512 or 4096")
        self.path = str(path)
        self.file_size_bytes: int | None = None  # a regular file's st_size (size_bytes is whole blocks)
        self.readonly = readonly
        self.io_timeout_ms = io_timeout_ms
        self.abandoned_workers_max = abandoned_workers_max
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_DIRECT | os.O_DSYNC | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EINVAL:
                hint = (": the filesystem does not support direct I/O; use a block device, "
                        "or a file on ext4 or xfs")
            elif exc.errno == errno.ENOENT:
                hint = ": no such device or file; check the path"
            elif exc.errno in (errno.EACCES, errno.EPERM):
                hint = ": permission denied; run as root or fix the device's permissions"
            raise IoError(exc.errno or errno.EIO, f"cannot open {self.path}: {exc.strerror}{hint}") from None
        try:
            self.is_block_device, self.block_size_bytes, self.size_bytes = self._geometry(
                fd, file_block_size_bytes)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._closed = False
        self._inflight = 0
        self._worker: _Worker | None = None
        self._worker_serial = 0
        self._abandoned: list[_Request] = []
        self._state_lock = threading.Lock()
        self._io_lock = threading.Lock()

    def _geometry(self, fd: int, file_block_size_bytes: int | None) -> tuple[bool, int, int]:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            try:
                block_size = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
                size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
            except OSError as exc:
                raise IoError(exc.errno or errno.EIO,
                              f"cannot read the geometry of {self.path}: {exc.strerror}") from None
            if block_size not in SECTOR_SIZES_BYTES:
                raise IoError(errno.EINVAL, f"{self.path} has a {block_size}-byte logical block size; "
                                            f"clusterfw supports 512 and 4096")
            return True, block_size, size
        if stat.S_ISREG(st.st_mode):
            if file_block_size_bytes is not None:
                block_size = file_block_size_bytes
            else:
                block_size = 512 if st.st_blksize == 512 else FILE_BLOCK_SIZE_BYTES
            self.file_size_bytes = st.st_size
            return False, block_size, st.st_size - st.st_size % block_size
        raise IoError(errno.ENOTBLK, f"{self.path} is neither a block device nor a regular file")

    # -- public I/O --------------------------------------------------------

    def read(self, offset: int, length: int, *, timeout_ms: int | None = None) -> bytes:
        """Read ``length`` bytes at ``offset`` (whole logical blocks)."""
        check_extent(offset, length, self.block_size_bytes, self.size_bytes, f"read of {self.path}")

        def run() -> bytes:
            buf = mmap.mmap(-1, length)
            try:
                done = self._io("read", self._pread, buf, offset, length)
                if done != length:
                    raise IoError(errno.EIO, f"short read of {self.path} at offset {offset}: {done} of "
                                             f"{length} bytes", offset=offset, length=length)
                return buf[:]
            finally:
                buf.close()

        data: bytes = self._submit("read", offset, length, run, timeout_ms)
        return data

    def write(self, offset: int, data: bytes | bytearray | memoryview, *, timeout_ms: int | None = None) -> None:
        """Write ``data`` at ``offset`` (whole logical blocks); returns once the
        device has it (O_DSYNC)."""
        if self.readonly:
            raise IoError(errno.EBADF, f"{self.path} was opened read-only", offset=offset, length=len(data))
        length = len(data)
        check_extent(offset, length, self.block_size_bytes, self.size_bytes, f"write of {self.path}")
        payload = bytes(data)

        def run() -> None:
            buf = mmap.mmap(-1, length)
            try:
                buf[:] = payload
                done = self._io("write", self._pwrite, buf, offset, length)
                if done != length:
                    raise IoError(errno.EIO, f"short write of {self.path} at offset {offset}: {done} of "
                                             f"{length} bytes", offset=offset, length=length)
            finally:
                buf.close()

        self._submit("write", offset, length, run, timeout_ms)

    # -- hooks run on the worker (tests override them to inject faults) ----

    def _pread(self, buf: mmap.mmap, offset: int) -> int:
        return os.preadv(self._fd, [buf], offset)

    def _pwrite(self, buf: mmap.mmap, offset: int) -> int:
        return os.pwritev(self._fd, [buf], offset)

    def _io(self, op: str, call: Callable[[mmap.mmap, int], int], buf: mmap.mmap, offset: int,
            length: int) -> int:
        try:
            return call(buf, offset)
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise IoError(code, f"{op} of {self.path} at offset {offset} ({length} bytes) failed: "
                                f"{os.strerror(code)}", offset=offset, length=length) from None

    # -- the worker machinery ----------------------------------------------

    def _submit(self, op: str, offset: int, length: int, run: Callable[[], Any], timeout_ms: int | None) -> Any:
        timeout_ms = self.io_timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000.0
        what = f"{op} of {self.path} at offset {offset} ({length} bytes)"
        if not self._io_lock.acquire(timeout=max(0.0, timeout_ms / 1000.0)):
            raise IoTimeout(f"{what}: another I/O on this device did not finish within {timeout_ms} ms",
                            offset=offset, length=length, timeout_ms=timeout_ms)
        try:
            request = _Request(op, offset, length, run)
            with self._state_lock:
                if self._closed:
                    raise IoError(errno.EBADF, f"{what}: the device is closed", offset=offset, length=length)
                self._abandoned = [r for r in self._abandoned if not r.done.is_set()]
                if len(self._abandoned) >= self.abandoned_workers_max:
                    raise IoTimeout(
                        f"{what}: not started, {len(self._abandoned)} earlier I/Os are still stuck "
                        f"(limit {self.abandoned_workers_max}); the device is not responding",
                        offset=offset, length=length, timeout_ms=timeout_ms)
                if op == "write":
                    for stuck in self._abandoned:
                        if stuck.op == "write" and stuck.overlaps(offset, length):
                            raise IoTimeout(
                                f"{what}: not started, an earlier timed-out write to offset {stuck.offset} "
                                f"({stuck.length} bytes) may still land and must not overtake it",
                                offset=offset, length=length, timeout_ms=timeout_ms)
                if self._worker is None:
                    self._worker_serial += 1
                    self._worker = _Worker(f"clusterfw-io-{self._worker_serial}", self._finished)
                worker = self._worker
                self._inflight += 1
            worker.submit(request)
            if not request.done.wait(max(0.0, deadline - time.monotonic())):
                with self._state_lock:
                    if not request.done.is_set():
                        self._abandoned.append(request)
                        self._worker = None
                        worker.stop()
                        raise IoTimeout(f"{what}: no completion within {timeout_ms} ms",
                                        offset=offset, length=length, timeout_ms=timeout_ms)
            if request.error is not None:
                raise request.error
            return request.result
        finally:
            self._io_lock.release()

    def _finished(self) -> None:
        with self._state_lock:
            self._inflight -= 1
            if self._closed and self._inflight == 0:
                self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def abandoned_workers(self) -> int:
        """How many timed-out I/Os are still stuck in the kernel."""
        with self._state_lock:
            return sum(1 for r in self._abandoned if not r.done.is_set())

    def close(self) -> None:
        """Stop the worker and close the device.  If an abandoned I/O is still
        stuck, the descriptor is closed when it returns."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            if self._worker is not None:
                self._worker.stop()
                self._worker = None
            if self._inflight == 0:
                self._close_fd()

    def __del__(self) -> None:
        if getattr(self, "_state_lock", None) is not None:
            self.close()

    def __enter__(self) -> "BlockDevice":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"BlockDevice({self.path!r}, block_size_bytes={self.block_size_bytes}, "
                f"size_bytes={self.size_bytes})")


_REEXPORTS = {
    "ClusterDisk": "clusterdisk",
    "Placement": "clusterdisk",
    "SimDisk": "simdisk",
    "Device": "simdisk",
    "format_disk": "admin",
    "probe": "admin",
}


def __getattr__(name: str) -> Any:
    module = _REEXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__package__}.{module}"), name)
