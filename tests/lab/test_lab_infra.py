"""Lab infrastructure tests: real containers/namespaces, real loop devices, real faults.

How this works: the nspawn tests share one 3-node lab (session fixture) and run
in file order, ending with `down` and a check that nothing is left; the
process-mode tests do the same with a 3-node process lab whose node command
is a heartbeat writer; two more tests interrupt `up` at a random-ish point
and check that `down` still cleans everything.  No project daemon is needed:
the disk checks use python3 with O_DIRECT inside the nodes.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterfw.lab import Lab, LabError
from clusterfw.lab.hostsys import ProcRef, cgroup_enter, cgroup_frozen, cgroup_pids, wait_for

pytestmark = pytest.mark.lab

DIO = r'''
import errno, mmap, os, sys
op, off = sys.argv[1], int(sys.argv[2])
fd = os.open("/dev/clusterfw-disk", (os.O_RDWR if op == "w" else os.O_RDONLY) | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
try:
    if op == "w":
        msg = sys.argv[3].encode()
        buf.write(msg + b"\0" * (4096 - len(msg)))
        os.pwritev(fd, [buf], off)
        os.fsync(fd)
        print("wrote")
    else:
        os.preadv(fd, [buf], off)
        print(bytes(buf[:64]).rstrip(b"\0").decode())
except OSError as exc:
    print("ERR", errno.errorcode.get(exc.errno, exc.errno))
    sys.exit(5)
'''

TCP = r'''
import socket, sys
if sys.argv[1] == "serve":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7777)); s.listen(1); s.settimeout(10)
    c, addr = s.accept(); c.sendall(socket.gethostname().encode()); c.close()
    print(addr[0])
else:
    c = socket.create_connection((sys.argv[2], 7777), timeout=5)
    print(c.recv(100).decode())
'''

CLI = [sys.executable, "-c",
       "import sys; from clusterfw.cli import main; sys.exit(main(sys.argv[1:]))", "lab"]


def cli(lab: Lab, *args, timeout=60, check=True):
    cp = subprocess.run([*CLI, *args[:1], "--dir", str(lab.dir), *args[1:]],
                        capture_output=True, text=True, timeout=timeout)
    if check:
        assert cp.returncode == 0, cp.stderr
    return cp


def install_scripts(lab: Lab) -> None:
    (lab.dir / "shared" / "dio.py").write_text(DIO)
    (lab.dir / "shared" / "tcp.py").write_text(TCP)


def dio(lab: Lab, node: str, *args, timeout=20):
    return lab.exec(node, ["python3", "/lab/shared/dio.py", *map(str, args)], timeout=timeout)


def node_status(lab: Lab, node: str) -> dict:
    return next(n for n in lab.status()["nodes"] if n["name"] == node)


def pids_alive(pids) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()
            and "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[:1]]


# ============================================================== nspawn mode

class TestNspawn:
    def test_exec_hostname_address_exit_code(self, nspawn_lab):
        lab = nspawn_lab
        install_scripts(lab)
        for k in (1, 2, 3):
            cp = lab.exec(f"n{k}", ["hostname"], timeout=10)
            assert cp.returncode == 0 and cp.stdout.strip() == f"n{k}"
            cp = lab.exec(f"n{k}", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"], timeout=10)
            assert f"198.18.0.{k}/24" in cp.stdout
            conf = lab.exec(f"n{k}", ["cat", "/etc/clusterfw/node.conf"], timeout=10).stdout
            assert "DISK=/dev/clusterfw-disk" in conf and f"NODE=n{k}" in conf
        # argv passes through untouched (no shell), exit code comes back
        cp = lab.exec("n1", ["sh", "-c", 'echo "$1"; exit 7', "sh", "a b;$(x)"], timeout=10)
        assert cp.returncode == 7 and cp.stdout == "a b;$(x)\n"
        # systemd is PID 1 and the project is installed
        assert lab.exec("n2", ["cat", "/proc/1/comm"], timeout=10).stdout.strip() == "systemd"
        cp = lab.exec("n2", ["clusterfw", "--help"], timeout=30)
        assert cp.returncode == 0, cp.stderr

    def test_cli_exec_and_status(self, nspawn_lab):
        cp = cli(nspawn_lab, "exec", "n3", "--", "sh", "-c", "hostname; exit 3", check=False)
        assert cp.returncode == 3 and cp.stdout.strip() == "n3"
        st = json.loads(cli(nspawn_lab, "status", "--json").stdout)
        assert [n["state"] for n in st["nodes"]] == ["up", "up", "up"]
        assert [n["address"] for n in st["nodes"]] == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
        assert all(n["init_pid"] and n["disk"]["mode"] == "pass" for n in st["nodes"])

    def test_ping_between_nodes(self, nspawn_lab):
        for src, dst in (("n1", "n2"), ("n2", "198.18.0.3"), ("n3", "n1")):
            cp = nspawn_lab.exec(src, ["ping", "-c", "1", "-W", "2", dst], timeout=10)
            assert cp.returncode == 0, cp.stdout + cp.stderr

    def test_shared_disk_odirect(self, nspawn_lab):
        lab = nspawn_lab
        assert dio(lab, "n1", "w", 4096, "from-n1").stdout.strip() == "wrote"
        assert dio(lab, "n2", "r", 4096).stdout.strip() == "from-n1"
        assert dio(lab, "n2", "w", 8192, "from-n2").returncode == 0
        assert dio(lab, "n3", "r", 8192).stdout.strip() == "from-n2"
        assert dio(lab, "n1", "r", 8192).stdout.strip() == "from-n2"

    def test_cut_disk_eio_and_restore(self, nspawn_lab):
        lab = nspawn_lab
        lab.cut_disk("n2", "eio")
        try:
            cp = dio(lab, "n2", "r", 4096)
            assert cp.returncode == 5 and cp.stdout.strip() == "ERR EIO"
            assert dio(lab, "n2", "w", 12288, "x").stdout.strip() == "ERR EIO"
            assert dio(lab, "n1", "r", 4096).stdout.strip() == "from-n1"  # others unaffected
            assert node_status(lab, "n2")["disk"]["mode"] == "eio"
        finally:
            lab.restore_disk("n2")
        assert dio(lab, "n2", "r", 4096).stdout.strip() == "from-n1"

    def test_cut_disk_hang_and_restore(self, nspawn_lab):
        lab = nspawn_lab
        prefix, env, cg = lab.exec_argv("n3")
        lab.cut_disk("n3", "hang")
        try:
            reader = subprocess.Popen(prefix + ["python3", "/lab/shared/dio.py", "r", "4096"],
                                      env=env, stdout=subprocess.PIPE, text=True,
                                      preexec_fn=lambda: cgroup_enter(cg))
            time.sleep(2.0)
            assert reader.poll() is None, "read returned although the disk hangs"
            assert node_status(lab, "n3")["disk"]["stalled"] >= 1
            assert dio(lab, "n1", "r", 4096).stdout.strip() == "from-n1"
        finally:
            lab.restore_disk("n3")
        out, _ = reader.communicate(timeout=10)
        assert reader.returncode == 0 and out.strip() == "from-n1"

    def test_pause_freezes_then_thaws(self, nspawn_lab):
        lab = nspawn_lab
        tick = lab.dir / "shared" / "tick-n2"
        lab.exec("n2", ["sh", "-c", "while :; do date +%s%N > /lab/shared/tick-n2; "
                        "sleep 0.05; done >/dev/null 2>&1 &"], timeout=10)
        assert wait_for(tick.exists, 5)

        def ticking(seconds=0.5):
            a = tick.read_text()
            time.sleep(seconds)
            return tick.read_text() != a

        assert ticking()
        t0 = time.monotonic()
        res = lab.pause("n2", 2.5, background=True)
        assert res["frozen"] and time.monotonic() - t0 < 2.0  # returned at once
        rec = lab.state["nodes"]["n2"]
        assert cgroup_frozen(rec["cgroup"])
        assert node_status(lab, "n2")["state"] == "paused"
        assert not ticking()
        with pytest.raises(LabError, match="paused"):
            lab.exec("n2", ["true"], timeout=1)
        assert wait_for(lambda: node_status(lab, "n2")["state"] == "up", 6)
        assert ticking()
        assert lab.exec("n2", ["hostname"], timeout=10).stdout.strip() == "n2"
        # foreground pause through the CLI returns after SECS, thawed
        t0 = time.monotonic()
        cli(lab, "pause", "n1", "1")
        assert 0.9 < time.monotonic() - t0 < 10
        assert not cgroup_frozen(lab.state["nodes"]["n1"]["cgroup"])
        assert lab.exec("n1", ["true"], timeout=10).returncode == 0

    def test_crash_kills_everything_then_restart(self, nspawn_lab):
        lab = nspawn_lab
        lab.exec("n1", ["sh", "-c", "sleep 1000 >/dev/null 2>&1 &"], timeout=10)
        cg = lab.state["nodes"]["n1"]["cgroup"]
        before = cgroup_pids(cg)
        assert len(before) >= 3
        res = lab.crash("n1")
        assert res["crashed"]
        assert cgroup_pids(cg) == []
        assert pids_alive(before) == []
        assert node_status(lab, "n1")["state"] == "down"
        assert node_status(lab, "n2")["state"] == "up"
        assert dio(lab, "n2", "r", 4096).stdout.strip() == "from-n1"
        lab.restart("n1")
        assert node_status(lab, "n1")["state"] == "up"
        assert lab.exec("n1", ["hostname"], timeout=10).stdout.strip() == "n1"
        assert dio(lab, "n1", "r", 8192).stdout.strip() == "from-n2"

    def test_crash_while_paused_and_hung(self, nspawn_lab):
        lab = nspawn_lab
        lab.cut_disk("n3", "hang")
        prefix, env, cg = lab.exec_argv("n3")
        reader = subprocess.Popen(prefix + ["python3", "/lab/shared/dio.py", "r", "4096"],
                                  env=env, stdout=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: cgroup_enter(cg))
        assert wait_for(lambda: node_status(lab, "n3")["disk"]["stalled"] >= 1, 10)
        lab.pause("n3", 30, background=True)
        helper = ProcRef.from_json(lab.state["nodes"]["n3"]["pause"]["helper"])
        assert helper and helper.alive()
        lab.crash("n3")  # stalled I/O is failed, frozen tasks die
        # the background resume ends with the node: it must not wake up later
        # and take the lab lock (after `down`, that would recreate DIR)
        assert helper.wait_gone(5), "the pause helper outlived the crash"
        reader.communicate(timeout=10)
        assert cgroup_pids(lab.state["nodes"]["n3"]["cgroup"]) == []
        lab.restore_disk("n3")
        lab.restart("n3")
        assert dio(lab, "n3", "r", 4096).stdout.strip() == "from-n1"

    def test_graceful_restart_of_running_node(self, nspawn_lab):
        lab = nspawn_lab
        old = node_status(lab, "n2")["init_pid"]
        lab.restart("n2")
        st = node_status(lab, "n2")
        assert st["state"] == "up" and st["init_pid"] != old

    def test_zz_down_leaves_nothing(self, nspawn_lab):
        lab = nspawn_lab
        res = lab.down(timeout=10)
        assert res["removed"]
        assert lab.leftovers() == []
        losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        assert str(lab.dir) not in losetup
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert lab.prefix not in netns
        assert str(lab.dir) not in Path("/proc/self/mountinfo").read_text()
        for h in ("unified", "systemd"):
            root = Path("/sys/fs/cgroup") / h
            if root.is_dir():
                assert not [p for p in os.listdir(root) if lab.hash in p]
        assert not Path(f"/run/systemd/nspawn/propagate/{lab.prefix}-n1").exists()
        assert lab.status()["exists"] is False


# ============================================================= process mode

def heartbeat(lab: Lab, node: str) -> int:
    try:
        return int((lab.dir / "shared" / f"hb-{node}").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def advancing(lab: Lab, node: str, seconds: float = 0.6) -> bool:
    a = heartbeat(lab, node)
    time.sleep(seconds)
    return heartbeat(lab, node) > a


class TestProcess:
    def test_nodes_run_their_command(self, process_lab):
        lab = process_lab
        install_scripts(lab)
        for k in (1, 2, 3):
            assert wait_for(lambda: heartbeat(lab, f"n{k}") > 0, 10)
            assert lab.exec(f"n{k}", ["hostname"], timeout=10).stdout.strip() == f"n{k}"
            cp = lab.exec(f"n{k}", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"], timeout=10)
            assert f"198.18.0.{k}/24" in cp.stdout
            # own PID namespace: init is PID 1, the heartbeat its child
            ps = lab.exec(f"n{k}", ["cat", "/proc/1/cmdline"], timeout=10).stdout
            assert "clusterfw.lab.procinit" in ps
            conf = lab.exec(f"n{k}", ["cat", "/etc/clusterfw/node.conf"], timeout=10).stdout
            assert f"NODE=n{k}" in conf
        assert lab.exec("n1", ["test", "-b", "/dev/clusterfw-disk"], timeout=10).returncode == 0

    def test_network_between_nodes(self, process_lab):
        lab = process_lab
        prefix, env, cg = lab.exec_argv("n2")
        server = subprocess.Popen(prefix + ["python3", "/lab/shared/tcp.py", "serve"], env=env,
                                  stdout=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: cgroup_enter(cg))
        try:
            deadline = time.monotonic() + 10
            while True:
                cp = lab.exec("n1", ["python3", "/lab/shared/tcp.py", "connect", "n2"],
                              timeout=10)
                if cp.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert cp.stdout.strip() == "n2", cp.stderr
            out, _ = server.communicate(timeout=10)
            assert out.strip() == "198.18.0.1"
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()

    def test_shared_disk_and_cut(self, process_lab):
        lab = process_lab
        assert dio(lab, "n1", "w", 0, "proc-n1").returncode == 0
        assert dio(lab, "n3", "r", 0).stdout.strip() == "proc-n1"
        lab.cut_disk("n3", "eio")
        assert dio(lab, "n3", "r", 0).stdout.strip() == "ERR EIO"
        assert dio(lab, "n2", "r", 0).stdout.strip() == "proc-n1"
        lab.restore_disk("n3")
        assert dio(lab, "n3", "r", 0).stdout.strip() == "proc-n1"

    def test_pause_stops_heartbeat(self, process_lab):
        lab = process_lab
        lab.pause("n2", 2, background=True)
        time.sleep(0.3)
        assert not advancing(lab, "n2")
        assert advancing(lab, "n1")
        assert wait_for(lambda: node_status(lab, "n2")["state"] == "up", 6)
        assert advancing(lab, "n2")

    def test_crash_and_restart(self, process_lab):
        lab = process_lab
        cg = lab.state["nodes"]["n1"]["cgroup"]
        lab.exec("n1", ["sh", "-c", "sleep 1000 >/dev/null 2>&1 &"], timeout=10)
        before = cgroup_pids(cg)
        lab.crash("n1")
        assert cgroup_pids(cg) == [] and pids_alive(before) == []
        assert not advancing(lab, "n1")
        assert node_status(lab, "n1")["state"] == "down"
        lab.restart("n1")
        assert wait_for(lambda: advancing(lab, "n1", 0.3), 10)

    def test_second_lab_does_not_collide(self, tmp_path, process_lab):
        """Two labs at once: distinct prefixes, and `down` of one leaves the other."""
        other = Lab(tmp_path / "other")
        # a setup command runs on the host against n1's loop device before boot
        write = ("import mmap, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT); "
                 "b = mmap.mmap(-1, 4096); b.write(b'set-up'); os.pwritev(fd, [b], 0)")
        try:
            other.up(1, "process", disk_size=16 << 20, node_command="sleep infinity", prepare_disk=False,
                     setup_commands=[shlex.join([sys.executable, "-c", write, "{disk}"])])
            assert other.prefix != process_lab.prefix
            assert other.exec("n1", ["hostname"], timeout=10).stdout.strip() == "n1"
            install_scripts(other)
            assert dio(other, "n1", "r", 0).stdout.strip() == "set-up"
            # `clusterfw` inside a process node is the lab's own
            cp = other.exec("n1", ["clusterfw", "--help"], timeout=30)
            assert cp.returncode == 0 and "usage: clusterfw" in cp.stdout
        finally:
            other.down(timeout=10, purge=True)
        assert other.leftovers() == []
        assert all(n["state"] != "down" for n in process_lab.status()["nodes"])

    def test_zz_down_leaves_nothing(self, process_lab):
        lab = process_lab
        assert lab.down(timeout=10)["removed"]
        assert lab.leftovers() == []


# ============================================== interrupted `up`, then `down`

def _interrupt_up(tmp_path, mode: str, until) -> Lab:
    """Start `lab up` as a separate process, SIGKILL it once until(state) holds."""
    d = tmp_path / f"int-{mode}"
    d.mkdir()
    args = [*CLI, "up", "--dir", str(d), "--nodes", "3", "--mode", mode,
            "--disk-size", "16M"]
    if mode == "process":
        args += ["--node-command", "sleep infinity"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    state_file = d / "lab.json"

    def reached():
        try:
            return until(json.loads(state_file.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return False
    try:
        assert wait_for(lambda: reached() or p.poll() is not None, 120, 0.01)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
    return Lab(d)


@pytest.mark.parametrize("mode,until", [
    ("process", lambda st: st["nodes"]["n2"].get("loop")),
    ("process", lambda st: st["nodes"]["n1"].get("launcher")),
    ("nspawn", lambda st: st["nodes"]["n2"].get("launcher")),
])
def test_down_after_interrupted_up(tmp_path, lab_need, mode, until):
    lab_need(mode)
    lab = _interrupt_up(tmp_path, mode, until)
    try:
        assert lab.state is not None
    finally:
        lab.down(timeout=10, purge=True)
    assert lab.leftovers() == []
