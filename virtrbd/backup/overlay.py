"""A chain read as one image in offset order, with no scratch copy: the full backup's chunks, its diffs laid over.

The diffs are read first, each whole: its checksum is checked and the place of
every range's final bytes is kept in an ``Overlay`` (which diff file and which
byte of it, or zeros), a later diff over an earlier one; a size record that
shrinks the image lays zeros over what it cuts off.  Then the full backup is
read chunk by chunk, its checksum checked as a restore checks it, and each
chunk comes out with the overlay applied, the diffs' bytes read where they lie
(``pread``, of the plaintext of an encrypted diff).  The consumer (a synthetic full's writer) raises, and publishes
nothing, when a checksum fails: the full's is known only after its last chunk.

Memory: a chunk or two, and a few numbers per separate changed range.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field

from ..errors import CorruptBackupError
from .formats import check_checksum, check_diff_header, full_format, identities_of, open_stream, plain_size
from .formats.checksum import FILE_HASHES, BackgroundDigest
from .formats.manifest import Manifest
from .formats.rbddiff import DiffReader
from .results import RestorePlan
from .sealing.plain import PlainFile
from .stream import CHUNK, check_cancel

_ZEROS = memoryview(bytes(CHUNK))

#: where a range's bytes are: (index of the diff file, byte of it where the range starts), or None for zeros
Place = tuple[int, int] | None


class Overlay:
    """Disjoint ``[start, end)`` ranges in order, each with the place of its bytes; a range put over others
    replaces what it covers of them."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.places: list[Place] = []

    def put(self, start: int, end: int, place: Place) -> None:
        if end <= start:
            return
        first = bisect.bisect_right(self.ends, start)         # the first range that ends after start
        last = bisect.bisect_left(self.starts, end)           # the first range that starts at or after end
        starts, ends, places = [start], [end], [place]
        if first < last and self.starts[first] < start:       # the head of the first range stays
            starts.insert(0, self.starts[first])
            ends.insert(0, start)
            places.insert(0, self.places[first])
        if first < last and self.ends[last - 1] > end:        # and the tail of the last one
            starts.append(end)
            ends.append(self.ends[last - 1])
            places.append(_moved(self.places[last - 1], end - self.starts[last - 1]))
        self.starts[first:last], self.ends[first:last], self.places[first:last] = starts, ends, places

    def within(self, offset: int, end: int) -> list[tuple[int, int, Place]]:
        """The ranges' parts inside ``[offset, end)``, each with the place of its own first byte."""
        found = []
        for index in range(bisect.bisect_right(self.ends, offset), len(self.starts)):
            start = self.starts[index]
            if start >= end:
                break
            clipped = max(start, offset)
            found.append((clipped, min(self.ends[index], end), _moved(self.places[index], clipped - start)))
        return found


def _moved(place: Place, by: int) -> Place:
    return None if place is None else (place[0], place[1] + by)


@dataclass
class ChainChunk:
    """One chunk of the chain's image, as a synthetic full's writer takes it."""

    index: int
    offset: int
    length: int
    extents: list[tuple[int, int]] = field(default_factory=list)      # (start, end) of the bytes handed over
    read_bytes: int = 0


def chain_chunks(plan: RestorePlan) -> Iterator[tuple[ChainChunk, list[tuple[int, bytes | bytearray]]]]:
    """The chain's image up to its newest point's size, chunk by chunk: ``(chunk, parts)`` for each chunk
    with data, ``parts`` being ``(offset, bytes)`` in order, zeros between them.  A chunk the diffs change is
    put together in one buffer, the same each time: its bytes hold until the next chunk is asked for."""
    full, diffs = plan.links[0], plan.links[1:]
    overlay, buffer = Overlay(), bytearray(CHUNK)
    with ExitStack() as stack:
        size, files = full.size, list[PlainFile]()
        for m in diffs:
            with open_stream(m) as f:
                size = _lay_over(m, f, len(files), overlay, size)
            files.append(stack.enter_context(closing(PlainFile(m.data_path, identities_of(m)))))
        fmt = full_format(full)
        reader = stack.enter_context(fmt.reader(full))
        check = stack.enter_context(BackgroundDigest(full.size, algorithm=full.checksum["algorithm"]))
        base = iter(fmt.chunks(reader))
        pending = next(base, None)
        for offset in range(0, size, CHUNK):
            check_cancel()
            length = min(CHUNK, size - offset)
            parts: list = []
            if pending is not None and pending[0] == offset:
                check.add_parts(offset // CHUNK, [(at - offset, data) for at, data in pending[1]])
                parts = _cut(pending[1], offset + length)
                pending = next(base, None)
            read = sum(len(data) for _, data in parts)
            segments = overlay.within(offset, offset + length)
            if segments:
                parts = _laid_over(buffer, offset, length, parts, segments, files, diffs)
                read += sum(end - start for start, end, place in segments if place is not None)
            if parts:
                extents = [(at, at + len(data)) for at, data in parts]
                yield ChainChunk(offset // CHUNK, offset, length, extents, read), parts
        while pending is not None:              # the full's chunks past the final size count for its checksum
            check.add_parts(pending[0] // CHUNK, [(at - pending[0], data) for at, data in pending[1]])
            pending = next(base, None)
        value = check.hexdigest()
    check_checksum(full, value)


def _lay_over(m: Manifest, f, index: int, overlay: Overlay, size: int) -> int:
    """Read one diff whole, its checksum checked, its ranges put over the overlay; the image's new size."""
    hashed = FILE_HASHES[m.checksum["algorithm"]]()
    reader = DiffReader(f, str(m.data_path), file_size=plain_size(m), on_bytes=hashed.update)
    check_diff_header(reader, m)
    new_size = reader.header.size
    overlay.put(new_size, size, None)           # cut off: reads as zeros should the image grow again
    for record in reader.records():
        check_cancel()
        end = record.offset + record.length
        overlay.put(record.offset, end, (index, reader.position - record.length) if record.kind == "w" else None)
    check_checksum(m, hashed.hexdigest())
    return new_size


def _cut(parts: list, end: int) -> list:
    """The parts before ``end`` (the image's final size may cut into a chunk)."""
    kept = []
    for at, data in parts:
        if at < end:
            kept.append((at, data if at + len(data) <= end else data[:end - at]))
    return kept


def _laid_over(buffer: bytearray, offset: int, length: int, parts: list, segments: list, files: list[PlainFile],
               diffs: list[Manifest]) -> list:
    """The chunk with the overlay's ranges in it, put together in ``buffer``, as one part (the writer skips
    its zero blocks)."""
    view = memoryview(buffer)
    view[:length] = _ZEROS[:length]
    for at, data in parts:
        view[at - offset:at - offset + len(data)] = data
    for start, end, place in segments:
        if place is None:
            view[start - offset:end - offset] = _ZEROS[:end - start]
            continue
        index, position = place
        got = files[index].readinto(view[start - offset:end - offset], position)
        if got != end - start:
            raise CorruptBackupError(f"{diffs[index].data_path}: shorter than when it was checked (changed "
                                     f"during the merge?)")
    return [(offset, buffer if length == CHUNK else bytes(view[:length]))]
