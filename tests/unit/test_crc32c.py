"""CRC-32C through ISA-L, judged by Debian's python3-crc32c (software, another implementation)."""

from __future__ import annotations

import array
import mmap
import os

import crc32c as debian_crc32c
import pytest

from virtrbd import crc32c


def judge(data) -> int:
    """The CRC-32C of ``data`` as Debian's python3-crc32c computes it (slowly, in software)."""
    return debian_crc32c.crc32c(bytes(data))


def test_the_check_value_of_the_standard():
    assert crc32c.value(b"123456789") == 0xE3069283
    assert crc32c.value(b"") == 0


@pytest.mark.parametrize("length", [1, 7, 64, 4095, 65537, 4 << 20])
def test_every_kind_of_buffer_gives_the_crc_of_its_bytes(length):
    data = os.urandom(length)
    expected = judge(data)
    assert crc32c.value(data) == expected
    assert crc32c.value(bytearray(data)) == expected
    assert crc32c.value(memoryview(data)) == expected
    assert crc32c.value(memoryview(b"x" + data)[1:]) == expected          # a view that does not start at 0
    mapped = mmap.mmap(-1, length)
    mapped[:] = data
    assert crc32c.value(mapped) == expected
    assert crc32c.value(memoryview(mapped)[:length // 2]) == judge(data[:length // 2])
    mapped.close()


def test_extending_is_the_crc_of_the_pieces_joined():
    a, b = os.urandom(10000), os.urandom(3333)
    assert crc32c.extend(crc32c.value(a), b) == judge(a + b)
    assert crc32c.value(array.array("I", [1, 2, 3])) == judge(array.array("I", [1, 2, 3]).tobytes())


def test_a_buffer_that_is_not_contiguous_is_refused():
    with pytest.raises((BufferError, ValueError, TypeError)):
        crc32c.value(memoryview(os.urandom(100))[::2])


def test_the_flags_of_the_first_cpu_are_read_from_the_kernels_list(tmp_path):
    listing = tmp_path / "cpuinfo"
    listing.write_text("processor\t: 0\nflags\t\t: fpu sse2 sse4_2 avx512f\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert crc32c.cpu_flags(str(listing)) == {"fpu", "sse2", "sse4_2", "avx512f"}
    assert crc32c.cpu_flags(str(tmp_path / "missing")) == set()
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd crc32\n")
    assert crc32c.cpu_flags(str(tmp_path / "arm")) == set()


def test_the_sse42_version_is_called_where_it_can_run_never_isals_avx512_pick():
    """ISA-L's dispatcher picks, with AVX-512, a version that leaves the thread's SSE code slow
    (bench.bench_checksums measures it); the SSE 4.2 one is used wherever the CPU and library have it."""
    assert crc32c.isal_function_name({"sse4_2", "avx512f", "vpclmulqdq"}, True) == "crc32_iscsi_00"
    assert crc32c.isal_function_name({"sse2"}, True) == "crc32_iscsi"              # an old CPU: ISA-L's choice
    assert crc32c.isal_function_name({"sse4_2"}, False) == "crc32_iscsi"           # a build without it
    here = crc32c.isal_function_name(crc32c.cpu_flags(), hasattr(crc32c._lib, "crc32_iscsi_00"))
    assert crc32c._crc.__name__ == here
