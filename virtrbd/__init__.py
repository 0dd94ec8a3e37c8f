"""virtrbd: manage Ceph RBD storage for KVM hypervisors through libvirt and librbd.

``from virtrbd import Storage`` is the library API for hypervisor agents;
``virtrbd.errors`` holds every exception it raises.
"""

from .spec import ImageSpec
from .storage import ClusterInfo, Storage

__version__ = "0.1.0"
__all__ = ["ClusterInfo", "ImageSpec", "Storage", "__version__"]
