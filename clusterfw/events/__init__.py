"""The event manager (docs/events.md; level 40): for now it records every
membership transition this node is notified of in a bounded JSON-lines log
(``manager``, ``eventlog``, ``record``) that ``clusterfw events`` shows
(``render``).  Watchers, event groups and actions are still to come
(docs/events.md)."""
