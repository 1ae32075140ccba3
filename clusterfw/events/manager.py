"""The event manager process (``clusterfw event-manager``): an external
subsystem of the node daemon at level 40 that records every membership
transition it is notified of, and runs the actions of the events defined
by the services registered on its node.

How this works
--------------
1. Open the event log (eventlog.py; default ``/var/lib/clusterfw/events.jsonl``)
   and remember the last notification recorded in it.
2. Register with the node daemon over its socket (``clusterfw.client.Subsystem``)
   as level 40, name ``events``, barriers (1, 1, 1).  The daemon fixes a
   node's registrations when it requests its join, so it must be started with
   ``--wait-for-subsystem events``; a refusal (the daemon already joined
   without us, another event manager is attached) exits 78.  While no daemon
   answers, retry every ``retry_s``.  Once registered, ask the daemon which
   node it runs (the *observer* of every record) and tell systemd READY=1.
3. For every notification: one record per entry (record.py), appended to
   the log with fsync, logged to the journal (or printed on stdout when not
   run by systemd), then ack the batch.  A notification delivered again after
   a re-attach (same level, epoch, batch and entries as the last one
   recorded) is acked without being recorded twice.  If the log cannot be
   written the batch is still acked and the error logged: a broken event log
   must not hang the cluster's transitions (an unacked level gets this node
   forced out).
4. When the daemon closes the connection (it exited, or restarts), register
   again as soon as a daemon answers: the same daemon re-attaches us and
   sends any unacked notification again; a new daemon, waiting for
   ``events``, takes us as a new registration.
5. SIGTERM/SIGINT: exit 0 at once.  With ``leave_on_stop`` (what
   clusterfw-events.service uses) the first SIGTERM while registered first
   asks the daemon to leave the cluster and keeps acking until it has left:
   the daemon's graceful leave notifies level 40 first, so the event manager
   must outlive it (see systemd/clusterfw-events.service for why the units are
   ordered so that the event manager is stopped first).

6. Events (docs/events.md, "Events"): the enabled event groups come from
   the daemon (groups.py: every second and after each notification, the
   services registered on this node and their events).  The watchers
   (watchers.py) emit occurrences: the membership watcher one per entry of
   each batch recorded in 3 (with the node's incarnation, asked of the
   daemon before the ack), the unit watcher one per unit entering an
   active state.  Each occurrence is matched against the enabled events
   (``clusterfw.core.events.matches``; one that came from a notification
   against the groups as they were after it); each match runs its action
   (actions.py: the expanded argv, no shell, 30 s at most) on a thread of
   its own, and when the action has ended the occurrence is recorded in
   the log with its OUT parameters and the action's exit status.  Nothing
   of this delays an ack: a slow action must not hold up the cluster.

Threads: the main thread does 1-5; with ``leave_on_stop`` one more thread
waits for the leave and then wakes the main thread (SIGUSR1).  Signal
handlers only set flags (and start that thread); the blocking waits of the
main thread are the only places a signal may interrupt.  For 6: the groups
thread, the dispatch thread (matching), one thread per running action
(at most ``ACTIONS_AT_ONCE``), and the unit watcher's bus thread.
"""
from __future__ import annotations

import contextlib
import queue
import signal
import sys
import threading
import time
from typing import Any, Iterator

from clusterfw.client import Client, ClientError, DaemonUnavailable, RequestFailed, Subsystem
from clusterfw.core import levels
from clusterfw.core.events import EventDef, EventGroup, Occurrence, expand, matches, watched
from clusterfw.exitcodes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from clusterfw.host.journal import Journal, stderr_is_journal
from clusterfw.host.notify import Notifier
from clusterfw.subsystems.base import Notification

from . import record as rec
from .actions import ACTION_TIMEOUT_S, action_environment, run_action
from .eventlog import EventLog, EventLogError
from .groups import GroupPoller
from .watchers import MembershipWatcher, UnitWatcher, Watcher

LEVEL = levels.EVENTS
NAME = levels.NAMES[LEVEL]
BARRIERS = (1, 1, 1)
RETRY_S = 0.5
WAITING_LOG_EVERY_S = 30.0
STILL_OPEN_GRACE_S = 10.0  # our previous connection may not be closed on the daemon's side yet
LEAVE_TIMEOUT_S = 80.0  # above the daemon's 60 s leave bound, below the unit's TimeoutStopSec
ACTIONS_AT_ONCE = 8
"""Actions running at once; an occurrence past that waits for one to end."""
FRESH_GROUPS_WAIT_S = 5.0
"""How long a notification's occurrences wait for the look at the groups after it."""
INCARNATION_ASK_S = 2.0


