"""systemd's D-Bus API: one connection to the system bus, on a thread of its own.

How this works
--------------
``SystemdBus.open()`` starts a thread that runs an asyncio event loop, and on
it connects to the system bus with dbus-fast, calls ``Subscribe`` on
systemd's manager (systemd sends job and unit signals only to subscribed
clients) and adds a match for the manager's ``JobRemoved`` signal.  From
then on everything touching the connection runs on that loop:

* ``call(member, signature, body)`` calls a method (of the manager unless
  another object and interface are given) and returns the reply's body, or
  raises ``BusError`` with the error's name and text;
* ``run_job(member, ...)`` calls a method that queues a job (``StartUnit``,
  ``StopUnit``, ``StartTransientUnit``, ...) and waits for that job's
  ``JobRemoved``: its result is ``done``, ``failed``, ``timeout``,
  ``canceled``, ``dependency``, ``skipped``, ``invalid`` or
  ``unsupported``.  A ``JobRemoved`` that arrives before the method's reply
  has been handed back (the signal may be read first) is kept, so it is
  never missed;
* ``watch(unit, callback)`` adds a match for ``PropertiesChanged`` on the
  unit's object and keeps the unit's latest ``ActiveState``/``SubState``
  (and every other property the signals carry, per interface: the
  ``Service`` interface's ``Result`` and ``ExecMainStatus``, say) in a
  ``UnitWatch``; ``callback(state)`` is called on the loop whenever the
  active or sub state changes.  systemd sends the unit type's interface
  first and the generic ``Unit`` interface second, so when the callback
  sees ``failed`` the ``Result`` that explains it is already there.  The
  unit's object path is derived from its name (systemd's label escaping),
  so a unit can be watched before it exists -- a transient unit is watched
  before it is created, and no state change is missed.

Other threads use the ``*_sync`` forms (or ``submit`` for a coroutine of
their own): they hand the coroutine to the loop and wait for its result.
Callbacks run on the loop and must not block; calling a ``*_sync`` method
from the loop's own thread raises ``RuntimeError`` instead of deadlocking.
If the connection is lost, every waiting call fails with ``BusError`` and
``connected`` turns false; there is no automatic reconnection.

The launcher of client services (``clusterfw.subsystems.services``) and the
event manager's unit watcher share this module; nothing here knows what a
cluster service is.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, TypeVar

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"

FINISHED_JOBS_KEPT = 512
"""JobRemoved results kept for jobs nobody waits for yet (see ``run_job``)."""

T = TypeVar("T")


class BusError(Exception):
    """A D-Bus call failed, or the bus is unreachable.  ``str()`` is a
    sentence; ``name`` is the D-Bus error name when there was one."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class JobTimeout(BusError):
    """A queued job did not finish in time; ``job`` is its object path."""

    def __init__(self, message: str, job: str) -> None:
        super().__init__(message)
        self.job = job


@dataclass(frozen=True)
class UnitState:
    unit: str
    active_state: str
    """``active``, ``reloading``, ``inactive``, ``failed``, ``activating``,
    ``deactivating``, ``maintenance`` (``inactive`` for a unit systemd has
    not loaded)."""
    sub_state: str
    load_state: str = ""
    """``loaded``, ``not-found``, ...; '' when systemd has not loaded the unit."""

    @property
    def running(self) -> bool:
        return self.active_state in ("active", "reloading")

    @property
    def gone(self) -> bool:
        """Stopped or failed: nothing of the unit runs (as far as systemd's state says)."""
        return self.active_state in ("inactive", "failed")


def unit_object_path(unit: str) -> str:
    """The object path systemd gives ``unit`` (its bus label escaping: every
    byte that is not a letter or a digit, and a leading digit, becomes _xx)."""
    out = []
    for i, byte in enumerate(unit.encode()):
        ch = chr(byte)
        if (ch.isascii() and ch.isalpha()) or (i > 0 and ch.isascii() and ch.isdigit()):
            out.append(ch)
        else:
            out.append(f"_{byte:02x}")
    return f"{MANAGER_PATH}/unit/{''.join(out) or '_'}"


class UnitWatch:
    """What the ``PropertiesChanged`` signals said about one unit, latest first."""

    def __init__(self, unit: str, initial: UnitState) -> None:
        self.unit = unit
        self.path = unit_object_path(unit)
        self.state = initial
        self.properties: dict[str, dict[str, Any]] = {}
        self.callbacks: list[Callable[[UnitState], None]] = []

    def property(self, interface: str, name: str, default: Any = None) -> Any:
        return self.properties.get(interface, {}).get(name, default)


