"""The embedded lab: a throwaway Ceph cluster and libvirtd on 127.0.0.1 for users and tests.

Nothing in the storage path depends on this package.
"""

from .ceph_cluster import CephSpec
from .lab import Lab, default_root

__all__ = ["CephSpec", "Lab", "default_root"]
