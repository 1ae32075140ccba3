"""The DLM against views that go back and against damaged lock sectors:
recovery is per (node id, incarnation), never per node id; a node that the
view stops showing joined at the DLM level revokes its holders at once; a
damaged lock sector is named (and whose) in a try-lock's denial and is
rewritten by its owner."""
from __future__ import annotations

from test_dlm_core import EX, Cluster, Node, granted, member

from clusterfw.core.dlm import (
    DLM_LEVEL,
    Ack,
    Denied,
    EntryState,
    Granted,
    Recovered,
    Revoked,
    stripe_of,
)
from clusterfw.core.model import BatchEntry, Kind, NodeState

FORCED = dict(state=NodeState.FORCED_LEAVING, kind=Kind.FORCED, top_level=40)
OLD, NEW = 0x5F3A, 0x7B21  # two incarnations of node 1


def _restarted_holder() -> Cluster:
    """n1 ran as OLD, was forced out and restarted as NEW, joined at the DLM
    level and holds 'mx'; n2 waits for it."""
    c = Cluster()
    c.nodes[1] = Node(c.disk, 1, incarnation=OLD)
    c.set_view(member(1, incarnation=OLD), member(2), member(3))
    c.nodes[1].core.notify(90, [BatchEntry(1, Kind.JOIN, 0)], c.now)
    c.settle()
    c.set_view(member(1, incarnation=OLD, **FORCED, ready=True, cursor=20), member(2), member(3))
    c.set_view(member(1, incarnation=OLD, state=NodeState.INACTIVE, forced=True), member(2), member(3))
    c.nodes[1] = Node(c.disk, 1, incarnation=NEW)
    c.set_view(member(1, incarnation=NEW, state=NodeState.JOINING, kind=Kind.JOIN, cursor=DLM_LEVEL),
               member(2), member(3))
    c[1].core.notify(91, [BatchEntry(1, Kind.JOIN, 0)], c.now)
    c.settle()
    c.set_view(member(1, incarnation=NEW), member(2), member(3))
    c[1].core.request(1, "mx", EX, c.now)
    c.settle()
    assert granted(c[1]) == [(1, "mx", EX, 1)]
    c[2].core.request(2, "mx", EX, c.now)
    c.run(c.now + 100)
    assert not c[2].take(Granted)
    c[1].take()
    c[2].take()
    return c


def test_a_view_that_went_back_to_an_older_incarnation_recovers_nothing_of_the_live_one():
    """The reproduced defect: the new master resumes from a view naming n1's
    OLD incarnation and forces OLD out; the live NEW incarnation's lock must
    stay held on every other node."""
    c = _restarted_holder()
    holder = c[1]
    del c.nodes[1]  # n1's own reaction to the stale view is the next test
    for row in (member(1, incarnation=OLD),  # the stale view
                member(1, incarnation=OLD, **FORCED),  # "forced out (restarted: incarnation OLD -> NEW)"
                member(1, incarnation=OLD, **FORCED, ready=True, cursor=DLM_LEVEL),
                member(1, incarnation=OLD, **FORCED, ready=True, cursor=20),
                member(1, incarnation=OLD, state=NodeState.INACTIVE, forced=True)):
        c.set_view(row, member(2), member(3))
        c[2].core.notify(c.epoch, [BatchEntry(1, Kind.FORCED, 0)], c.now)
        c.run(c.now + 200)
        assert not c[2].take(Granted), row
        assert not c[2].take(Recovered), row
    assert holder.core.holdings()[0].state == "held"
    # Once NEW itself is shown gone at the DLM level, its lock is recovered,
    # and the log names that incarnation.
    c.set_view(member(1, incarnation=NEW, state=NodeState.INACTIVE, forced=True), member(2), member(3))
    assert c[2].take(Recovered) == [Recovered("mx", 1, 2, incarnation=NEW)]
    c.settle()
    assert granted(c[2]) == [(2, "mx", EX, 2)]


def test_a_node_the_view_stops_showing_joined_revokes_its_holders_at_once():
    for row in (None,  # absent
                member(1, incarnation=OLD),  # another incarnation
                member(1, incarnation=NEW, **FORCED),  # being forced out
                member(1, incarnation=NEW, state=NodeState.INACTIVE, forced=True)):
        c = _restarted_holder()
        c.set_view(*([row] if row else []), member(2), member(3))
        [revoked] = c[1].take(Revoked)
        assert revoked.req_id == 1 and "no longer a member at the DLM level" in revoked.reason, row
        assert c[1].core.may_request() is not None
        c.settle()  # the holder's sector is withdrawn (FREE) right away
        stripe = stripe_of("mx", c.disk.layout.dlm_stripes_max)
        assert c.disk.sector(stripe, 1).state is EntryState.FREE
        assert c[1].core.holdings() == []


