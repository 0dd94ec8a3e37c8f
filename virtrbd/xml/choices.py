"""The values a disk's options may take, as libvirt's schema (domaincommon.rng) allows them.

A module of their own so that the command line can offer them without loading lxml.
"""

# The values libvirt's schema (domaincommon.rng) allows; checked early for a one-line error.
BUSES = ("virtio", "scsi", "sata", "ide", "usb", "sd", "fdc", "xen")
CACHE_MODES = ("default", "none", "writeback", "writethrough", "directsync", "unsafe")
DISCARD_MODES = ("unmap", "ignore")
IO_MODES = ("threads", "native", "io_uring")
