"""The table of the default levels: one number and one name per level.

Lower levels are notified first on a join and last on a leave (docs/
protocol.md §4).  The name is the subsystem's registration name, the one
``clusterfw status`` shows as a column.  Every module that needs a default
level or its name takes it from here.
"""
from __future__ import annotations

MM = 0
"""The membership manager's own level (the daemon itself)."""
DLM = 10
"""The distributed lock manager (docs/dlm.md)."""
VDM = 20
"""The virtual disk manager (a placeholder for now)."""
SFS = 30
"""The shared file system (a placeholder for now)."""
EVENTS = 40
"""The event manager, an external subsystem (docs/events.md)."""

SERVICES = 50
"""The registration & launch service, in-process (docs/services.md)."""

LEVELS: tuple[tuple[int, str], ...] = ((MM, "mm"), (DLM, "dlm"), (VDM, "vdm"), (SFS, "sfs"), (EVENTS, "events"),
                                       (SERVICES, "services"))
NAMES: dict[int, str] = dict(LEVELS)
