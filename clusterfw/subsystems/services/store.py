"""The service registry on the shared disk, as the services subsystem uses it.

How this works
--------------
``DiskRegistryStore`` wraps the registry methods of ``ClusterDisk`` (two
copies A and B, ``ondisk/registry_codec.py``) for one node daemon:

* ``generation()`` is the poll: one single-block read of each head.  While
  both heads are the ones seen at the last full read, it answers from
  memory; when either changed, it reads the registry (``read()``).  So a
  head that decodes in front of a torn body never makes the poll claim a
  generation the read cannot deliver.
* ``read()`` gives ``(document, generation, token)`` of the newest valid
  copy, or ``(None, 0, 0)`` while the area was never written.
* ``write(doc, generation, token)`` is called by a round that holds the
  registry lock with fencing token ``token``.  It reads both copies again
  right before the write and refuses (``StaleWriter``) if either carries a
  higher token than ``token``: some node was granted the lock after this
  one, so this node's lock is no longer valid, whatever it believes.  It
  writes into the copy that does not hold the newest valid generation, with
  a generation above every generation any head ever showed this store (a
  torn copy's too), so no generation is written twice with different
  contents.  It returns the generation written.

Every write goes through a ``GuardedBlockDevice``: the daemon's write guard
(fenced, past the write deadline) refuses it in the system call itself.

Invariants: the newest valid copy is never overwritten; a generation is
never reused; a write never carries a token lower than one already on the
disk.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from clusterfw.ondisk.blockdev import BlockDevice
from clusterfw.ondisk.clusterdisk import ClusterDisk
from clusterfw.ondisk.diskio import GuardedBlockDevice
from clusterfw.ondisk.layout import Layout
from clusterfw.ondisk.registry_codec import Damaged, RegistryCopy, RegistryHead, next_copy


class StaleWriter(Exception):
    """A newer lock holder wrote the registry: this node's round must end."""


def _head_generations(*items: object) -> list[int]:
    out: list[int] = []
    for item in items:
        head = item if isinstance(item, RegistryHead) else getattr(item, "head", None)
        if isinstance(head, RegistryHead):
            out.append(head.generation)
    return out


class DiskRegistryStore:
    def __init__(self, *, path: str = "", layout: Layout, cluster_uuid: bytes, node_id: int, incarnation: int,
                 guard: Callable[[], str | None] = lambda: None, io_timeout_ms: int = 5000,
                 device: Any = None) -> None:
        """``device``: an already open device (tests, the simulator's disk);
        otherwise ``path`` is opened with O_DIRECT behind ``guard``."""
        self.path = path
        self.layout = layout
        self.cluster_uuid = cluster_uuid
        self.node_id = node_id
        self.incarnation = incarnation
        self._guard = guard
        self._io_timeout_ms = io_timeout_ms
        self._dev: Any = device
        self._mu = threading.Lock()
        self._heads: tuple[object, object] | None = None
        self._gen = 0
        self.seen_generation = 0
        """The highest generation any head ever showed this store."""
        self.stats = {"polls": 0, "reads": 0, "writes": 0, "refused": 0}

    # ------------------------------------------------------------ the device
    def _disk(self) -> ClusterDisk:
        if self._dev is None:
            self._dev = GuardedBlockDevice(self.path, guard=self._guard, io_timeout_ms=self._io_timeout_ms)
        return ClusterDisk(self._dev, self.layout, self.cluster_uuid)

    def close(self) -> None:
        with self._mu:
            if isinstance(self._dev, BlockDevice):
                self._dev.close()
            self._dev = None

    # ------------------------------------------------------------ the API
    def generation(self) -> int:
        with self._mu:
            heads = self._disk().read_registry_heads()
            self.stats["polls"] += 1
            if self._heads is not None and heads == self._heads:
                return self._gen
        return self.read()[1]

    def read(self) -> tuple[dict[str, Any] | None, int, int]:
        with self._mu:
            disk = self._disk()
            heads = disk.read_registry_heads()
            best, _which = disk.read_registry()
            self.stats["reads"] += 1
            self._note(heads)
            self._heads = heads
            if best is None:
                self._gen = 0
                return None, 0, 0
            self._gen = best.generation
            return best.doc, best.generation, best.token

    def write(self, doc: dict[str, Any], generation: int, token: int) -> int:
        with self._mu:
            disk = self._disk()
            a, b = disk.read_registry_copies()
            self._note((a, b))
            for copy in (a, b):
                if isinstance(copy, (RegistryCopy, Damaged)) and copy.head is not None and copy.head.token > token:
                    self.stats["refused"] += 1
                    raise StaleWriter(f"registry generation {copy.head.generation} carries lock token "
                                      f"{copy.head.token}, newer than this node's {token}: another node holds "
                                      "the registry lock now")
            copy_index, gen = next_copy(a, b, seen_generation=max(self.seen_generation, generation - 1))
            disk.write_registry_copy(doc, copy_index, generation=gen, token=token, writer=self.node_id,
                                     incarnation=self.incarnation, stamp_ms=int(time.time() * 1000))
            self.stats["writes"] += 1
            self.seen_generation = max(self.seen_generation, gen)
            self._heads = None  # the next poll reads again
            return gen

    def _note(self, items: tuple[object, object]) -> None:
        gens = _head_generations(*items)
        if gens:
            self.seen_generation = max(self.seen_generation, *gens)
