"""Subsystems of the transition framework: the interface in-process
subsystems implement (``base``), the DLM (``dlm``) and, for now, the
ack-only subsystems of the other default levels (``placeholders``; the
levels themselves are ``clusterfw.core.levels``).  External subsystems use
``clusterfw.client``."""
