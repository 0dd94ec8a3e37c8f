"""libvirt's XML documents for RBD: one typed model per document, rendered into the
operator-editable skeletons of ``xml_templates/`` and parsed back (model → XML → model is the
identity).  This layer knows nothing about Ceph connections; policy lives in the API above it.

The models load on first use, so the qemu hook, which needs only ``safe`` and
``clone_markup``, does not pay for the others.
"""

from __future__ import annotations

__all__ = ["DiskDef", "Encryption", "ForeignDisk", "PoolDef", "SecretDef", "SecretRef", "VolumeDef", "rbd_disks"]

_LAZY = {"DiskDef": "disk", "Encryption": "encryption", "ForeignDisk": "domain_disks", "rbd_disks": "domain_disks",
         "PoolDef": "pool", "SecretDef": "secret", "SecretRef": "common", "VolumeDef": "volume"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'virtrbd.xml' has no attribute {name!r}")
