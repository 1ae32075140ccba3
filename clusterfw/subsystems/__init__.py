"""Subsystems of the transition framework: the interface in-process
subsystems implement (``base``) and, for now, placeholders for the default
levels (``placeholders``).  External subsystems use ``clusterfw.client``."""