def test_the_node_ids_own_later_join_does_not_resurrect_a_departed_incarnation():
    """OLD departed; a later view naming OLD again (a view that went back)
    counts it by the view rule, but an entry of OLD is never counted once a
    view showed it inactive and the current view names NEW."""
    c = _restarted_holder()
    core = c[2].core
    assert core.counts(1, NEW) and not core.counts(1, OLD)


def test_a_damaged_sector_of_a_live_node_says_so_and_its_owner_rewrites_it():
    c = Cluster()
    stripe = stripe_of("vol-a", c.disk.layout.dlm_stripes_max)
    c[3].core.request(1, "vol-a", EX, c.now)
    c.settle()
    c[3].core.release(1, c.now)
    c.settle()
    c.disk.disk.write(c.disk.layout.dlm_entry_offset(stripe, 3), bytes(range(256)) * 2)
    c[1].core.request(1, "vol-a", EX, c.now, try_only=True)
    c.settle()
    [denied] = c[1].take(Denied)
    assert "n3's lock sector on stripe" in denied.reason and "damaged" in denied.reason, denied.reason
    assert denied.reason.startswith("busy: ")
    # n3 owns the sector: its periodic area read finds it damaged and
    # rewrites it (FREE, continuing the stripe's ticket and token) -- it does
    # not treat its own sector as somebody else's.
    c.run(c.now + c[3].core.scrub_ms + 50)
    fixed = c.disk.sector(stripe, 3)
    assert fixed.state is EntryState.FREE and fixed.incarnation == c[3].incarnation and fixed.token >= 1
    c[1].core.request(2, "vol-a", EX, c.now, try_only=True)
    c.settle()
    assert granted(c[1]) == [(2, "vol-a", EX, 2)]


def test_a_damaged_own_sector_found_at_the_join_is_rewritten_before_the_ack():
    c = Cluster()
    stripe = stripe_of("vol-a", c.disk.layout.dlm_stripes_max)
    c.disk.disk.write(c.disk.layout.dlm_entry_offset(stripe, 1), b"\xff" * 512)
    restarted = Node(c.disk, 1, incarnation=4242)
    c.nodes[1] = restarted
    c.set_view(member(1, incarnation=4242, state=NodeState.JOINING, kind=Kind.JOIN, cursor=DLM_LEVEL),
               member(2), member(3))
    restarted.core.notify(50, [BatchEntry(1, Kind.JOIN, 0)], c.now)
    [area_read] = restarted.core.poll(c.now)
    restarted.core.complete(c.now, [restarted.perform(area_read)])
    assert restarted.take(Ack) == []  # not before the damaged sector is rewritten
    c.settle()
    assert restarted.take(Ack) == [Ack(50)]
    entry = c.disk.sector(stripe, 1)
    assert entry.state is EntryState.FREE and entry.incarnation == 4242


# ------------------------------------------------- the daemon's DLM service
from clusterfw.cli.lock import format_locks  # noqa: E402
from clusterfw.core.dlm import LockEntry, ReadStripe  # noqa: E402
from clusterfw.core.model import ViewRecord  # noqa: E402
from clusterfw.core.node import Unreadable  # noqa: E402
from clusterfw.core.timing import derive  # noqa: E402
from clusterfw.subsystems.dlm.service import DlmService, describe_area  # noqa: E402
from clusterfw.ondisk import dlm_codec  # noqa: E402
from clusterfw.ondisk.layout import Layout  # noqa: E402
from clusterfw.ondisk.simdisk import SimDisk  # noqa: E402

UUID = bytes(range(16))


def _service(disk: SimDisk, layout: Layout, lines: list, pushes: list, node_id: int = 1,
             incarnation: int = NEW) -> DlmService:
    svc = DlmService(path="/nonexistent", layout=layout, cluster_uuid=UUID, node_id=node_id,
                     incarnation=incarnation, timing=derive(), guard=lambda: None,
                     push=lambda conn, msg: pushes.append(msg) or True,
                     node_name=lambda n: f"a{n}", log=lambda prio, text: lines.append((prio, text)),
                     deadline_of=lambda: float("inf"))
    svc._dev = disk  # type: ignore[assignment]  # the service's I/O against a simulated disk
    return svc


def _pump(svc: DlmService, _now: float, rounds: int = 20) -> None:
    from clusterfw.ondisk import diskio
    for _ in range(rounds):
        now = diskio.clock_ms()  # the service stamps requests with the daemon's clock
        with svc._lock:
            ops = svc.core.poll(now)
            events = svc.core.take_events()
        svc._dispatch(events)
        if not ops:
            break
        results = [svc._perform(op) for op in ops]
        with svc._lock:
            svc.core.complete(now, results)
            events = svc.core.take_events()
        svc._dispatch(events)
    svc.integrity.flush()


def _view(epoch: int, *members) -> ViewRecord:
    return ViewRecord(node_id=2, incarnation=1, seq=epoch, term=1, epoch=epoch, members=members)


