"""One node's view of the shared disk image, with a switch to cut it.

How this works
--------------
Each lab node gets its own FUSE filesystem (one process per node) whose only
file, ``disk``, passes every read/write straight through to the shared image
``DIR/disk.img`` with ``pread``/``pwrite`` on one file descriptor.  Files are
opened with FUSE ``direct_io`` (no FUSE page cache), so a write from one node
is visible to every other node's next read; the host's page cache of the image
is shared by all views, and ``fsync`` becomes ``fdatasync`` of the image.  The
node's loop device (``losetup --direct-io=on``) sits on that file, so O_DIRECT
I/O inside the node goes loop -> FUSE -> image.

A control socket (unix stream, one line per request) switches the view at run
time, which is how ``clusterfw lab cut-disk`` emulates a lost SAN path *below*
the node:

    mode pass|eio|hang   -> "ok MODE"        (pass through / fail / stall)
    fail-stalled         -> "ok N"           (fail the I/Os stalled right now)
    status               -> one JSON object  (mode, counters, stalled I/Os)

``eio`` fails every read, write and fsync with EIO.  ``hang`` parks every
I/O on a condition variable until the mode changes (then it proceeds in the
new mode) or ``fail-stalled`` fails it, as a crashed host's in-flight I/O
never reaches the disk.  The FUSE loop is multi-threaded, so stalled requests
do not block the control socket, which has its own thread.

Binding: ``mfusepy`` (maintained fork of fusepy; ctypes over libfuse 3, no
compiler needed).  Run as ``python -m clusterfw.lab.fusedisk --image IMG
--mount DIR --control SOCK``; SIGTERM unmounts and exits.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import socketserver
import stat
import sys
import threading
import time

MODES = ("pass", "eio", "hang")
DISK_NAME = "disk"


class DiskView:
    """The pass-through/cut logic, independent of the FUSE binding."""

    def __init__(self, image: str, mode: str = "pass"):
        self.fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
        self.cond = threading.Condition()
        self.mode = mode
        self.fail_gen = 0
        self.stalled = 0
        self.counters = {"reads": 0, "writes": 0, "fsyncs": 0, "errors": 0,
                         "stalls": 0, "failed_stalled": 0}

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        with self.cond:
            self.mode = mode
            self.cond.notify_all()

    def fail_stalled(self) -> int:
        with self.cond:
            n = self.stalled
            self.fail_gen += 1
            self.cond.notify_all()
            return n

    def gate(self) -> None:
        """Block while hung; raise EIO when cut. Called before each I/O."""
        with self.cond:
            if self.mode == "hang":
                gen = self.fail_gen
                self.stalled += 1
                self.counters["stalls"] += 1
                try:
                    while self.mode == "hang" and self.fail_gen == gen:
                        self.cond.wait()
                finally:
                    self.stalled -= 1
                if self.fail_gen != gen:
                    self.counters["failed_stalled"] += 1
                    self.counters["errors"] += 1
                    raise OSError(errno.EIO, "disk I/O failed after stall (lab)")
            if self.mode == "eio":
                self.counters["errors"] += 1
                raise OSError(errno.EIO, "disk cut (lab)")

    def read(self, size: int, offset: int) -> bytes:
        self.gate()
        self.counters["reads"] += 1
        return os.pread(self.fd, size, offset)

    def write(self, data: bytes, offset: int) -> int:
        self.gate()
        self.counters["writes"] += 1
        return os.pwrite(self.fd, data, offset)

    def fsync(self) -> None:
        self.gate()
        self.counters["fsyncs"] += 1
        os.fdatasync(self.fd)

    def status(self) -> dict:
        with self.cond:
            return {"mode": self.mode, "stalled": self.stalled, "pid": os.getpid(),
                    **self.counters}


# --------------------------------------------------------------------------
# control socket

def serve_control(view: DiskView, path: str) -> socketserver.BaseServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            for raw in self.rfile:
                words = raw.decode(errors="replace").split()
                try:
                    if words[:1] == ["mode"] and len(words) == 2 and words[1] in MODES:
                        view.set_mode(words[1])
                        reply = f"ok {words[1]}"
                    elif words == ["fail-stalled"]:
                        reply = f"ok {view.fail_stalled()}"
                    elif words == ["status"]:
                        reply = json.dumps(view.status())
                    else:
                        reply = "error unknown request (mode pass|eio|hang, fail-stalled, status)"
                except Exception as exc:  # report, keep serving
                    reply = f"error {exc}"
                self.wfile.write((reply + "\n").encode())
                self.wfile.flush()

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = Server(path, Handler)
    os.chmod(path, 0o600)
    threading.Thread(target=srv.serve_forever, name="control", daemon=True).start()
    return srv


def control(path: str, request: str, timeout: float = 5.0) -> str:
    """Send one request to a disk view's control socket; return the reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(request.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = buf.decode().strip()
    if reply.startswith("error"):
        raise RuntimeError(reply)
    return reply


# --------------------------------------------------------------------------
# FUSE glue

def make_operations(view: DiskView):
    import mfusepy as fuse

    path_disk = "/" + DISK_NAME
    t0 = int(time.time() * 1e9)

    def wrap(fn):
        def inner(*a):
            try:
                return fn(*a)
            except OSError as exc:
                raise fuse.FuseOSError(exc.errno or errno.EIO) from None
        return inner

    class Ops(fuse.Operations):
        use_ns = True

        def getattr(self, path, fh=None):
            times = dict(st_atime=t0, st_mtime=t0, st_ctime=t0)
            if path == "/":
                return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2, **times)
            if path == path_disk:
                return dict(st_mode=stat.S_IFREG | 0o600, st_nlink=1,
                            st_size=view.size(), st_blksize=4096, **times)
            raise fuse.FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):
            if path != "/":
                raise fuse.FuseOSError(errno.ENOTDIR)
            return [".", "..", DISK_NAME]

        def open(self, path, fi):
            if path != path_disk:
                raise fuse.FuseOSError(errno.ENOENT)
            fi.direct_io = 1   # no FUSE page cache: every I/O reaches us
            fi.keep_cache = 0
            return 0

        @wrap
        def read(self, path, size, offset, fi):
            return view.read(size, offset)

        @wrap
        def write(self, path, data, offset, fi):
            return view.write(data, offset)

        @wrap
        def fsync(self, path, datasync, fi):
            view.fsync()
            return 0

        def flush(self, path, fi):
            return 0

        def release(self, path, fi):
            return 0

        def truncate(self, path, length, fh=None):
            raise fuse.FuseOSError(errno.EPERM)

        def statfs(self, path):
            return dict(f_bsize=4096, f_frsize=4096, f_blocks=view.size() // 4096,
                        f_bfree=0, f_bavail=0, f_namemax=255)

    return fuse, Ops()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clusterfw.lab.fusedisk",
                                 description="serve one node's view of the lab disk")
    ap.add_argument("--image", required=True)
    ap.add_argument("--mount", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--mode", choices=MODES, default="pass")
    ap.add_argument("--name", default="lab-disk")
    args = ap.parse_args(argv)

    view = DiskView(args.image, args.mode)
    srv = serve_control(view, args.control)
    fuse, ops = make_operations(view)
    try:
        # foreground, multi-threaded; libfuse handles SIGTERM/SIGINT by unmounting
        fuse.FUSE(ops, args.mount, raw_fi=True, foreground=True,
                  fsname=f"clusterfw-lab-{args.name}", subtype="clusterfw-lab")
    finally:
        view.set_mode("pass")
        view.fail_stalled()
        srv.shutdown()
        try:
            os.unlink(args.control)
        except FileNotFoundError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
