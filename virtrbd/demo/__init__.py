"""``virtrbd demo``: the whole mission on the embedded lab, every step through the product and checked.

A golden image becomes a fleet of domains whose disks are copy-on-write
clones made by the qemu hook at boot; one clone is snapshotted, backed up as
RAW, QCOW2 and an incremental, restored and verified; stopping the domains
removes the ephemeral clones.  The report's figures come from this run only.
"""

from .settings import DemoSettings

__all__ = ["DemoSettings"]
