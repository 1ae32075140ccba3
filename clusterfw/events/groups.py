"""The event groups enabled on this node, as the node daemon tells them.

How this works
--------------
A thread asks the node daemon (``clusterfw.client``; ``{"op": "service",
"action": "dump", "args": {"node": NODE}}``: the registry, with only the
services that have an entry on this node) every ``interval_s`` (1 s) and at
once after each ``kick`` (the event manager kicks after every notification).
``clusterfw.core.events.enabled_groups`` picks the groups enabled here: the
services registered on this node that define events.  After each look,
``on_look(groups)`` is called on this thread (the event manager hands every
watcher its enabled events), and a change is logged: which groups were
enabled, which disabled.

When no daemon answers, or it runs without its registration & launch
service, nothing is registered on this node: no group is enabled.  Any other
failure (no answer in time, another refusal, a reply that does not decode)
keeps the groups of the last look and is logged once until a look succeeds
again.

``kick()`` returns a look number; ``wait(number)`` waits until a look that
began after that kick has ended, so an occurrence detected by a
notification is matched against the groups as they were after it.
"""
from __future__ import annotations

import threading
from typing import Callable

from clusterfw.client import Client, ClientError, DaemonUnavailable, RequestFailed
from clusterfw.core.events import EventGroup, enabled_groups
from clusterfw.core.services import Registry
from clusterfw.host.journal import Journal

INTERVAL_S = 1.0
NO_SERVICES = "runs without its registration & launch service"
"""What the daemon's refusal says when it has no services subsystem (node/daemon.py)."""
ASK_TIMEOUT_S = 5.0


def describe(groups: list[EventGroup]) -> str:
    return ", ".join(f"{g.service} ({len(g.events)} event{'s' if len(g.events) != 1 else ''})"
                     for g in groups) or "none"


class GroupPoller:
    def __init__(self, socket_path: str, node: Callable[[], str], log: Journal, *,
                 on_look: Callable[[list[EventGroup]], None] | None = None, interval_s: float = INTERVAL_S) -> None:
        self.socket_path = socket_path
        self.node = node
        self.log = log
        self.on_look = on_look
        self.interval_s = interval_s
        self._groups: list[EventGroup] = []
        self._cond = threading.Condition()
        self._begun = 0
        self._ended = 0
        self._kicked = False
        self._stopping = False
        self._told = ""
        self._thread: threading.Thread | None = None

    # -- for the event manager -----------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="event-groups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(ASK_TIMEOUT_S + 1)

    def current(self) -> list[EventGroup]:
        with self._cond:
            return list(self._groups)

    def kick(self) -> int:
        with self._cond:
            self._kicked = True
            self._cond.notify_all()
            return self._begun + 1

    def wait(self, look: int, timeout_s: float) -> bool:
        """True once look number ``look`` (or a later one) has ended."""
        with self._cond:
            return self._cond.wait_for(lambda: self._ended >= look or self._stopping, timeout_s) \
                and self._ended >= look

    # -- the thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._kicked or self._stopping, self.interval_s)
                if self._stopping:
                    return
                self._kicked = False
                self._begun += 1
                number = self._begun
            try:
                self.look()
            except Exception as exc:  # noqa: BLE001 - the thread must go on; the next look retries
                self._tell(f"looking at the event groups failed: {type(exc).__name__}: {exc}")
            finally:
                with self._cond:
                    self._ended = max(self._ended, number)
                    self._cond.notify_all()

    def look(self) -> list[EventGroup]:
        """Ask the daemon once; returns the groups enabled here now."""
        node = self.node()
        groups = self.current()
        if node and node != "?":
            try:
                reply = Client(self.socket_path, timeout_s=ASK_TIMEOUT_S).request(
                    "service", action="dump", args={"node": node})
                groups = enabled_groups(Registry.from_json(reply.get("registry")), node)
                self._told = ""
            except DaemonUnavailable:
                groups = []
            except RequestFailed as exc:
                if NO_SERVICES in str(exc):  # the daemon runs without services: nothing is registered here
                    groups = []
                    self._tell(f"the node daemon runs no services ({exc}): no event group is enabled")
                else:
                    self._tell(f"the node daemon refused to tell the services on {node} ({exc}); keeping the "
                               f"event groups of the last look: {describe(groups)}")
            except ClientError as exc:
                self._tell(f"cannot ask the node daemon for the services on {node} ({exc}); keeping the event "
                           f"groups of the last look: {describe(groups)}")
            except (KeyError, TypeError, ValueError) as exc:
                self._tell(f"the node daemon's registry does not decode ({type(exc).__name__}: {exc}); keeping the "
                           f"event groups of the last look: {describe(groups)}")
        self._adopt(groups)
        if self.on_look is not None:
            self.on_look(groups)
        return groups

    def _adopt(self, groups: list[EventGroup]) -> None:
        with self._cond:
            before, self._groups = self._groups, groups
        was = {g.service: g for g in before}
        now = {g.service: g for g in groups}
        enabled = [g for name, g in now.items() if name not in was]
        changed = [g for name, g in now.items() if name in was and was[name] != g]
        disabled = [name for name in was if name not in now]
        if enabled:
            self.log.notice(f"event groups enabled on this node (the service is registered here): "
                            f"{describe(enabled)}")
        if changed:
            self.log.notice(f"event groups changed (a new definition): {describe(changed)}")
        if disabled:
            self.log.notice(f"event groups disabled on this node (the service is no longer registered here): "
                            f"{', '.join(disabled)}")

    def _tell(self, text: str) -> None:
        if text != self._told:
            self._told = text
            self.log.warning(text)


__all__ = ["GroupPoller", "describe"]
