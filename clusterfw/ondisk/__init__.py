"""The shared disk: record layouts and codecs, aligned O_DIRECT I/O with
timeouts, a simulated disk, and the typed facade over both.

Modules (see docs/ondisk.md for the byte-level format):

* ``layout``      -- where every area lives (pure)
* ``codec``       -- records <-> bytes, checksums, validation (pure)
* ``errors``      -- BlockError (rejected block), DeviceError (failed I/O),
                     SetupError (refused admin operation)
* ``simdisk``     -- the ``Device`` interface and ``SimDisk`` (pure)
* ``dlm_codec``   -- the DLM's lock sectors (pure)
* ``registry_codec`` -- the service registry's two copies (pure)
* ``clusterdisk`` -- ``Placement`` (pure) and ``ClusterDisk`` (typed I/O)
* ``blockdev``    -- ``BlockDevice``: real O_DIRECT I/O with timeouts
* ``admin``       -- ``format_disk``, ``add_node``, ``probe``

Names are importable from this package directly; they are loaded lazily so
that importing a pure module (say ``clusterfw.ondisk.codec``) never pulls in
threads, mmap or subprocess.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # errors
    "BlockError": "errors", "NotWritten": "errors", "BadMagic": "errors", "BadVersion": "errors",
    "ForeignCluster": "errors", "WrongNode": "errors", "BadLength": "errors", "BadChecksum": "errors",
    "BadPayload": "errors", "DeviceError": "errors", "IoError": "errors", "IoTimeout": "errors",
    "UnalignedIo": "errors", "SetupError": "errors", "FormatRefused": "errors", "DeviceTooSmall": "errors",
    "BlockSizeMismatch": "errors", "NodeTableError": "errors",
    # layout / codec
    "Layout": "layout", "AreaKind": "layout",
    "FORMAT_VERSION": "codec", "AreaHeader": "codec",
    # devices and the facade
    "Device": "simdisk", "SimDisk": "simdisk",
    "Placement": "clusterdisk", "ClusterDisk": "clusterdisk", "best_view": "clusterdisk",
    "view_copy_to_write": "clusterdisk",
    "BlockDevice": "blockdev",
    "RegistryTooLarge": "registry_codec", "RegistryHead": "registry_codec", "RegistryCopy": "registry_codec",
    "format_disk": "admin", "add_node": "admin", "probe": "admin",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
