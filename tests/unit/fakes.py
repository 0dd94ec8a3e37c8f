"""A small stateful Ceph for unit tests: pools of images keyed by name, behind ``virtrbd.ceph.Cluster``'s door.

``FakeCluster`` has the methods of ``Cluster`` that the code under test calls,
with the same parameters; ``FakeImage`` has the methods of ``rbd.Image`` (the
``RbdImage`` Protocol) that a restore calls.  ``test_fakes.py`` checks both
against the real classes, so a fake cannot drift from what it stands for.
Errors are the real ones: ``virtrbd.errors`` from the cluster's door, the
binding's own exceptions from an image's methods where a test injects them.

A test changes what the cluster does with ``on(operation, hook)``: the hook
gets the operation's arguments before it runs and returns an exception to
raise, or None to let it run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import libvirt

from virtrbd import errors

DEFAULT_FEATURES = 61          # layering, exclusive-lock, object-map, fast-diff, deep-flatten: Pacific's default


class Completion:
    """What librbd hands an asynchronous call's callback."""

    def __init__(self, ret: int = 0):
        self._ret = ret

    def get_return_value(self) -> int:
        return self._ret


class FakeImage:
    """An image's bytes, features, snapshots, metadata and clients; ``calls`` logs the changes to its features,
    object map and snapshots in order."""

    def __init__(self, size: int, *, features: int = DEFAULT_FEATURES, object_size: int = 4 << 20):
        self.data = bytearray(size)
        self._features = features
        self.object_size = object_size
        self.snaps: list[str] = []
        self.metadata: dict[str, str] = {}
        self.metadata_ever: set[str] = set()
        self.watchers: list[dict] = []
        self.calls: list[tuple] = []
        #: an exception for the next update_features; raised after the change when ``fail_after_change``
        self.fail_update_features: BaseException | None = None
        self.fail_after_change = False

    def size(self) -> int:
        return len(self.data)

    def resize(self, size: int, allow_shrink: bool = True) -> None:
        del self.data[size:]
        self.data.extend(bytes(size - len(self.data)))

    def features(self) -> int:
        return self._features

    def update_features(self, features: int, enabled: bool) -> None:
        failure, self.fail_update_features = self.fail_update_features, None
        if failure is not None and not self.fail_after_change:
            raise failure
        self._features = self._features | features if enabled else self._features & ~features
        self.calls.append(("on" if enabled else "off", features))
        if failure is not None:
            raise failure

    def rebuild_object_map(self) -> None:
        self.calls.append(("rebuild",))

    def list_snaps(self) -> list[dict]:
        return [{"name": name, "id": index + 1} for index, name in enumerate(self.snaps)]

    def create_snap(self, name: str, flags: int = 0) -> None:
        self.snaps.append(name)
        self.calls.append(("snap", self._features))

    def remove_snap(self, name: str) -> None:
        self.snaps.remove(name)

    def watchers_list(self) -> list[dict]:
        return list(self.watchers)

    def metadata_get(self, key: str) -> str:
        return self.metadata[key]

    def metadata_set(self, key: str, value: str) -> None:
        self.metadata[key] = value
        self.metadata_ever.add(key)

    def metadata_remove(self, key: str) -> None:
        del self.metadata[key]

    def aio_write(self, data: bytes, offset: int, oncomplete: Callable, fadvise_flags: int = 0) -> Completion:
        self.data[offset:offset + len(data)] = data
        completion = Completion()
        oncomplete(completion)
        return completion

    def aio_write_zeroes(self, offset: int, length: int, oncomplete: Callable, zero_flags: int = 0,
                         op_flags: int = 0) -> Completion:
        self.data[offset:offset + length] = bytes(length)
        completion = Completion()
        oncomplete(completion)
        return completion

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeCluster:
    """Pools of ``FakeImage`` keyed by name; ``log`` lists the changes made to them, in order."""

    def __init__(self, *, settings: dict[str, str] | None = None, pools: tuple[str, ...] = ("rbd",),
                 features: int = DEFAULT_FEATURES, on_new_image: Callable[[FakeImage], None] | None = None):
        self.features = features                # of the images ``create`` makes
        self.on_new_image = on_new_image        # called with each image ``create`` makes
        self.pools: dict[str, dict[str, FakeImage]] = {pool: {} for pool in pools}
        self.settings = {"rbd_cache": "true", "rbd_disable_zero_copy_writes": "true",
                         "rbd_concurrent_management_ops": "10", **(settings or {})}
        self.log: list[tuple] = []
        self._hooks: dict[str, Callable[..., BaseException | None]] = {}

    # --- the test's side ---------------------------------------------------------------------------

    def add(self, pool: str, name: str, content: bytes = b"", *, size: int | None = None) -> FakeImage:
        image = FakeImage(size if size is not None else len(content))
        image.data[:len(content)] = content
        self.pools[pool][name] = image
        return image

    def names(self, pool: str = "rbd") -> set[str]:
        return set(self.pools[pool])

    def on(self, operation: str, hook: Callable[..., BaseException | None]) -> None:
        self._hooks[operation] = hook

    def _check(self, operation: str, *args) -> None:
        hook = self._hooks.get(operation)
        failure = hook(*args) if hook else None
        if failure is not None:
            raise failure

    def _pool(self, pool: str) -> dict[str, FakeImage]:
        if pool not in self.pools:
            raise errors.NotFoundError(f"pool {pool}: does not exist", missing="pool")
        return self.pools[pool]

    def _get(self, pool: str, name: str) -> FakeImage:
        images = self._pool(pool)
        if name not in images:
            raise errors.NotFoundError(f"image {pool}/{name}: does not exist", missing="image")
        return images[name]

    # --- virtrbd.ceph.Cluster's door -------------------------------------------------------------------

    def image_names(self, pool: str) -> list[str]:
        return sorted(self._pool(pool))

    @contextmanager
    def image(self, pool: str, name: str | None = None, *, image_id: str | None = None,
              snapshot: str | None = None, read_only: bool = False,
              settings: Mapping[str, str] | None = None) -> Iterator[FakeImage]:
        self._check("image", pool, name)
        assert name is not None, "the fake opens images by name"
        image = self._get(pool, name)
        if snapshot is not None and snapshot not in image.snaps:
            raise errors.NotFoundError(f"snapshot {pool}/{name}@{snapshot}: does not exist", missing="snapshot")
        yield image

    def exists(self, pool: str, name: str) -> bool:
        return name in self._pool(pool)

    def create(self, pool: str, name: str, size: int, *, order: int | None = None) -> None:
        self._check("create", pool, name)
        images = self._pool(pool)
        if name in images:
            raise errors.AlreadyExistsError(f"creating image {pool}/{name}: already exists")
        images[name] = FakeImage(size, features=self.features, object_size=1 << order if order else 4 << 20)
        if self.on_new_image is not None:
            self.on_new_image(images[name])
        self.log.append(("create", name))

    def remove(self, pool: str, name: str, *, what: str | None = None) -> None:
        self._check("remove", pool, name)
        image = self._get(pool, name)
        if image.snaps:
            raise errors.HasSnapshotsError(f"{what or f'removing image {pool}/{name}'}: has snapshots")
        if image.watchers:
            raise errors.BusyError(f"{what or f'removing image {pool}/{name}'}: is in use")
        del self.pools[pool][name]
        self.log.append(("remove", name))

    def rename(self, pool: str, name: str, new_name: str) -> None:
        self._check("rename", pool, name, new_name)
        images = self._pool(pool)
        if new_name in images:
            raise errors.AlreadyExistsError(f"renaming {pool}/{name} to {new_name}: already exists")
        images[new_name] = self._get(pool, name)
        del images[name]
        self.log.append(("rename", name, new_name))

    def setting(self, name: str) -> str:
        return self.settings[name]

    def forsake(self) -> None:
        self.log.append(("forsake",))


# --- libvirt ---------------------------------------------------------------------------------------------

#: the secret UUID the unit tests' configs name
UUID = "2ee6c5b4-7c6b-4e51-a0c8-6c3b5c8b8a11"


def libvirt_error(code: int, message: str = "failed", int1: int = -1,
                  domain: int = libvirt.VIR_FROM_STORAGE) -> libvirt.libvirtError:
    """The error libvirt raises, with its error code, domain and (for a system error) errno in ``int1``."""
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, 2, None, None, None, int1, 0)
    return exc


def missing(code: int) -> libvirt.libvirtError:
    """libvirt's "no such object" for the object kind of ``code`` (VIR_ERR_NO_SECRET, ...)."""
    return libvirt_error(code, "no such object", int1=0, domain=0)
