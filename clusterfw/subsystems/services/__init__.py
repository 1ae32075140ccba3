"""Client services on this node: the launchers that start, stop, notify,
recover and kill them for the registration & launch service
(``launchers``: the interface, the process launcher and ``make_launcher``;
``systemd_launcher``: transient and installed units over systemd's D-Bus
API; ``guardian``: the process that kills a dead launcher's services)."""
