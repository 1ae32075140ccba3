"""Fixtures shared by every test directory (tests/lab/ adds its own)."""
from lunfs import lun_root  # noqa: F401 - the fixture, see lunfs.py