class _Interrupted(Exception):
    """Raised by a signal handler to end a blocking wait of the main thread."""


class _Refused(Exception):
    pass


class EventManager:
    def __init__(self, socket_path: str, log_file: EventLog, *, journal: Journal | None = None,
                 notifier: Notifier | None = None, leave_on_stop: bool = False,
                 leave_timeout_s: float = LEAVE_TIMEOUT_S, retry_s: float = RETRY_S,
                 echo: bool | None = None, watchers: list[Watcher] | None = None,
                 action_timeout_s: float = ACTION_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.log_file = log_file
        self.log = journal or Journal("?", identifier="clusterfw-events")
        self.notifier = notifier or Notifier()
        self.leave_on_stop = leave_on_stop
        self.leave_timeout_s = leave_timeout_s
        self.retry_s = retry_s
        self.echo = (not stderr_is_journal()) if echo is None else echo  # events on stdout, not the journal
        self.observer = "?"
        self.recorded = 0
        self._last_key: tuple[Any, ...] | None = None
        self._stopping = False
        self._leaving = False
        self._registered = False
        self._interruptible_now = False
        self._ready_sent = False
        self._main_ident = threading.get_ident()
        self._leave_thread: threading.Thread | None = None
        # events: groups, watchers, occurrences, actions
        self.action_timeout_s = action_timeout_s
        self.membership = MembershipWatcher()
        self.watchers: list[Watcher] = [self.membership, UnitWatcher(self.log)] if watchers is None else watchers
        self.groups = GroupPoller(socket_path, lambda: self.observer, self.log, on_look=self._looked)
        self._occurrences: queue.Queue[tuple[Occurrence, int] | None] = queue.Queue()
        self._action_slots = threading.BoundedSemaphore(ACTIONS_AT_ONCE)
        self._dispatcher: threading.Thread | None = None
        self.actions_run = 0

    # ----------------------------------------------------------------- signals
    def _install_signals(self) -> None:
        self._main_ident = threading.get_ident()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # No logging here: the journal's lock may be held by the code this interrupted.
        if (signum != signal.SIGUSR1 and self.leave_on_stop and self._registered and not self._leaving
                and not self._stopping):
            self._leaving = True
            self._leave_thread = threading.Thread(target=self._leave, args=(signal.Signals(signum).name,),
                                                  name="leave", daemon=True)
            self._leave_thread.start()
            return
        self._stopping = True
        if self._interruptible_now:
            raise _Interrupted()

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """A blocking wait that a signal may end (by raising _Interrupted)."""
        self._interruptible_now = True
        try:
            if self._stopping:
                raise _Interrupted()
            yield
        finally:
            self._interruptible_now = False

    def _sleep(self, seconds: float) -> None:
        with self._interruptible():
            time.sleep(seconds)

    def _leave(self, signame: str) -> None:
        self.log.notice(f"{signame}: this node leaves the cluster before the event manager stops "
                        f"(--leave-on-stop; at most {self.leave_timeout_s:.0f} s)")
        try:
            final = Client(self.socket_path).leave(timeout_s=self.leave_timeout_s)
            if final.get("op") == "stopped" and final.get("exit", 0) == 0:
                self.log.notice(f"the node left the cluster: {final.get('reason')}")
            else:
                self.log.warning(f"the node daemon ended the leave with {final}")
        except DaemonUnavailable:
            self.log.notice("no node daemon answers: nothing to leave")
        except RequestFailed as exc:
            self.log.warning(f"the node daemon refused to leave: {exc}")
        except ClientError as exc:
            self.log.warning(f"the leave did not complete: {exc}")
        self._stopping = True
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.pthread_kill(self._main_ident, signal.SIGUSR1)

    # -------------------------------------------------------------------- run
    def run(self) -> int:
        try:
            self.log_file.open()
        except EventLogError as exc:
            self.log.error(str(exc))
            return EXIT_FAILED
        self._last_key = self.log_file.last_key()
        self._install_signals()
        self.log.notice(f"event manager (level {LEVEL}, '{NAME}'): recording to {self.log_file.path} "
                        f"(rotated at {self.log_file.max_bytes} bytes); node daemon socket {self.socket_path}")
        self.start_events()
        try:
            code = self._loop()
        except _Interrupted:
            code = EXIT_OK
        finally:
            self.stop_events()
            self.log_file.close()
        if code == EXIT_OK:
            self.log.notice(f"stopped ({self.recorded} events recorded)")
            self.notifier.stopping("stopped")
        return code

    def _loop(self) -> int:
        while True:
            try:
                sub = self._register()
            except _Refused as exc:
                self.log.error(f"the node daemon refused the registration: {exc}")
                self.notifier.stopping(f"registration refused: {exc}")
                return EXIT_CONFIG
            reason = "the node daemon closed the connection"
            try:
                self._serve(sub)
            except ClientError as exc:
                reason = str(exc)
            finally:
                self._registered = False
                sub.close()
            if self._stopping or self._leaving:
                if self._leave_thread is not None:
                    self._leave_thread.join(5.0)  # its last word: how the leave ended
                return EXIT_OK
            self.log.warning(f"{reason}: registering again as soon as a node daemon answers on "
                             f"{self.socket_path}")
            self.notifier.status(f"waiting for the node daemon on {self.socket_path}")

    def _register(self) -> Subsystem:
        first_failure: float | None = None
        last_logged = 0.0
        while True:
            sub = Subsystem(LEVEL, NAME, BARRIERS, socket_path=self.socket_path)
            try:
                with self._interruptible():
                    reply = sub.register()
                break
            except RequestFailed as exc:
                sub.close()
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                if "still open" in str(exc) and now - first_failure < STILL_OPEN_GRACE_S:
                    self._sleep(self.retry_s)
                    continue
                raise _Refused(str(exc)) from None
            except ClientError as exc:
                sub.close()
                now = time.monotonic()
                if now - last_logged >= WAITING_LOG_EVERY_S:
                    last_logged = now
                    self.log.notice(f"waiting for the node daemon: {exc}")
                self._sleep(self.retry_s)
            except BaseException:
                sub.close()
                raise
        self._registered = True
        self._learn_observer()
        how = "re-attached" if reply.get("reattached") else f"join {reply.get('join', '?')}"
        self.log.notice(f"registered at level {LEVEL} as '{NAME}' with node {self.observer} ({how})",
                        LEVEL=LEVEL)
        status = f"registered at level {LEVEL} with node {self.observer}; {self.recorded} events recorded"
        if self._ready_sent:
            self.notifier.status(status)
        else:
            self._ready_sent = True
            self.notifier.ready(status)
        return sub

    def _learn_observer(self) -> None:
        try:
            node = Client(self.socket_path, timeout_s=5.0).status().get("node")
        except ClientError as exc:
            self.log.warning(f"cannot ask the node daemon for its node name ({exc}); records keep "
                             f"'{self.observer}'")
            return
        if isinstance(node, str) and node:
            self.observer = node
            self.log.node = node

    def _serve(self, sub: Subsystem) -> None:
        notes = iter(sub)
        while True:
            with self._interruptible():
                note = next(notes, None)
            if note is None:
                return  # the daemon closed the connection
            self.handle(sub, note)
            if self._stopping:
                return

    # ----------------------------------------------------------- one batch
    def record(self, note: Notification) -> list[dict[str, Any]]:
        """Write the batch's records (unless it is the one recorded last);
        returns them.  Never raises for a log that cannot be written."""
        key = rec.note_key(note)
        records = rec.records_from(note, self.observer)
        if key == self._last_key:
            self.log.info(f"{note.describe()} delivered again: already recorded", LEVEL=note.level)
            return []
        try:
            self.log_file.append(records)
        except OSError as exc:
            self.log.error(f"cannot write the event log {self.log_file.path}: {exc}; acking anyway (a stuck "
                           f"event log must not hang the cluster's transitions); free space or fix the file")
        self._last_key = key
        for r in records:
            self._emit(r)
        self.recorded += len(records)
        return records

    def handle(self, sub: Subsystem, note: Notification) -> None:
        records = self.record(note)
        if records:
            self.membership.notified(records, self._incarnations())
        try:
            sub.ack(note.batch)
        except RequestFailed as exc:  # superseded by a newer batch, which comes next
            self.log.warning(f"ack of batch {note.batch} refused: {exc}")
        self.notifier.status(f"registered at level {LEVEL} with node {self.observer}; "
                             f"{self.recorded} events recorded")

    def _emit(self, record: dict[str, Any]) -> None:
        """One line per event: a structured journal entry under systemd, else stdout."""
        text = rec.describe(record)
        if not self.echo:
            self.log.info(f"event: {text}", EVENT=record["event"], EVENT_NODE=record["node"],
                          EPOCH=record["epoch"], BATCH=record["batch"], LEVEL=record["level"])
            return
        try:
            print(f"{record['time']} {text}", file=sys.stdout, flush=True)
        except (OSError, ValueError):
            pass


    # ------------------------------------------------------------------ events
    def start_events(self) -> None:
        """Start the watchers, the look at the groups and the dispatch of occurrences."""
        for w in self.watchers:
            w.start(self._from_watcher if w is not self.membership else self._from_notification)
        self.groups.start()
        self._dispatcher = threading.Thread(target=self._dispatch, name="event-dispatch", daemon=True)
        self._dispatcher.start()

    def stop_events(self) -> None:
        self.groups.stop()
        self._occurrences.put(None)
        if self._dispatcher is not None:
            self._dispatcher.join(5.0)
        for w in self.watchers:
            try:
                w.stop()
            except Exception as exc:  # noqa: BLE001 - stopping the others anyway
                self.log.warning(f"stopping the {w.name} watcher: {type(exc).__name__}: {exc}")

    def _from_watcher(self, occurrence: Occurrence) -> None:
        self._occurrences.put((occurrence, 0))

    def _from_notification(self, occurrence: Occurrence) -> None:
        self._occurrences.put((occurrence, self.groups.kick()))

    def _looked(self, groups: list[EventGroup]) -> None:
        """After every look at the groups (on the groups thread): each watcher gets its enabled events."""
        for w in self.watchers:
            try:
                w.update(watched(groups, w.name))
            except Exception as exc:  # noqa: BLE001 - one watcher must not stop the others
                self.log.warning(f"the {w.name} watcher failed to update: {type(exc).__name__}: {exc}")

    def _incarnations(self) -> dict[str, str]:
        """Each node's incarnation as the daemon's status shows it now ('' unknown)."""
        try:
            status = Client(self.socket_path, timeout_s=INCARNATION_ASK_S).status()
        except ClientError:
            return {}
        return {str(n.get("name")): str(n.get("incarnation") or "") for n in status.get("nodes", [])
                if isinstance(n, dict)}

    def _dispatch(self) -> None:
        while True:
            item = self._occurrences.get()
            if item is None:
                return
            occurrence, look = item
            if look and not self.groups.wait(look, FRESH_GROUPS_WAIT_S):
                self.log.warning("the event groups could not be looked at after the notification: matching "
                                 "against the last look")
            for event in watched(self.groups.current(), occurrence.watcher):
                if matches(event, occurrence):
                    self._action_slots.acquire()
                    threading.Thread(target=self._act, args=(event, occurrence), name=f"action {event.name}",
                                     daemon=True).start()

    def _act(self, event: EventDef, occurrence: Occurrence) -> None:
        try:
            argv = expand(event.action, event.in_params, occurrence.out)
            env = action_environment(event, occurrence.out, self.observer)
            outcome = run_action(argv, env, self.action_timeout_s)
            record = rec.occurrence_record(event, occurrence, self.observer, argv, outcome.exit, outcome.status,
                                           outcome.elapsed_s)
            self.actions_run += 1
            try:
                self.log_file.append([record])
            except OSError as exc:
                self.log.error(f"cannot write the event log {self.log_file.path}: {exc}; the occurrence of "
                               f"{event.name} is not recorded there")
            self._emit_occurrence(record, outcome.ok)
        except Exception as exc:  # noqa: BLE001 - an action thread reports, never dies silently
            self.log.error(f"event {event.name}: {type(exc).__name__}: {exc}")
        finally:
            self._action_slots.release()

    def _emit_occurrence(self, record: dict[str, Any], ok: bool) -> None:
        text = rec.describe_occurrence(record)
        if not self.echo:
            log = self.log.info if ok else self.log.warning
            log(f"event: {text}", EVENT=record["event"], EVENT_NODE=record["node"], SERVICE=record["service"],
                ACTION_STATUS=record["status"])
            return
        try:
            print(f"{record['time']} {text}", file=sys.stdout, flush=True)
        except (OSError, ValueError):
            pass


def run_event_manager(socket_path: str, log_path: str, max_bytes: int, leave_on_stop: bool) -> int:
    journal = Journal("?", identifier="clusterfw-events")
    try:
        log_file = EventLog(log_path, max_bytes)
    except ValueError as exc:
        journal.error(f"--max-bytes: {exc}")
        return EXIT_USAGE
    return EventManager(socket_path, log_file, journal=journal, leave_on_stop=leave_on_stop).run()


__all__ = ["BARRIERS", "EventManager", "LEVEL", "NAME", "run_event_manager"]
