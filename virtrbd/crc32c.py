"""CRC-32C (Castagnoli, as iSCSI, ext4 and Ceph use it), computed by Intel's ISA-L (Debian's libisal2).

Every backup file's bytes and every manifest pass through a CRC-32C, so it must
run in hardware: ISA-L's ``crc32_iscsi`` uses the CPU's CRC32 and carry-less
multiply instructions (about 45 GB/s here), and, called through ctypes, lets
other threads run meanwhile.  The Python bindings Debian packages compute it in
software only (0.5 s per GiB), and the one on PyPI is not in Debian, which a
.deb can only depend on.

``crc32_iscsi`` takes and returns the register without the usual inversions,
so they are applied here: ``value(b"123456789") == 0xE3069283``, the check value
of the standard.  Any buffer works (bytes, bytearray, memoryview, mmap): its
address is taken through the buffer protocol, never by copying.
"""

from __future__ import annotations

import ctypes

MASK = 0xFFFFFFFF
#: the most one call takes (its length is a C int)
_MOST = 1 << 30

_lib = ctypes.CDLL("libisal.so.2")
_crc = _lib.crc32_iscsi
_crc.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
_crc.restype = ctypes.c_uint32


class _Buffer(ctypes.Structure):
    """CPython's ``Py_buffer``."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_Buffer)]
_release_buffer.restype = None
_PYBUF_C_CONTIGUOUS = 0x0020 | 0x0008       # PyBUF_C_CONTIGUOUS (strides asked, C order)


def extend(crc: int, data) -> int:
    """The CRC-32C of the bytes whose CRC-32C is ``crc``, followed by ``data``."""
    if isinstance(data, bytes) and len(data) <= _MOST:
        return _crc(data, len(data), crc ^ MASK) ^ MASK
    view = _Buffer()
    _get_buffer(data, ctypes.byref(view), _PYBUF_C_CONTIGUOUS)     # raises for a non-contiguous buffer
    try:
        register, at, end = crc ^ MASK, view.buf or 0, (view.buf or 0) + view.len
        while at < end:
            take = min(_MOST, end - at)
            register = _crc(at, take, register)
            at += take
        return register ^ MASK
    finally:
        _release_buffer(ctypes.byref(view))


def value(data) -> int:
    """The CRC-32C of ``data``."""
    return extend(0, data)
