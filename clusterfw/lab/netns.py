"""The lab network: one bridge namespace, one namespace per node.

How this works
--------------
``<prefix>-sw`` is a network namespace holding bridge ``br0``; node k gets
namespace ``<prefix>-nk`` (a bind mount under ``/run/netns``, as ``ip netns``
makes) with ``eth0`` = 198.18.0.k/24, the peer of veth ``vk`` enslaved to
``br0``.  198.18.0.0/15 is the benchmarking range (RFC 2544): the namespaces
have no route off the machine, and the host itself has no interface on the
bridge.  nspawn joins a node's namespace with ``--network-namespace-path``;
process-mode nodes join it with ``nsenter --net``.

Every step checks before it creates, so ``up`` can be re-run after an
interruption, and deleting a namespace removes its veth end (and so the pair).
"""
from __future__ import annotations

from pathlib import Path

from .hostsys import run

NETNS_DIR = Path("/run/netns")
SUBNET = "198.18.0"
PREFIXLEN = 24
BRIDGE = "br0"


def node_address(index: int) -> str:
    if not 1 <= index <= 250:
        raise ValueError("node index must be 1..250")
    return f"{SUBNET}.{index}"


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def _link_exists(ns: str, dev: str) -> bool:
    return run(["ip", "-n", ns, "link", "show", "dev", dev], check=False,
               timeout=10).returncode == 0


def ensure_netns(ns: str) -> None:
    if not exists(ns):
        run(["ip", "netns", "add", ns], timeout=10)
    run(["ip", "-n", ns, "link", "set", "lo", "up"], timeout=10)


def ensure_switch(ns: str) -> None:
    ensure_netns(ns)
    if not _link_exists(ns, BRIDGE):
        run(["ip", "-n", ns, "link", "add", BRIDGE, "type", "bridge",
             "stp_state", "0", "forward_delay", "0"], timeout=10)
    run(["ip", "-n", ns, "link", "set", BRIDGE, "up"], timeout=10)


def ensure_node(switch_ns: str, node_ns: str, index: int) -> str:
    """Create the node's namespace and its wire to the bridge; returns its address."""
    ensure_netns(node_ns)
    addr = node_address(index)
    port = f"v{index}"
    if not _link_exists(node_ns, "eth0"):
        if _link_exists(switch_ns, port):  # half of an old pair
            run(["ip", "-n", switch_ns, "link", "del", port], timeout=10)
        run(["ip", "-n", switch_ns, "link", "add", port, "type", "veth",
             "peer", "name", "eth0", "netns", node_ns], timeout=10)
    run(["ip", "-n", switch_ns, "link", "set", port, "master", BRIDGE, "up"], timeout=10)
    have = run(["ip", "-n", node_ns, "-o", "-4", "addr", "show", "dev", "eth0"],
               timeout=10).stdout
    if f" {addr}/" not in have:
        run(["ip", "-n", node_ns, "addr", "add", f"{addr}/{PREFIXLEN}", "dev", "eth0"],
            timeout=10)
    run(["ip", "-n", node_ns, "link", "set", "eth0", "up"], timeout=10)
    return addr


def delete(ns: str) -> None:
    if exists(ns):
        run(["ip", "netns", "delete", ns], timeout=10, check=False)
    if exists(ns):  # stale mount point file without a namespace
        try:
            (NETNS_DIR / ns).unlink()
        except OSError:
            pass
