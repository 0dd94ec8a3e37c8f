"""Bech32 (BIP 173) without its length limit, as age encodes its keys: ``age1…`` and ``AGE-SECRET-KEY-1…``.

A string is all lower case or all upper case; its checksum is always computed
over the lower-case form.  Only the plain Bech32 constant (1), not Bech32m.
"""

from __future__ import annotations

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Bech32Error(ValueError):
    """Not a Bech32 string (the message says what is wrong, never the string itself)."""


def _polymod(values: list[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATOR):
            if top >> bit & 1:
                check ^= generator
    return check


def _expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(data: bytes | list[int], source: int, target: int, pad: bool) -> list[int]:
    """Bits regrouped from ``source``-bit to ``target``-bit values; without ``pad``, leftovers must be zero."""
    accumulator = bits = 0
    out = []
    for value in data:
        accumulator = accumulator << source | value
        bits += source
        while bits >= target:
            bits -= target
            out.append(accumulator >> bits & (1 << target) - 1)
    if pad and bits:
        out.append(accumulator << target - bits & (1 << target) - 1)
    elif not pad and (bits >= source or accumulator & (1 << bits) - 1):
        raise Bech32Error("its data does not end on a byte boundary")
    return out


def encode(hrp: str, data: bytes, *, upper: bool = False) -> str:
    """``data`` under the human-readable part ``hrp`` (given in lower case)."""
    values = _regroup(data, 8, 5, True)
    check = _polymod(_expand(hrp) + values + [0] * 6) ^ 1
    values += [check >> 5 * (5 - i) & 31 for i in range(6)]
    text = hrp + "1" + "".join(CHARSET[v] for v in values)
    return text.upper() if upper else text


def decode(text: str) -> tuple[str, bytes]:
    """``(hrp, data)`` of a Bech32 string; the hrp in lower case."""
    if text != text.lower() and text != text.upper():
        raise Bech32Error("it mixes upper and lower case")
    text = text.lower()
    hrp, separator, rest = text.rpartition("1")
    if not separator or not hrp or len(rest) < 6:
        raise Bech32Error("it has no human-readable part, separator and checksum")
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        raise Bech32Error("its human-readable part has characters Bech32 does not allow")
    try:
        values = [CHARSET.index(c) for c in rest]
    except ValueError:
        raise Bech32Error("it has characters outside Bech32's alphabet") from None
    if _polymod(_expand(hrp) + values) != 1:
        raise Bech32Error("its checksum does not match (a typo, or a truncated key?)")
    return hrp, bytes(_regroup(values[:-6], 5, 8, False))
