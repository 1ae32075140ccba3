"""The event manager (docs/events.md; level 40): it records every membership
transition this node is notified of in a bounded JSON-lines log
(``manager``, ``eventlog``, ``record``) that ``clusterfw events`` shows
(``render``), and runs the actions of the events the services registered on
this node define (``groups`` the enabled event groups, ``watchers`` what
detects events, ``actions`` what runs their actions; the pure model is
``clusterfw.core.events``)."""
