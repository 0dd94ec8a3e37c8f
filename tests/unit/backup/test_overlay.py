"""The overlay a synthetic full lays a chain's diffs with: ranges put over ranges, against a byte-by-byte model."""

from __future__ import annotations

import random

import pytest

from virtrbd.backup.overlay import Overlay


def model_of(overlay: Overlay, size: int) -> list:
    """Per byte: None (untouched), "z" (zeros) or (diff, byte of it)."""
    bytes_ = [None] * size
    for start, end, place in overlay.within(0, size):
        for at in range(start, end):
            bytes_[at] = "z" if place is None else (place[0], place[1] + at - start)
    return bytes_


@pytest.mark.parametrize("seed", range(20))
def test_ranges_put_over_ranges_keep_what_each_byte_was_last_given(seed):
    rng = random.Random(seed)
    size, overlay, expected = 300, Overlay(), [None] * 300
    for put in range(rng.randrange(1, 40)):
        start = rng.randrange(size)
        end = min(size, start + rng.randrange(1, 60))
        place = None if rng.random() < 0.3 else (put, rng.randrange(10_000))
        overlay.put(start, end, place)
        for at in range(start, end):
            expected[at] = "z" if place is None else (place[0], place[1] + at - start)
        assert model_of(overlay, size) == expected
        # disjoint and in order: each range ends where the next starts, or before
        assert all(end <= start for end, start in zip(overlay.ends, overlay.starts[1:], strict=False))
        assert all(start < end for start, end in zip(overlay.starts, overlay.ends, strict=True))
    window = (rng.randrange(size), rng.randrange(size))
    low, high = min(window), max(window) + 1
    inside = model_of_window(overlay, low, high)
    assert inside == expected[low:high]


def model_of_window(overlay: Overlay, low: int, high: int) -> list:
    bytes_ = [None] * (high - low)
    for start, end, place in overlay.within(low, high):
        assert low <= start < end <= high
        for at in range(start, end):
            bytes_[at - low] = "z" if place is None else (place[0], place[1] + at - start)
    return bytes_


def test_an_empty_range_changes_nothing():
    overlay = Overlay()
    overlay.put(10, 10, None)
    assert overlay.within(0, 100) == []
