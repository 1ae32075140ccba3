"""What touches the local machine, below the daemon (``clusterfw.node``) and
the event manager (``clusterfw.events``): the log (``journal``: systemd's
journal or stderr), systemd service notifications (``notify``: sd_notify),
the hardware watchdog (``watchdog``) and the clocks (``clocks``: the
daemon's clock and suspend detection).  Nothing here knows the protocol."""
