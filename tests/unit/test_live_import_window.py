"""The bound on a RAW instant restore's own object writes: operations and bytes in flight."""

from __future__ import annotations

import threading

from virtrbd.ceph import live_import
from virtrbd.ceph.live_import import _Window

MiB = 1 << 20


class Done:
    def __init__(self, value: int):
        self.value = value

    def get_return_value(self) -> int:
        return self.value


def entered(window: _Window, size: int) -> threading.Event:
    """Enter from another thread; the event is set once the window let it in."""
    event = threading.Event()
    threading.Thread(target=lambda: (window.enter(size), event.set()), daemon=True).start()
    return event


def test_bytes_in_flight_stay_within_the_bound_and_a_larger_write_goes_alone():
    window = _Window()
    window.enter(10 * MiB)
    leave_first = window.leaver(10 * MiB, True)
    waiting = entered(window, 8 * MiB)                  # 18 MiB would pass the 16 MiB bound
    assert not waiting.wait(0.2)
    leave_first(Done(0))
    assert waiting.wait(5)
    window.leaver(8 * MiB, True)(Done(-17))
    alone = entered(window, 40 * MiB)                   # larger than the bound: it goes when nothing else is
    assert alone.wait(5)
    window.leaver(40 * MiB, False)(Done(0))
    window.drain()
    assert window.results == [(0, True), (-17, True), (0, False)] and window.ops == window.bytes == 0


def test_operations_in_flight_stay_within_the_bound(monkeypatch):
    monkeypatch.setattr(live_import, "_IN_FLIGHT", 3)
    window = _Window()
    for _ in range(3):
        window.enter(0)
    fourth = entered(window, 0)
    assert not fourth.wait(0.2)
    window.leaver(0, False)(Done(0))
    assert fourth.wait(5)
    drained = threading.Event()
    threading.Thread(target=lambda: (window.drain(), drained.set()), daemon=True).start()
    assert not drained.wait(0.2)                        # three still in flight
    for _ in range(3):
        window.leaver(0, False)(Done(0))
    assert drained.wait(5)


def test_the_work_on_every_object_opens_the_image_with_more_of_it_in_flight():
    """The object map's rebuild and the sparsify run on the OSDs, bound by their latency, with no data in
    the client: their image is opened with PER_OBJECT_SETTINGS, not the copier's 4 operations."""
    from unittest import mock

    from virtrbd.ceph import Cluster
    cluster = mock.create_autospec(Cluster, instance=True)
    image = cluster.image.return_value.__enter__.return_value
    live_import.LiveImport(cluster).sparsify("rbd", "vm", 4096)
    cluster.image.assert_called_once_with("rbd", "vm", settings=live_import.PER_OBJECT_SETTINGS)
    image.sparsify.assert_called_once_with(4096)
