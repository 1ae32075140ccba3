"""Watchers: what detects events and hands them to the event manager.

How this works
--------------
A watcher is a ``Watcher``: the event manager calls ``start(emit)`` once,
then ``update(events)`` after every look at the enabled event groups (the
enabled events of this watcher: what it must look for now), and ``stop()``
at the end.  Whenever the watcher sees something it calls
``emit(occurrence)`` with a ``clusterfw.core.events.Occurrence``: its name
and every OUT parameter of its schema (``clusterfw.core.events.SCHEMAS``).
``emit`` never blocks and may be called from any thread; the event manager
matches the occurrence against the enabled events, runs their actions and
records them.  A watcher never runs actions, reads the registry or writes
the event log.

Adding a watcher: give it a ``Schema`` in ``SCHEMAS`` (its IN parameters,
each compared with one OUT parameter, and its OUT parameters), subclass
``Watcher`` here with ``name`` the schema's name, and add it to the event
manager's list (``manager.EventManager.watchers``).  Definitions and their
validation follow from the schema.

* ``MembershipWatcher``: the event manager's own level-40 notifications
  (the manager hands it each batch it recorded): one occurrence per entry,
  OUT ``node``, ``transition`` (join, leave, forced-leave), ``epoch``,
  ``incarnation`` (of the node in transition, from the daemon's status while
  the batch is unacked; '' when it cannot be had), ``time``.
* ``UnitWatcher``: systemd units over systemd's D-Bus API
  (``clusterfw.host.systemd_bus.SystemdBus``: ``Subscribe``, a match on
  ``PropertiesChanged`` of each watched unit's object, ``JobRemoved``).  It
  connects when the first unit event is enabled and watches exactly the
  units the enabled events name.  An occurrence is a unit *entering* an
  active state (a change of ``ActiveState``; a change of the sub state alone
  is none): OUT ``unit``, ``active_state``, ``sub_state``, ``result`` (the
  ``Service`` interface's ``Result``: ``success``, ``exit-code``,
  ``signal``, ...), ``time``.  A ``JobRemoved`` for a watched unit makes it
  read the unit's state again, so a change whose signal was missed is still
  seen.  The state a unit has when it is first watched is no occurrence.
  Without a system bus (no systemd as PID 1) it logs one notice and tries
  again every ``RETRY_S``.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from clusterfw.core.events import MEMBERSHIP, UNIT, EventDef, Occurrence
from clusterfw.host.journal import Journal
from clusterfw.host.systemd_bus import SERVICE, BusError, SystemdBus, UnitState

from .record import iso_utc

Emit = Callable[[Occurrence], None]
RETRY_S = 30.0


class Watcher:
    """The interface every watcher implements (see the module doc)."""

    name: str = ""

    def start(self, emit: Emit) -> None:
        raise NotImplementedError

    def update(self, events: list[EventDef]) -> None:
        """The enabled events of this watcher, after every look at the groups."""

    def stop(self) -> None:
        raise NotImplementedError


class MembershipWatcher(Watcher):
    name = MEMBERSHIP

    def __init__(self) -> None:
        self._emit: Emit | None = None

    def start(self, emit: Emit) -> None:
        self._emit = emit

    def stop(self) -> None:
        self._emit = None

    def notified(self, records: list[dict[str, object]], incarnations: dict[str, str]) -> None:
        """The records the event manager wrote for one batch (record.py)."""
        emit = self._emit
        if emit is None:
            return
        for r in records:
            node = str(r["node"])
            emit(Occurrence(MEMBERSHIP, {"node": node, "transition": str(r["event"]), "epoch": str(r["epoch"]),
                                         "incarnation": incarnations.get(node, ""), "time": str(r["time"])}))


class UnitWatcher(Watcher):
    name = UNIT

    def __init__(self, log: Journal, *, address: str | None = None,
                 bus_factory: Callable[[], SystemdBus] | None = None, retry_s: float = RETRY_S) -> None:
        self.log = log
        self._factory = bus_factory or (lambda: SystemdBus(address=address, thread_name="events-unit-watcher"))
        self.retry_s = retry_s
        self._emit: Emit | None = None
        self._bus: SystemdBus | None = None
        self._units: set[str] = set()
        self._last: dict[str, str] = {}  # unit -> the active state last seen
        self._lock = threading.Lock()
        self._next_try = 0.0
        self._told = ""

    # -- the interface ----------------------------------------------------------
    def start(self, emit: Emit) -> None:
        self._emit = emit

    def update(self, events: list[EventDef]) -> None:
        wanted = {e.in_params["unit"] for e in events if e.watcher == UNIT}
        bus = self._bus
        if bus is not None and not bus.connected:
            self.log.warning("lost the connection to the system bus: connecting again to watch units")
            self._drop_bus()
            bus = None
        if not wanted:
            if bus is not None:
                self._drop_bus()
            return
        if bus is None:
            bus = self._connect()
            if bus is None:
                return
        for unit in sorted(wanted - self._units):
            try:
                watch = bus.watch_sync(unit, self._changed)
            except (BusError, RuntimeError) as exc:
                self.log.warning(f"cannot watch {unit}: {exc}; trying again at the next look")
                continue
            with self._lock:
                self._units.add(unit)
                self._last.setdefault(unit, watch.state.active_state)
            self.log.info(f"watching unit {unit} ({watch.state.active_state or 'unknown'})")
        for unit in sorted(self._units - wanted):
            try:
                bus.unwatch_sync(unit, self._changed)
            except (BusError, RuntimeError):
                pass
            with self._lock:
                self._units.discard(unit)
                self._last.pop(unit, None)

    def stop(self) -> None:
        self._emit = None
        self._drop_bus()

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    def watching(self) -> list[str]:
        with self._lock:
            return sorted(self._units)

    # -- the bus ------------------------------------------------------------------
    def _connect(self) -> SystemdBus | None:
        now = time.monotonic()
        if now < self._next_try:
            return None
        bus = self._factory()
        try:
            bus.open()
        except BusError as exc:
            self._next_try = now + self.retry_s
            text = str(exc)
            if text != self._told:
                self._told = text
                self.log.notice(f"unit events are not watched on this node: no system bus with systemd ({text}); "
                                f"trying again every {self.retry_s:.0f} s")
            return None
        self._told = ""
        bus.on_job_removed(self._job_removed)
        self._bus = bus
        self.log.info("connected to systemd's D-Bus API to watch units")
        return bus

    def _drop_bus(self) -> None:
        bus, self._bus = self._bus, None
        with self._lock:
            self._units.clear()
            self._last.clear()
        if bus is not None:
            bus.close()

    # -- on the bus loop ------------------------------------------------------------
    def _changed(self, state: UnitState) -> None:
        bus = self._bus
        watch = bus.watched(state.unit) if bus is not None else None
        result = str(watch.property(SERVICE, "Result", "") or "") if watch is not None else ""
        self._seen(state, result)

    def _seen(self, state: UnitState, result: str) -> None:
        with self._lock:
            if state.unit not in self._units:
                return
            before = self._last.get(state.unit)
            self._last[state.unit] = state.active_state
        emit = self._emit
        if emit is None or before is None or before == state.active_state or not state.active_state:
            return
        emit(Occurrence(UNIT, {"unit": state.unit, "active_state": state.active_state, "sub_state": state.sub_state,
                               "result": result, "time": iso_utc(time.time())}))

    def _job_removed(self, _job: str, unit: str, _result: str) -> None:
        bus = self._bus
        with self._lock:
            watched = unit in self._units
        if bus is None or not watched:
            return
        try:
            bus.submit(self._reread(bus, unit))
        except BusError:
            pass

    async def _reread(self, bus: SystemdBus, unit: str) -> None:
        """After a job of the unit ended: its state now, in case a signal was missed."""
        try:
            state = await bus.unit_state(unit)
            if not state.load_state:  # unloaded (a transient unit collected): its last signal said it all
                return
            watch = bus.watched(unit)
            props = await bus.get_all(watch.path, SERVICE) if watch is not None else {}
        except BusError:
            return
        self._seen(state, str(props.get("Result", "") or ""))


__all__ = ["Emit", "MembershipWatcher", "UnitWatcher", "Watcher"]
