"""virtrbd: manage Ceph RBD storage for KVM hypervisors through libvirt and librbd.

``from virtrbd import Storage`` is the library API for hypervisor agents;
``virtrbd.errors`` holds every exception it raises.

The names below are loaded on first use: libvirt runs the qemu hook for every
domain event, and its no-op path must not pay for importing the API.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ClusterInfo", "ImageSpec", "Storage", "__version__"]

_LAZY = {"Storage": "storage", "ClusterInfo": "storage", "ImageSpec": "spec"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'virtrbd' has no attribute {name!r}")
