"""libvirt's XML documents for RBD: one typed model per document, rendered into the
operator-editable skeletons of ``xml_templates/`` and parsed back (model → XML → model is the
identity).  This layer knows nothing about Ceph connections; policy lives in the API above it.
"""

from .common import SecretRef
from .disk import DiskDef, rbd_disks
from .pool import PoolDef
from .secret import SecretDef
from .volume import VolumeDef

__all__ = ["DiskDef", "PoolDef", "SecretDef", "SecretRef", "VolumeDef", "rbd_disks"]
