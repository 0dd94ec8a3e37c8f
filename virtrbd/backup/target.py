"""The image a restore writes, from its temporary name to the name the user gave.

A restore never writes into the image the user named: it fills a new image
under a temporary name (``IMAGE.virtrbd-restore-XXXXXXXX``) and renames it
only once every checksum held.  With ``force`` the old image steps aside first
and is removed last, so one of them holds the data at every moment.  Any
failure before the rename removes the temporary image; a restore killed
outright leaves it, and a later restore into the same pool removes it
(``leftovers``).  ``RestoreTarget`` owns all of that, so that ``restore.py``
reads as the steps of a restore.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .. import exits
from ..ceph import Cluster, RbdImage, translated
from ..errors import AlreadyExistsError, BackupError, BusyError, HasSnapshotsError, VirtrbdError
from ..spec import ImageSpec
from .leftovers import REPLACED_IMAGE_MARK, in_use, remove_image, remove_stale_temp_images, temp_image_name
from .rbd_io import RbdSink, resize_image
from .results import RestorePlan
from .stream import Sink
from .tuning import (
    client_has_restore_config,
    configure_for_restore,
    forget_restore_config,
    hold_back_object_map,
    restore_object_map,
)
from .via_libvirt import DEFAULT_OBJECT_SIZE, LibvirtSink, can_upload, create_volume

if TYPE_CHECKING:
    from ..libvirt.policy import LibvirtTarget

log = logging.getLogger(__name__)


class RestoreTarget:
    """Where one restore writes: checked on creation, then ``building`` → ``sink`` → ``settle`` → ``publish``.

    ``libvirt``: where the restore may upload through libvirt's volume upload;
    it does when that pool stands for the target's Ceph pool, the image has the
    default object size and the running libvirtd can take the upload.
    """

    def __init__(self, cluster: Cluster, spec: ImageSpec, plan: RestorePlan, *, force: bool = False,
                 libvirt: LibvirtTarget | None = None):
        self.cluster = cluster
        self.spec = spec
        self.plan = plan
        names = cluster.image_names(spec.pool)
        self.replaces = spec.image in names
        if self.replaces and not force:
            raise AlreadyExistsError(f"image {spec}: already exists (--force replaces it)")
        if self.replaces:
            check_replaceable(cluster, spec)
        remove_stale_temp_images(cluster, spec.pool, names=names)
        self.temp = temp_image_name(spec.image)
        self.what = f"{spec.pool}/{self.temp}"
        self.libvirt = libvirt if libvirt is not None and self._takes_upload(libvirt) else None
        self._created = self._published = False
        self._aside: str | None = None
        self._held_back = 0
        self._config_by_metadata = False

    def _takes_upload(self, libvirt: LibvirtTarget) -> bool:
        base = self.plan.links[0]
        return (self.spec.pool == libvirt.ceph_pool and base.object_size == DEFAULT_OBJECT_SIZE
                and can_upload(libvirt))

    @property
    def path(self) -> str:
        """How the data goes in: ``libvirt`` (volume upload) or ``librbd``."""
        return "libvirt" if self.libvirt is not None else "librbd"

    @contextmanager
    def building(self) -> Iterator[RbdImage]:
        """The temporary image, made and open; removed again on any failure before ``publish``."""
        note = exits.note_at_forced_exit(f"the temporary image {self.what} (the next restore into "
                                         f"{self.spec.pool} removes it)")
        try:
            self._create()
            with self.cluster.image(self.spec.pool, self.temp) as image:
                yield image
        except BaseException:
            if self._created and not self._published:
                try:
                    remove_image(self.cluster, self.spec.pool, self.temp)
                except VirtrbdError as exc:
                    log.warning("could not remove the partial image %s: %s", self.what, exc)
            raise
        finally:
            exits.forget(note)

    def _create(self) -> None:
        base = self.plan.links[0]
        if self.libvirt is not None:
            self._created = True                       # from here on, a failure removes it
            create_volume(self.libvirt, self.temp, base.size)
        else:
            size = base.object_size
            order = size.bit_length() - 1 if size & (size - 1) == 0 else None
            self.cluster.create(self.spec.pool, self.temp, base.size, order=order)
            self._created = True
        self._config_by_metadata = self.libvirt is None and not client_has_restore_config(self.cluster)
        if self._config_by_metadata:
            configure_for_restore(self.cluster, self.spec.pool, self.temp)

    def sink(self, image: RbdImage) -> Sink:
        """Where the chain's data goes: libvirt's volume upload, or librbd with the object map held back."""
        if self.libvirt is not None:
            return LibvirtSink(self.libvirt, self.temp, self.plan.links[0].size,
                               resize=lambda size: resize_image(image, self.what, size))
        self._held_back = hold_back_object_map(image, self.plan, self.what)
        return RbdSink(image, self.what)

    def settle(self, image: RbdImage) -> None:
        """Once the data is in: the object map back on and rebuilt, the restore's settings gone.

        Before any snapshot: a snapshot's object map is a copy of the image's.
        """
        if self._held_back:
            restore_object_map(image, self._held_back, self.what)
        if self._config_by_metadata:
            forget_restore_config(image, self.what)

    def snapshot(self, image: RbdImage, name: str) -> None:
        with translated(f"creating snapshot {self.what}@{name}"):
            image.create_snap(name)

    def publish(self) -> None:
        """Give the restored image the target's name, the old image stepping aside first.

        Called while the image is still open: an image under a temporary name
        that nobody has open is what ``remove_stale_temp_images`` takes for a
        killed restore's.
        """
        self._aside = step_aside(self.cluster, self.spec) if self.replaces else None
        try:
            self.cluster.rename(self.spec.pool, self.temp, self.spec.image)
        except BaseException as exc:
            if self._aside:
                step_back(self.cluster, self.spec, self._aside, exc)
            raise
        self._published = True

    def clean_up(self) -> None:
        """After the rename: the replaced image goes, libvirt learns the new name."""
        if self._aside:
            remove_replaced(self.cluster, self.spec.pool, self._aside)
        if self.libvirt is not None:
            refresh_libvirt_pool(self.libvirt)


def check_replaceable(cluster: Cluster, spec: ImageSpec) -> None:
    """--force replaces an image only if removing it would work: no snapshots, nobody has it open."""
    with cluster.image(spec.pool, spec.image, read_only=True) as image, translated(f"inspecting {spec}"):
        if list(image.list_snaps()):
            raise HasSnapshotsError(f"image {spec}: has snapshots; remove them before replacing it")
        if list(image.watchers_list()):
            raise BusyError(f"image {spec}: is in use (open by a client); it cannot be replaced")


def step_aside(cluster: Cluster, target: ImageSpec) -> str:
    """Rename the image a restore replaces out of the way; its new name.

    The old image is removed only once the restored one has its name, so one
    of them holds the data at every moment, also for a restore killed then
    (its old image stays as ``IMAGE.virtrbd-replaced-XXXXXXXX``, which nothing
    removes on its own).  A client that opened it since ``check_replaceable``
    looked makes the restore fail, as it did then.
    """
    aside = temp_image_name(target.image, REPLACED_IMAGE_MARK)
    cluster.rename(target.pool, target.image, aside)
    try:
        opened = in_use(cluster, target.pool, aside)
    except BaseException as exc:
        step_back(cluster, target, aside, exc)
        raise
    if opened:
        step_back(cluster, target, aside, None)
        raise BusyError(f"image {target}: is in use (open by a client); it cannot be replaced")
    return aside


def step_back(cluster: Cluster, target: ImageSpec, aside: str, cause: BaseException | None) -> None:
    """Give the old image its name back after a replacement failed; say where it is if that fails too."""
    try:
        cluster.rename(target.pool, aside, target.image)
    except VirtrbdError as exc:
        why = f"{cause}; " if isinstance(cause, VirtrbdError) else ""
        raise BackupError(f"image {target} could not be replaced ({why}putting it back failed: {exc}); "
                          f"it is now {target.pool}/{aside}: rename it back by hand") from None


def remove_replaced(cluster: Cluster, pool: str, aside: str) -> None:
    """Remove the image a restore replaced; a failure leaves it, named, and the restore stands."""
    try:
        remove_image(cluster, pool, aside)
    except VirtrbdError as exc:
        log.warning("the replaced image is now %s/%s and could not be removed (%s): remove it by hand",
                    pool, aside, exc)


def refresh_libvirt_pool(libvirt: LibvirtTarget) -> None:
    """Have libvirt list the restored image by its name: it made the volume under the temporary name,
    and learns of the rename only by rescanning the pool (seconds for a pool of thousands of images)."""
    try:
        libvirt.host.refresh_pool(libvirt.pool)
    except VirtrbdError as exc:
        log.warning("libvirt's pool %s still lists the restored image under its temporary name (%s): "
                    "refresh the pool", libvirt.pool, exc)
