"""The one door to Ceph: ``Cluster`` (a connection, pools, images), the image Protocol, error translation.

Three rules are kept here so the rest of virtrbd need not think about them:

* Timeouts come from virtrbd.conf and are set with ``conf_set`` before
  connecting (``Rados.connect(timeout=)`` is ignored by Pacific, and without
  them a wrong key blocks for 300 s).
* The cephx key is handed to librados in-process (``conf_set('key', …)``),
  never through argv, the environment or a file librados would read.
* Every handle lives in a ``with`` block and is closed on every path; every
  librados/librbd exception leaves this package as a ``virtrbd.errors`` class
  whose message names the object and the cause.

Nothing above this package imports ``rados`` or ``rbd``, nor calls
``cluster.rbd`` / ``cluster.handle``: the ``Cluster`` methods are the door.
"""

from .cluster import Cluster, reachable_monitor
from .image import FADVISE_NOCACHE, RbdImage, parent_of
from .translate import errno_error, is_ceph_error, translate, translated

__all__ = ["FADVISE_NOCACHE", "Cluster", "RbdImage", "errno_error", "is_ceph_error", "parent_of",
           "reachable_monitor", "translate", "translated"]
