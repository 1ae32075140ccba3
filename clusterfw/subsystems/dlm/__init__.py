"""The DLM subsystem at level 10: ``service`` runs the pure ``core.dlm``
against the real disk inside the node daemon (docs/dlm.md §9)."""
