"""The daemon's subsystem hub: one endpoint per registered level, local
(in-process) or external (a client of the local socket), and the rules for
delivering notifications and accepting acks.

How this works
--------------
Registrations are collected before the daemon requests its join: NodeCore
takes them when it is created and writes them into the node's slot with the
join request, and the cluster's view of this node's levels is fixed from
then on.  So an external subsystem must register *before* the join: the
daemon's ``--wait-for-subsystem NAME`` delays the join until NAME
registered.  After the join a new registration is refused; an external
subsystem whose client went away may re-attach with the very same (level,
name, barriers) and gets its unacknowledged notification again.

Per level the hub keeps the newest notification that has not been acked
(``pending``).  An ack must name exactly that batch; an ack for an older
(superseded) or unknown batch is refused.  A notification for an external
level whose client is gone stays pending: the subsystem is *hung*, and if it
does not come back and ack within the master's transition timeout, the
master forces this node out (the non-acker is the suspect).

Locking: the hub has its own lock.  It never calls into NodeCore while
holding it (``ack_core`` is called after releasing it) and is never called
with the core lock held.  Under it, it only queues: a local subsystem's
``deliver`` and the socket server's ``push`` never block.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from clusterfw.core.model import REGISTRATIONS_MAX, Registration, ViewRecord
from clusterfw.subsystems.base import LocalSubsystem, Notification


@dataclass
class Endpoint:
    registration: Registration
    local: LocalSubsystem | None = None
    conn_id: int | None = None  # the attached socket client of an external level
    pending: Notification | None = None
    delivered_to: int | None = None  # conn_id the pending notification was sent to
    last_acked: int = 0

    @property
    def external(self) -> bool:
        return self.local is None


class RegistrationError(Exception):
    pass


class Hub:
    def __init__(self, *, ack_core: Callable[[int, int], None], send: Callable[[int, Notification], bool],
                 log: Callable[[str, str], None]) -> None:
        self._ack_core = ack_core
        self._send = send
        self._log = log
        self._lock = threading.Lock()
        self._endpoints: dict[int, Endpoint] = {}
        self._frozen = False  # the join was requested: registrations are fixed
        self.changed = threading.Event()  # set whenever a registration arrives

    # ------------------------------------------------------------ registering
    def add_local(self, sub: LocalSubsystem) -> None:
        reg = sub.registration()
        with self._lock:
            self._check_new(reg)
            self._endpoints[reg.level] = Endpoint(reg, local=sub)
        level = reg.level

        def ack(batch: int) -> None:
            self._local_ack(level, batch)

        sub.start(ack, lambda text: self._log("info", text))

    def _check_new(self, reg: Registration) -> None:
        if reg.level in self._endpoints:
            other = self._endpoints[reg.level].registration
            raise RegistrationError(f"level {reg.level} is already registered by '{other.name}': "
                                    f"pick another level")
        for ep in self._endpoints.values():
            if ep.registration.name == reg.name:
                raise RegistrationError(f"a subsystem named '{reg.name}' is already registered at level "
                                        f"{ep.registration.level}: pick another name")
        if self._frozen:
            raise RegistrationError(
                f"the daemon already requested its join with its registrations fixed; level {reg.level} "
                f"('{reg.name}') cannot be added now: restart the daemon with --wait-for-subsystem "
                f"{reg.name} and register before the join")
        if len(self._endpoints) >= REGISTRATIONS_MAX:
            raise RegistrationError(f"at most {REGISTRATIONS_MAX} subsystems per node, and "
                                    f"{len(self._endpoints)} are registered")

    def add_external(self, conn_id: int, reg: Registration) -> bool:
        """Register (or re-attach) an external subsystem on connection
        ``conn_id``.  Returns True when it re-attached.  Raises
        RegistrationError with the reason and the fix."""
        with self._lock:
            for ep in self._endpoints.values():
                if ep.conn_id == conn_id:
                    raise RegistrationError(f"this connection already registered level "
                                            f"{ep.registration.level} ('{ep.registration.name}'); "
                                            f"open another connection for another level")
            existing = self._endpoints.get(reg.level)
            if existing is not None and existing.external and existing.registration == reg:
                ep = existing
                if ep.conn_id is not None:
                    raise RegistrationError(f"level {reg.level} ('{reg.name}') is attached to another "
                                            f"connection that is still open")
                ep.conn_id = conn_id
                resend = ep.pending
                ep.delivered_to = conn_id if resend is not None else None
                reattached = True
                if resend is not None:
                    self._send(conn_id, resend)  # under the lock: keeps the order of notifications
            else:
                self._check_new(reg)
                self._endpoints[reg.level] = Endpoint(reg, conn_id=conn_id)
                resend = None
                reattached = False
        self.changed.set()
        if resend is not None:
            self._log("notice", f"{reg.name} (level {reg.level}) re-attached: resent {resend.describe()}")
        return reattached

    def detach(self, conn_id: int) -> None:
        with self._lock:
            for ep in self._endpoints.values():
                if ep.conn_id == conn_id:
                    ep.conn_id = None
                    ep.delivered_to = None
                    if self._frozen:
                        pending = f"; batch {ep.pending.batch} is unacked: the subsystem is hung" \
                            if ep.pending is not None else ""
                        self._log("warning", f"external subsystem {ep.registration.name} (level "
                                  f"{ep.registration.level}) disconnected{pending}")
                    else:
                        del self._endpoints[ep.registration.level]
                    break

    def freeze(self) -> list[Registration]:
        """Fix the registrations (the join is being requested) and return them."""
        with self._lock:
            self._frozen = True
            return [ep.registration for ep in sorted(self._endpoints.values(), key=lambda e: e.registration.level)]

    def placeholder_levels(self) -> frozenset[int]:
        """The levels held by in-process placeholders (shown as ``placeholder``)."""
        with self._lock:
            return frozenset(lv for lv, ep in self._endpoints.items() if ep.local is not None and ep.local.placeholder)

    def registered_names(self) -> set[str]:
        with self._lock:
            return {ep.registration.name for ep in self._endpoints.values()}

    def describe(self) -> list[dict[str, object]]:
        with self._lock:
            return [{"level": ep.registration.level, "name": ep.registration.name,
                     "barriers": list(ep.registration.barriers),
                     "kind": "external" if ep.external else "in-process",
                     "placeholder": ep.local is not None and ep.local.placeholder,
                     "attached": True if not ep.external else ep.conn_id is not None,
                     "pending_batch": ep.pending.batch if ep.pending is not None else None,
                     "last_acked": ep.last_acked}
                    for ep in sorted(self._endpoints.values(), key=lambda e: e.registration.level)]

    # -------------------------------------------------------------- delivering
    def view_adopted(self, view: ViewRecord) -> None:
        """Every in-process subsystem learns the adopted view (the same
        door as its notifications); external ones learn it with their next."""
        with self._lock:
            locals_ = [ep.local for ep in self._endpoints.values() if ep.local is not None]
            for local in locals_:
                local.deliver(view)

    def deliver(self, notification: Notification) -> None:
        with self._lock:
            ep = self._endpoints.get(notification.level)
            if ep is None:
                raise AssertionError(f"notified at level {notification.level}, which is not registered here")
            ep.pending = notification
            local, conn_id = ep.local, ep.conn_id
            ep.delivered_to = conn_id
            # Under the lock (both only queue): notifications keep their order.
            if local is not None:
                local.deliver(notification.view, notification)
                sent = True
            else:
                sent = conn_id is not None and self._send(conn_id, notification)
        if not sent:
            self._log("warning", f"{ep.registration.name} (level {notification.level}) has no client attached: "
                      f"{notification.describe()} waits; unacked, the master forces this node out "
                      f"after its transition timeout")

    def _local_ack(self, level: int, batch: int) -> None:
        error = self._accept_ack(level, batch, conn_id=None)
        if error is not None:
            self._log("warning", f"in-process ack refused: {error}")

    def external_ack(self, conn_id: int, batch: int) -> str | None:
        """An ack from a socket client; returns the error, or None if accepted."""
        with self._lock:
            level = next((lv for lv, ep in self._endpoints.items() if ep.conn_id == conn_id), None)
        if level is None:
            return "this connection has not registered a subsystem: send 'register' first"
        return self._accept_ack(level, batch, conn_id)

    def _accept_ack(self, level: int, batch: int, conn_id: int | None) -> str | None:
        with self._lock:
            ep = self._endpoints.get(level)
            if ep is None:
                return f"level {level} is not registered"
            if ep.pending is None:
                if batch <= ep.last_acked:
                    return f"batch {batch} at level {level} was already acked"
                return f"batch {batch} was never delivered at level {level}: nothing is outstanding"
            if batch != ep.pending.batch:
                if batch < ep.pending.batch:
                    return (f"batch {batch} at level {level} was superseded by batch {ep.pending.batch}: "
                            f"abandon its work and ack {ep.pending.batch} when done")
                return f"batch {batch} was never delivered at level {level} (outstanding: {ep.pending.batch})"
            if conn_id is not None and ep.delivered_to != conn_id:
                return f"batch {batch} was not delivered to this connection"
            ep.pending = None
            ep.last_acked = batch
        self._ack_core(level, batch)
        return None

    def stop(self) -> None:
        with self._lock:
            locals_ = [ep.local for ep in self._endpoints.values() if ep.local is not None]
        for sub in locals_:
            sub.stop()