def test_the_service_stops_vouching_for_a_lock_once_the_view_drops_this_incarnation():
    layout = Layout(512, 4)
    disk = SimDisk(layout.total_bytes, 512)
    lines: list = []
    pushes: list = []
    svc = _service(disk, layout, lines, pushes)
    svc.deliver(_view(1, member(1, incarnation=NEW), member(2)))
    svc.core.notify(1, [BatchEntry(1, Kind.JOIN, 0)], 0.0)  # its own join at the DLM level
    _pump(svc, 0.0)
    assert svc.lock(7, 4242, 1, "mx", EX, None, False) is None
    _pump(svc, 0.0)
    assert [p["op"] for p in pushes if p.get("op") == "granted"] == ["granted"]
    assert svc.valid_for_ms(0.0) > 0
    svc.deliver(_view(2, member(1, incarnation=OLD), member(2)))  # a view that went back
    assert svc.valid_for_ms(0.0) == 0  # no renewal vouches for it any more
    svc._renew(0.0)  # a renewal before the revocation is dispatched says why it vouches 0 ms
    [zero] = [p for p in pushes if p.get("op") == "valid"]
    assert zero["for_ms"] == 0 and "no longer joined at the DLM level" in zero["reason"]
    _pump(svc, 0.0)
    revoked = [p for p in pushes if p.get("op") == "revoked"]
    assert len(revoked) == 1 and "no longer a member at the DLM level" in revoked[0]["reason"]
    assert any("revoked" in text for _, text in lines)


def test_a_damaged_lock_sector_is_logged_once_named_busy_shown_and_repaired():
    layout = Layout(512, 4)
    disk = SimDisk(layout.total_bytes, 512)
    stripe = stripe_of("mx", layout.dlm_stripes_max)
    disk.write(layout.dlm_entry_offset(stripe, 3), b"\x5a" * 512)  # a live node's sector, damaged
    lines: list = []
    pushes: list = []
    svc = _service(disk, layout, lines, pushes)
    svc.deliver(_view(1, member(1, incarnation=NEW), member(2), member(3)))
    svc.core.notify(1, [BatchEntry(1, Kind.JOIN, 0)], 0.0)  # its own join at the DLM level
    _pump(svc, 0.0)
    for _ in range(3):  # read again and again: logged once per occurrence
        svc._perform(ReadStripe(stripe))
        svc.integrity.flush()
    damaged = [text for _, text in lines if "DAMAGED" in text]
    assert len(damaged) == 1, lines
    assert f"lock sector on stripe {stripe} of node a3 (id 3)" in damaged[0] and "does not decode" in damaged[0]
    assert svc.integrity.snapshot()["counts"].get("lock-sector") == 1
    # A try-lock blocked only by it says the sector is damaged, and whose.
    assert svc.lock(7, 4242, 1, "mx", EX, None, True) is None
    _pump(svc, 0.0)
    [denied] = [p for p in pushes if p.get("op") == "denied"]
    assert denied["reason"].startswith("busy: a3's lock sector on stripe") and "damaged" in denied["reason"]
    # clusterfw locks shows it, human and JSON, counted.
    area = {stripe: dlm_codec.decode_stripe(disk.read(layout.dlm_stripe_offset(stripe), layout.dlm_stripe_bytes),
                                            stripe, cluster_uuid=UUID, layout=layout)}
    rows = svc.describe_area(area, svc.core.view)
    [row] = [r for r in rows if r["state"] == "damaged"]
    assert (row["node_id"], row["stripe"], row["counts"]) == (3, stripe, True) and row["error"]
    text = format_locks({"cluster": "c", "node": "a1", "locks": rows, "local": []})
    assert "DAMAGED (blocks its stripe)" in text and "1 damaged lock sector" in text and f"stripe {stripe}" in text
    # Its owner rewrites it (FREE); the next read logs the repair.
    disk.write(*dlm_codec.entry_bytes(LockEntry(3, 1003, 1, stripe), UUID, layout))
    svc._perform(ReadStripe(stripe))
    svc.integrity.flush()
    assert any(prio == "notice" and "repaired" in text and "stripe" in text for prio, text in lines)


def test_describe_area_shows_damaged_sectors_and_the_dlms_counting_rule():
    area = {5: {1: LockEntry(1, NEW, 3, 5, "mx", EntryState.HELD, EX, 1, 2), 2: Unreadable("CorruptRecord"),
                3: Unreadable("never written", never_written=True)}}
    stale = _view(9, member(1, incarnation=OLD), member(2))
    by_view = describe_area(area, stale, lambda n: f"a{n}")
    assert [r["counts"] for r in by_view if r["state"] == "held"] == [False]
    by_dlm = describe_area(area, stale, lambda n: f"a{n}", counted=lambda n, inc: (n, inc) == (1, NEW))
    assert [r["counts"] for r in by_dlm if r["state"] == "held"] == [True]
    [dmg] = [r for r in by_dlm if r["state"] == "damaged"]
    assert (dmg["node_id"], dmg["error"], dmg["counts"]) == (2, "CorruptRecord", True)
    assert len(by_dlm) == 2
