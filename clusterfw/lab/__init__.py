"""The lab: N cluster nodes on one machine sharing one real disk.

How this works: ``Lab`` (lab.py) records every resource in ``DIR/lab.json``
before making it, gives each node its own network namespace (netns.py), its
own FUSE view of the shared image with a loop device on top (fusedisk.py),
its own cgroup, and boots it either as a systemd-nspawn container from a
cached Debian rootfs (rootfs.py) or as namespaced processes under a small
PID 1 (procinit.py).  ``clusterfw lab ...`` (clusterfw/cli/lab.py) is the
command line; docs/lab.md is the user's guide and the daemon's contract.
"""
from .hostsys import LabError
from .lab import DEFAULT_DIR, DISK_IN_NODE, Lab

__all__ = ["Lab", "LabError", "DEFAULT_DIR", "DISK_IN_NODE"]
