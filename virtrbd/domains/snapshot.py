"""A snapshot of every rbd disk of a domain at one instant, its guest frozen only around that instant.

How the instant is made one for all disks:

- a running guest whose agent answers has its filesystems frozen (the agent
  flushes them and holds new writes), every disk is snapshotted, and the guest
  is thawed at once: ``application``;
- a running guest not frozen (``--quiesce off``, or ``auto`` when the agent did
  not freeze) is paused around the snapshots when it has more than one disk —
  QEMU drains the I/O in flight when it stops — and one disk's snapshot is one
  instant by itself: ``crash``;
- a domain that is not running is snapshotted as it is: ``application`` when
  the guest shut itself down, ``crash`` otherwise.

A thaw guard (``libvirt.thaw_guard``), started and connected before anything
is frozen or paused, undoes it whatever becomes of this process.  A failure on
the way removes the snapshots this call made: every disk has SNAP or none does.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

from .. import exits
from ..ceph import translated
from ..ceph.image import SNAP_CREATE_SKIP_QUIESCE
from ..errors import LibvirtError, OperationTimeoutError, UsageError, VirtrbdError
from ..layering.base import ConsistencyRecord
from ..libvirt.domain import Domain, DomainDisk, DomainFacts
from ..libvirt.host import Host
from ..libvirt.thaw_guard import ThawGuard
from .request import DEFAULT_FREEZE_TIMEOUT, check_request

log = logging.getLogger(__name__)

#: seconds Ceph may take beyond the freeze timeout to end the snapshot calls (or their removal) before
#: virtrbd gives up on them, says so and leaves
SETTLE = 30.0
#: seconds to wait for the guard's word once the release is left to it
GUARD_ANSWER = 5.0

@dataclass(frozen=True)
class DomainSnapshot:
    """What ``snapshot_domain`` made, how consistent it is and what the freeze cost the guest."""

    domain: str
    uuid: str
    snapshot: str
    consistency: str                        # "application" or "crash"
    disks: tuple[DomainDisk, ...]
    frozen: int | None = None               # filesystems the agent froze; None: no freeze
    paused: bool = False                    # paused around the snapshots instead
    note: str | None = None                 # why ``auto`` settled for crash consistency
    seconds: dict[str, float] = field(default_factory=dict)    # freeze, snapshots, thaw; window: all three

    def describe(self) -> str:
        disks = ", ".join(f"{d.target} {d.image}" for d in self.disks)
        how = (f"{self.frozen} filesystem(s) frozen for {self.seconds['window'] * 1000:.0f} ms"
               if self.frozen is not None else
               f"paused for {self.seconds['window'] * 1000:.0f} ms" if self.paused else "not frozen")
        text = f"snapshot {self.snapshot} of domain {self.domain}: {disks}; {self.consistency}-consistent ({how})"
        return text + (f"; {self.note}" if self.note else "")


def snapshot_domain(storage, name: str, snapshot: str, *, quiesce: str = "auto",
                    freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT, libvirt_module=None) -> DomainSnapshot:
    """Snapshot ``snapshot`` of every rbd disk of domain ``name`` at one instant (see the module's text)."""
    check_request(snapshot, quiesce, freeze_timeout)
    with Host(storage.config.libvirt.uri, libvirt_module=libvirt_module) as host, ExitStack() as stack:
        domain = Domain(host, name)
        facts = domain.facts()
        images = [stack.enter_context(storage.cluster.image(d.image.pool, d.image.image)) for d in facts.disks]
        _refuse_taken(facts, images, snapshot)
        try:
            made = _OneInstant(host, domain, facts, images, snapshot, quiesce, freeze_timeout).take()
        except _Unfinished:
            # closing an image, or the connection, would wait for the calls still inside librbd, or abort;
            # the images' context managers are kept too (collected, they would close them)
            exits.keep_until_exit(stack.pop_all(), *images)
            storage.cluster.forsake()
            raise
        _record(made, images)
        return made


def _refuse_taken(facts: DomainFacts, images: list, snapshot: str) -> None:
    seen = set()
    for disk, image in zip(facts.disks, images, strict=True):
        if disk.image in seen:
            raise UsageError(f"domain {facts.name}: image {disk.image} is attached twice")
        seen.add(disk.image)
        with translated(f"listing snapshots of {disk.image}"):
            names = {snap["name"] for snap in image.list_snaps()}
        if snapshot in names:
            raise UsageError(f"domain {facts.name}: disk {disk.target} ({disk.image}) already has a snapshot "
                             f"{snapshot}; nothing was created")


def _record(made: DomainSnapshot, images: list) -> None:
    """Each image's snapshot says how it was taken and with which disks (``snap ls``, backups' manifests)."""
    disks = tuple(str(d.image) for d in made.disks)
    for disk, image in zip(made.disks, images, strict=True):
        with translated(f"recording the consistency of {disk.image.at(made.snapshot)}"):
            snap_id = next(s["id"] for s in image.list_snaps() if s["name"] == made.snapshot)
            record = ConsistencyRecord(snap_id, made.consistency, made.uuid, made.domain, disks)
            image.metadata_set(ConsistencyRecord.key(made.snapshot), record.to_json())


class _OneInstant:
    """One call's hold on the guest (a freeze or a pause, guarded), the snapshots inside it, and the release."""

    def __init__(self, host: Host, domain: Domain, facts: DomainFacts, images: list, snapshot: str,
                 quiesce: str, freeze_timeout: float):
        self.host, self.domain, self.facts, self.images = host, domain, facts, images
        self.snapshot, self.quiesce, self.timeout = snapshot, quiesce, freeze_timeout
        self.guard: ThawGuard | None = None
        self.holding: str | None = None         # "thaw" or "resume": what the guard would undo
        self._asked = 0.0
        self.frozen: int | None = None
        self.paused = False
        self.note: str | None = None
        self.seconds: dict[str, float] = {}

    def take(self) -> DomainSnapshot:
        """Hold, snapshot, release; on any failure (a signal included) released and nothing left behind."""
        made: list = []
        try:
            consistency = self._hold()
            held = time.monotonic()
            self._snapshot_all(made)
            snapped = time.monotonic()
            self.seconds["snapshots"] = snapped - held
            self._release()
            if self.guard is not None and self.guard.deadline is not None and snapped >= self.guard.deadline:
                raise LibvirtError(f"domain {self.facts.name}: the snapshots took longer than the freeze timeout "
                                   f"({self.timeout:g} s) and the guard released the guest before they ended")
        except _Unfinished:
            self._release(quietly=True, within=1.0)        # the guard acts already: its deadline passed
            raise
        except BaseException:
            self._release(quietly=True)
            self._remove(made)
            raise
        return DomainSnapshot(self.facts.name, self.facts.uuid, self.snapshot, consistency, self.facts.disks,
                              self.frozen, self.paused, self.note, dict(self.seconds))

    def _snapshot_all(self, made: list) -> None:
        """Every disk's snapshot at once: each is a round trip to the image's lock owner (QEMU) and a snapshot
        id from the monitors, so one after the other would stretch the freeze by that much per disk.

        A monitor that stops answering makes librbd wait without end, so the
        calls run on threads of their own and are waited for until the freeze
        timeout and ``SETTLE`` seconds more: what ends late is removed again.
        """
        pairs = list(zip(self.facts.disks, self.images, strict=True))
        calls = [lambda image=image: image.create_snap(self.snapshot, SNAP_CREATE_SKIP_QUIESCE) for _, image in pairs]
        start = self._asked if self.holding else time.monotonic()
        outcomes = _bounded(calls, start + self.timeout + SETTLE)
        made.extend(pair for pair, outcome in zip(pairs, outcomes, strict=True) if outcome is None)
        pending = [str(disk.image) for (disk, _), outcome in zip(pairs, outcomes, strict=True) if outcome is _PENDING]
        if pending:         # removing the others would wait for Ceph as well: the line names them all
            every = [str(disk.image) for disk, _ in pairs]
            raise _Unfinished(f"domain {self.facts.name}: Ceph did not create snapshot {self.snapshot} of "
                              f"{', '.join(pending)} within {self.timeout + SETTLE:g} s (a monitor or OSD down?); "
                              f"the guest was released; once Ceph answers, remove {self.snapshot} wherever it "
                              f"appears on {', '.join(every)} ('virtrbd snap rm')")
        for (disk, _), outcome in zip(pairs, outcomes, strict=True):
            if outcome is not None:
                with translated(f"snapshot {disk.image.at(self.snapshot)}"):
                    raise outcome

    # --- holding the guest still ----------------------------------------------------------------------

    def _hold(self) -> str:
        facts = self.facts
        if not facts.active:
            consistency = "application" if facts.shut_down_cleanly else "crash"
            if consistency == "crash" and self.quiesce == "require":
                raise LibvirtError(f"domain {facts.name}: is off without a clean shutdown, so its disks hold what "
                                   f"a power cut leaves; nothing was created (--quiesce require)")
            return consistency
        if facts.running and self.quiesce != "off" and self._freeze():
            return "application"
        if not facts.running and self.quiesce == "require":
            raise LibvirtError(f"domain {facts.name}: is {facts.state}, so its agent cannot freeze its "
                               f"filesystems; nothing was created (--quiesce require)")
        if facts.running and len(facts.disks) > 1:
            self._arm("resume")
            self.domain.pause()
            self.paused = True
        return "crash"

    def _arm(self, action: str) -> None:
        """A guard of its own for each hold, started and connected before the freeze or pause is asked."""
        self.guard = ThawGuard(self.host.uri, self.facts.uuid, self.timeout)
        self._asked = time.monotonic()
        self.guard.arm(action)
        self.holding = action

    def _freeze(self) -> bool:
        """Freeze through the agent, at most until the guard's deadline; False when ``auto`` goes on without."""
        self._arm("thaw")
        outcome: list = []
        asking = threading.Thread(target=self._ask_freeze, args=(outcome,), daemon=True)
        asking.start()
        asking.join(max(0.0, self._asked + self.timeout - time.monotonic()))
        self.seconds["freeze"] = time.monotonic() - self._asked
        if outcome and isinstance(outcome[0], int):
            self.frozen = outcome[0]
            return True
        why = str(outcome[0]) if outcome else f"no answer within {self.timeout:g} s"
        self._release(quietly=True, precaution=True)
        self.frozen = None
        if self.quiesce == "require":
            raise LibvirtError(f"domain {self.facts.name}: its filesystems could not be frozen ({why}); "
                               f"nothing was created (--quiesce require)")
        self.note = f"the guest agent did not freeze the filesystems ({why})"
        self.guard = None
        self.seconds = {}
        return False

    def _ask_freeze(self, outcome: list) -> None:
        try:
            outcome.append(self.domain.freeze())
        except VirtrbdError as exc:
            outcome.append(exc)

    def _release(self, quietly: bool = False, within: float | None = None, precaution: bool = False) -> None:
        """Thaw or resume what this call holds, then let the guard go.  A thaw that fails, or does not return
        within ``within`` seconds (default ``SETTLE``: librbd holds the guest's writes while a snapshot waits
        for Ceph, so the agent's thaw waits too), is left to the guard.  ``precaution``: the thaw after a failed
        freeze, which fails the same way when the agent is gone: not worth a line of its own."""
        within = SETTLE if within is None else within
        guard, holding = self.guard, self.holding
        if guard is None or holding is None:
            return
        self.holding = None
        started = time.monotonic()
        undo = self.domain.resume if holding == "resume" else self.domain.thaw
        outcome, = _bounded([undo], started + within)
        self.seconds["thaw"] = time.monotonic() - started
        self.seconds["window"] = time.monotonic() - self._asked
        if outcome is None:
            guard.done()
            return
        what = "resuming" if holding == "resume" else "thawing the filesystems of"
        why = f"{what} {self.facts.name}: no answer within {within:g} s" if outcome is _PENDING else str(outcome)
        if precaution:
            guard.abandon(0)
            log.debug("%s (after a failed freeze; left to the thaw guard)", why)
            return
        answer = guard.abandon(GUARD_ANSWER)
        said = f"{why}; the thaw guard then said: {answer or f'nothing within {GUARD_ANSWER:g} s (still trying)'}"
        if not quietly:
            raise LibvirtError(said)
        log.warning("%s", said)

    def _remove(self, made: list) -> None:
        """Remove the snapshots this call made, as long as Ceph answers within ``SETTLE`` seconds."""
        calls = [lambda image=image: image.remove_snap(self.snapshot) for _, image in made]
        for (disk, _), outcome in zip(made, _bounded(calls, time.monotonic() + SETTLE), strict=True):
            if outcome is not None:
                why = "Ceph did not answer" if outcome is _PENDING else str(outcome)
                log.warning("snapshot %s left behind by a failed domain snapshot: %s", disk.image.at(self.snapshot),
                            why)


class _Unfinished(OperationTimeoutError):
    """Calls into librbd still running: their images must not be closed (closing would wait for them)."""


#: what ``_bounded`` reports for a call still running at its limit
_PENDING = object()


def _bounded(calls: list, until: float) -> list:
    """Run ``calls`` at once, each on a daemon thread; per call None (it returned), its exception, or
    ``_PENDING`` when it still runs at ``until`` (a ``time.monotonic()`` value): the process may end without it."""
    outcomes: list = [_PENDING] * len(calls)

    def run(index: int) -> None:
        try:
            calls[index]()
            outcomes[index] = None
        except BaseException as exc:        # noqa: BLE001 - handed to the caller
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()))
    return list(outcomes)
