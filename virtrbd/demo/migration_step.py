"""The demo's live migration: a guest on an ephemeral clone writes records while it moves to host b and back.

What it shows: the records the guest called durable before each move are there
after it (the last one with a valid checksum) and new ones follow; the clone
the hook made at the guest's start is still the only image the guest uses, with
one client, and it is removed once, when the guest is finally removed.
"""

from __future__ import annotations

from ..errors import VirtrbdError


class MigrationFailure(VirtrbdError):
    """The guest, its records or its clone are not where a live migration must leave them."""


def there_and_back(tour, step, prefix: str) -> str:
    from ..lab.guest import migration
    from ..lab.guest.domain import GuestSpec
    from ..spec import ImageSpec
    storage, lab = tour.storage, tour.lab
    name = f"{prefix}-migrant"
    disk = ImageSpec(storage.config.ceph.pool, f"{name}-disk")
    tour.guests.create(GuestSpec(name, (disk,), clone_of=tour.golden_spec, ephemeral=True,
                                 memory_mib=tour.settings.guest_memory_mib))
    try:
        _run(lab, "a", name, "records", "start", "vda")
        moves = []
        for to, p2p in (("b", False), ("a", True)):
            before = int(_run(lab, migration.locate(lab, name), name, "records", "durable"))
            moves.append(migration.migrate(lab, name, to, p2p=p2p))
            last = int(_run(lab, to, name, "records", "last", "vda").split()[1])
            if last < before:
                raise MigrationFailure(f"{name}: {before} records were durable before the move to host {to}, "
                                       f"the last valid one after it is {last}")
            with storage.cluster.image(disk.pool, disk.image, read_only=True) as image:
                clients = len(list(image.watchers_list()))
            if clients != 1:
                raise MigrationFailure(f"{disk}: {clients} clients have it open after the move to host {to}")
        _run(lab, "a", name, "records", "stop")
        written = int(_run(lab, "a", name, "records", "durable"))
    finally:
        for host in migration.defined_on(lab, name):
            lab.guests(host).remove(name)
    if storage.image_exists(disk):
        raise MigrationFailure(f"{disk}: the ephemeral clone outlived its guest")
    there, back = moves
    step.figures = {"job_ms": [m.job_ms for m in moves], "downtime_ms": [m.downtime_ms for m in moves],
                    "records": written}
    return (f"{name} on the hook's ephemeral clone moved to host b (direct: libvirt's job {there.job_ms} ms, "
            f"downtime {there.downtime_ms} ms) and back (peer-to-peer: {back.job_ms} ms, {back.downtime_ms} ms) "
            f"while writing {written} records, every one durable before a move valid after it; one client on "
            f"the clone after each move; the clone removed once, with the guest")


def _run(lab, host: str, name: str, *argv: str) -> str:
    done = lab.guests(host).run(name, list(argv))
    if done.exit_code != 0:
        raise MigrationFailure(f"{name}: {' '.join(argv)}: exit {done.exit_code}: {done.stderr.decode().strip()}")
    return done.stdout.decode()
