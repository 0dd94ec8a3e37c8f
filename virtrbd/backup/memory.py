"""An image held in memory as a ``stream.Source`` or a ``stream.Sink``: the model the formats are tested on."""

from __future__ import annotations

from collections.abc import Iterable

from .window import normalized


class MemorySource:
    """An image held in memory, with an explicit allocation map: for tests and as the model of a source."""

    def __init__(self, data: bytes, extents: Iterable[tuple[int, int]] | None = None):
        self.size = len(data)
        self.map = normalized(extents if extents is not None else [(0, len(data))], self.size)
        content = bytearray(self.size)          # outside the map an image reads as zeros
        for start, end in self.map:
            content[start:end] = data[start:end]
        self.data = bytes(content)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        end = offset + length
        return [(max(s, offset), min(e, end) - max(s, offset)) for s, e in self.map if s < end and e > offset]

    def submit_read(self, offset: int, length: int, done) -> None:
        done(self.data[offset:offset + length], None)


class MemorySink:
    """An image in memory as a restore target: for tests and as the model of a sink."""

    def __init__(self, size: int):
        self.data = bytearray(size)
        self.written: list[tuple[int, int]] = []               # (offset, length) of every write, to check sparseness

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, offset: int, data, start: int = 0, end: int | None = None) -> None:
        end = len(data) if end is None else end
        end = min(end, start + max(0, self.size - offset))
        if end > start:
            self.data[offset:offset + end - start] = memoryview(data)[start:end]
            self.written.append((offset, end - start))

    def zero(self, offset: int, length: int) -> None:
        length = min(length, self.size - offset)
        self.data[offset:offset + length] = bytes(length)

    def resize(self, size: int) -> None:
        if size < self.size:
            del self.data[size:]
        else:
            self.data.extend(bytes(size - self.size))

    def drain(self) -> None:
        pass

    def flush(self) -> None:
        pass