def _plain(value: Any) -> Any:
    """A D-Bus value without its Variant wrappers."""
    if isinstance(value, Variant):
        return _plain(value.value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _match_rule(**fields: str) -> str:
    return ",".join(f"{key}='{value}'" for key, value in fields.items())


class SystemdBus:
    def __init__(self, *, address: str | None = None, timeout_s: float = 10.0,
                 thread_name: str = "systemd-bus") -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._thread_name = thread_name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._bus: MessageBus | None = None
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._finished: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._watches: dict[str, UnitWatch] = {}
        self._by_path: dict[str, UnitWatch] = {}
        self._job_callbacks: list[Callable[[str, str, str], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------
    def open(self) -> None:
        """Start the bus thread, connect and subscribe; raises ``BusError``."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, args=(loop,), name=self._thread_name,
                                        daemon=True)
        self._thread.start()
        try:
            self.run_sync(self._connect(), self.timeout_s)
        except BaseException:
            self.close()
            raise

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _connect(self) -> None:
        where = self.address or f"the system bus ({SYSTEM_BUS_SOCKET})"
        try:
            if self.address:
                bus = MessageBus(bus_address=self.address)
            else:
                bus = MessageBus(bus_type=BusType.SYSTEM)
            await bus.connect()
        except Exception as exc:  # noqa: BLE001 - OSError, AuthError, ...: all mean "not reachable"
            raise BusError(f"cannot connect to {where}: {exc.__class__.__name__}: {exc}") from None
        self._bus = bus
        bus.add_message_handler(self._on_message)
        await self.call("AddMatch", "s", [_match_rule(type="signal", sender=SYSTEMD, path=MANAGER_PATH,
                                                      interface=MANAGER, member="JobRemoved")],
                        path=DBUS_PATH, interface=DBUS, destination=DBUS)
        await self.call("Subscribe")
        self._spawn(self._watch_disconnect(bus))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)  # a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def _watch_disconnect(self, bus: MessageBus) -> None:
        try:
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call,unused-ignore]
        except Exception:  # noqa: BLE001 - any end of the connection is an end
            pass
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(BusError("lost the connection to the system bus"))

    @property
    def connected(self) -> bool:
        return self._bus is not None and bool(self._bus.connected) and not self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("SystemdBus.open() was not called")
        return self._loop

    def in_bus_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def close(self) -> None:
        """Disconnect and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        bus = self._bus

        def stop() -> None:
            if bus is not None:
                try:
                    bus.disconnect()
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
            loop.call_later(0.05, loop.stop)  # let the disconnect be processed

        if loop.is_running():
            loop.call_soon_threadsafe(stop)
        if not self.in_bus_thread():
            thread.join(timeout=5)

    # -- running things on the loop ----------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coro.close()
            raise BusError("the connection to systemd is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the bus loop and wait for its result (from another thread)."""
        if self.in_bus_thread():
            coro.close()
            raise RuntimeError("a *_sync method was called on the bus thread; await the coroutine instead")
        future = self.submit(coro)
        try:
            return future.result(timeout=self.timeout_s if timeout_s is None else timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BusError(f"systemd did not answer within {self.timeout_s if timeout_s is None else timeout_s:g} s")\
                from None

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(fn)

    # -- calls ---------------------------------------------------------------------
    async def call(self, member: str, signature: str = "", body: list[Any] | tuple[Any, ...] = (), *,
                   path: str = MANAGER_PATH, interface: str = MANAGER, destination: str = SYSTEMD,
                   timeout_s: float | None = None) -> list[Any]:
        bus = self._bus
        if bus is None or not bus.connected:
            raise BusError("not connected to the system bus")
        msg = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=list(body))
        try:
            reply = await asyncio.wait_for(bus.call(msg), self.timeout_s if timeout_s is None else timeout_s)
        except asyncio.TimeoutError:
            raise BusError(f"{member} got no answer within "
                           f"{self.timeout_s if timeout_s is None else timeout_s:g} s") from None
        except BusError:
            raise
        except Exception as exc:  # noqa: BLE001 - dbus-fast's own errors, a dropped connection
            name = str(getattr(exc, "type", "") or "")
            text = str(getattr(exc, "text", "") or exc)
            raise BusError(f"{member} failed: {text}", name) from None
        if reply is None:
            raise BusError(f"{member} got no reply")
        if reply.message_type == MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else str(reply.error_name)
            raise BusError(f"{member} failed: {text}", str(reply.error_name or ""))
        return [_plain(v) for v in reply.body]

    async def get_property(self, path: str, interface: str, name: str) -> Any:
        body = await self.call("Get", "ss", [interface, name], path=path, interface=PROPERTIES)
        return body[0]

    async def get_all(self, path: str, interface: str) -> dict[str, Any]:
        body = await self.call("GetAll", "s", [interface], path=path, interface=PROPERTIES)
        value = body[0]
        return dict(value) if isinstance(value, dict) else {}

    async def unit_state(self, unit: str) -> UnitState:
        """The unit's real state now (``inactive`` when systemd has not loaded it);
        never loads a unit."""
        try:
            reply = await self.call("GetUnit", "s", [unit])
        except BusError as exc:
            if exc.name == NO_SUCH_UNIT:
                return UnitState(unit, "inactive", "dead", "")
            raise
        props = await self.get_all(str(reply[0]), UNIT)
        return UnitState(unit, str(props.get("ActiveState", "")), str(props.get("SubState", "")),
                         str(props.get("LoadState", "")))

    def unit_state_sync(self, unit: str, timeout_s: float | None = None) -> UnitState:
        return self.run_sync(self.unit_state(unit), timeout_s)

    async def run_job(self, member: str, signature: str, body: list[Any] | tuple[Any, ...],
                      timeout_s: float) -> str:
        """Call a method that queues a job and wait for the job's result
        (``JobRemoved``); raises ``JobTimeout`` after ``timeout_s``."""
        reply = await self.call(member, signature, body)
        job = str(reply[0])
        if job in self._finished:
            return self._finished.pop(job)
        fut: asyncio.Future[str] = self.loop.create_future()
        self._waiters[job] = fut
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            raise JobTimeout(f"job {job} ({member}) did not finish within {timeout_s:g} s", job) from None
        finally:
            self._waiters.pop(job, None)

    def on_job_removed(self, callback: Callable[[str, str, str], None]) -> None:
        """``callback(job_path, unit, result)`` for every JobRemoved (on the loop)."""
        self._job_callbacks.append(callback)

    # -- watching units ------------------------------------------------------------
    async def watch(self, unit: str, callback: Callable[[UnitState], None] | None = None) -> UnitWatch:
        """Watch ``unit`` (it need not exist yet); ``callback`` on each state change."""
        found = self._watches.get(unit)
        if found is None:
            found = UnitWatch(unit, UnitState(unit, "", "", ""))
            self._watches[unit] = found
            self._by_path[found.path] = found
            await self.call("AddMatch", "s", [self._properties_rule(found.path)], path=DBUS_PATH,
                            interface=DBUS, destination=DBUS)
            current = await self.unit_state(unit)
            if not found.state.active_state:  # no signal came in meanwhile
                found.state = current
        if callback is not None and callback not in found.callbacks:
            found.callbacks.append(callback)
        return found

    def watch_sync(self, unit: str, callback: Callable[[UnitState], None] | None = None) -> UnitWatch:
        return self.run_sync(self.watch(unit, callback))

    async def unwatch(self, unit: str, callback: Callable[[UnitState], None] | None = None) -> None:
        """Drop ``callback`` (every callback when None); the match goes with the last one."""
        found = self._watches.get(unit)
        if found is None:
            return
        if callback is None:
            found.callbacks.clear()
        elif callback in found.callbacks:
            found.callbacks.remove(callback)
        if found.callbacks and callback is not None:
            return
        del self._watches[unit]
        self._by_path.pop(found.path, None)
        try:
            await self.call("RemoveMatch", "s", [self._properties_rule(found.path)], path=DBUS_PATH,
                            interface=DBUS, destination=DBUS)
        except BusError:
            pass

    def unwatch_sync(self, unit: str, callback: Callable[[UnitState], None] | None = None) -> None:
        self.run_sync(self.unwatch(unit, callback))

    def watched(self, unit: str) -> UnitWatch | None:
        return self._watches.get(unit)

    @staticmethod
    def _properties_rule(path: str) -> str:
        return _match_rule(type="signal", sender=SYSTEMD, path=path, interface=PROPERTIES,
                           member="PropertiesChanged")

    # -- incoming signals (on the loop) ----------------------------------------------
    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "JobRemoved" and msg.interface == MANAGER and len(msg.body) >= 4:
            self._job_removed(str(msg.body[1]), str(msg.body[2]), str(msg.body[3]))
        elif msg.member == "PropertiesChanged" and msg.interface == PROPERTIES and len(msg.body) >= 2:
            found = self._by_path.get(str(msg.path))
            if found is not None:
                self._properties_changed(found, str(msg.body[0]), _plain(msg.body[1]), list(msg.body[2:3]))

    def _job_removed(self, job: str, unit: str, result: str) -> None:
        fut = self._waiters.get(job)
        if fut is not None and not fut.done():
            fut.set_result(result)
        else:
            self._finished[job] = result
            while len(self._finished) > FINISHED_JOBS_KEPT:
                self._finished.popitem(last=False)
        for callback in list(self._job_callbacks):
            try:
                callback(job, unit, result)
            except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                pass

    def _properties_changed(self, found: UnitWatch, interface: str, changed: Any, invalidated: list[Any]) -> None:
        props = found.properties.setdefault(interface, {})
        if isinstance(changed, dict):
            props.update(changed)
        if interface == UNIT and ("ActiveState" in props or "SubState" in props):
            before = found.state
            found.state = UnitState(found.unit, str(props.get("ActiveState", before.active_state)),
                                    str(props.get("SubState", before.sub_state)),
                                    str(props.get("LoadState", before.load_state)))
            if (found.state.active_state, found.state.sub_state) != (before.active_state, before.sub_state):
                for callback in list(found.callbacks):
                    try:
                        callback(found.state)
                    except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                        pass
        names = invalidated[0] if invalidated and isinstance(invalidated[0], list) else []
        if interface == UNIT and ("ActiveState" in names or "SubState" in names):
            self._spawn(self._refresh(found))

    async def _refresh(self, found: UnitWatch) -> None:
        """systemd invalidated the state instead of sending it: read it."""
        try:
            props = await self.get_all(found.path, UNIT)
        except BusError:
            return
        self._properties_changed(found, UNIT, {k: props[k] for k in ("ActiveState", "SubState", "LoadState")
                                               if k in props}, [])
