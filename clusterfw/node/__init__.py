"""The membership manager daemon: NodeCore driven with the real disk and
clock, the local API socket, systemd integration and self-fencing.  Start
with ``daemon.py``; docs/daemon.md is the reference."""
