"""CRC-32C (Castagnoli, as iSCSI, ext4 and Ceph use it), computed by Intel's ISA-L (Debian's libisal2).

Every backup file's bytes and every manifest pass through a CRC-32C, so it must
run in hardware: ISA-L uses the CPU's CRC32 instruction (25 GiB/s here), and,
called through ctypes, lets other threads run meanwhile.  The Python bindings
Debian packages compute it in software only (0.5 s per GiB), and the one on
PyPI is not in Debian, which a .deb can only depend on.

Which of ISA-L's versions: not the one its dispatcher (``crc32_iscsi``) picks
on a CPU with AVX-512.  That version (``crc32_iscsi_by16_10``, 34 GiB/s) uses
the 512-bit registers and returns without ``vzeroupper``: the calling thread's
upper register state stays dirty, and from then on every SSE instruction it
runs without the VEX encoding waits on it.  XXH3 in Debian's libxxhash is such
code: after one CRC it hashed at 4 GiB/s instead of 17 in the same thread, and a
thread started afterwards inherits the state.  A backup hashes every byte it
reads, so that cost four times what the faster CRC saved.  Where the CPU has
SSE 4.2 and the library exports it, the SSE 4.2 version (``crc32_iscsi_00``,
which leaves the state alone) is called; elsewhere (another architecture, an
old CPU) the dispatcher's choice.  ``bench.bench_checksums`` measures both.

ISA-L takes and returns the register without the usual inversions,
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


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The first CPU's feature flags as the kernel lists them (empty where there is no such list)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def isal_function_name(flags: set[str], exported: bool) -> str:
    """The ISA-L entry point to call: the SSE 4.2 version where it can run (see the module's docstring)."""
    return "crc32_iscsi_00" if exported and "sse4_2" in flags else "crc32_iscsi"


_crc = getattr(_lib, isal_function_name(cpu_flags(), hasattr(_lib, "crc32_iscsi_00")))
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
