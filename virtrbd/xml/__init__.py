"""libvirt's XML documents for RBD: one typed model per document, rendered into the
operator-editable skeletons of ``xml_templates/`` and parsed back (model → XML → model is the
identity).  This layer knows nothing about Ceph connections; policy lives in the API above it.
"""

from .common import SecretRef
from .pool import PoolDef
from .secret import SecretDef

__all__ = ["PoolDef", "SecretDef", "SecretRef"]
