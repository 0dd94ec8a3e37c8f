"""The libvirt side: what a hypervisor's libvirt needs for RBD, and the calls that make it so.

* ``policy`` decides from virtrbd.conf: which secret, pool, volumes and disks,
  applied idempotently; where a restore may upload; volumes looked up through
  librbd instead of a pool refresh.
* ``host`` makes the calls: an open connection and the secret, pool, volume and
  domain operations, libvirt's errors translated into ``virtrbd.errors``.
* ``streams`` moves volume data through libvirt (upload, download), where the
  running daemon can (detected, never configured).

Nothing here is imported on the qemu hook's path: libvirtd waits for its hook,
and a call back into it would deadlock.
"""
