"""The embedded lab: a throwaway Ceph cluster and libvirtd on 127.0.0.1 for users and tests.

Nothing in the storage path depends on this package.  Its names load on first
use, so that the command line does not pay for the lab when it is not used.
"""

from __future__ import annotations

__all__ = ["CephSpec", "Lab", "default_root"]

_LAZY = {"CephSpec": "ceph_cluster", "Lab": "lab", "default_root": "lab"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'virtrbd.lab' has no attribute {name!r}")
