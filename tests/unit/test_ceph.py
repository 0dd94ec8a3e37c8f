"""The connection module, against fakes autospecced from the real rados/rbd bindings."""

import errno
from unittest import mock

import pytest
import rados

from virtrbd import ceph, errors

from .conftest import KEY


def make_cluster(conf, fake_rados, fake_rbd, **kwargs):
    return ceph.Cluster(conf, rados_module=fake_rados, rbd_module=fake_rbd, **kwargs)


def settings_of(handle):
    return {c.args[0]: c.args[1] for c in handle.conf_set.call_args_list}


def test_connect_sets_monitors_timeouts_and_key_in_process(conf, fake_rados, fake_rbd):
    with make_cluster(conf, fake_rados, fake_rbd) as cluster:
        handle = cluster.handle
    fake_rados.Rados.assert_called_once_with(rados_id="virt")  # nothing read from a conffile, no key in args
    settings = settings_of(handle)
    assert settings["mon_host"] == "192.0.2.10:3300,[2001:db8::1]:3300"
    assert settings["client_mount_timeout"] == "4"
    assert settings["rados_mon_op_timeout"] == "10"
    assert settings["rados_osd_op_timeout"] == "10"
    assert settings["key"] == KEY
    handle.connect.assert_called_once_with()
    handle.shutdown.assert_called_once_with()


def test_key_given_by_caller_wins_over_keyring(conf, fake_rados, fake_rbd):
    from virtrbd.lab.keys import generate_key
    key = generate_key()
    with make_cluster(conf, fake_rados, fake_rbd, key=key) as cluster:
        assert settings_of(cluster.handle)["key"] == key.reveal()


def test_timed_out_with_reachable_monitor_is_an_authentication_error(conf, fake_rados, fake_rbd, mocker):
    fake_rados.Rados.return_value.connect.side_effect = fake_rados.TimedOut("t", errno=errno.ETIMEDOUT)
    mocker.patch.object(ceph.cluster, "reachable_monitor", return_value=conf.ceph.monitors[0])
    with pytest.raises(errors.AuthenticationError, match=r"192.0.2.10:3300 is reachable .* client.virt within 4 s"):
        make_cluster(conf, fake_rados, fake_rbd).connect()
    fake_rados.Rados.return_value.shutdown.assert_called_once_with()


def test_timed_out_with_no_monitor_is_a_connection_error(conf, fake_rados, fake_rbd, mocker):
    fake_rados.Rados.return_value.connect.side_effect = fake_rados.TimedOut("t", errno=errno.ETIMEDOUT)
    mocker.patch.object(ceph.cluster, "reachable_monitor", return_value=None)
    with pytest.raises(errors.ConnectionFailedError, match="no monitor reachable at .* within 4 s") as info:
        make_cluster(conf, fake_rados, fake_rbd).connect()
    assert not isinstance(info.value, errors.AuthenticationError)


def test_permission_denied_at_connect(conf, fake_rados, fake_rbd):
    fake_rados.Rados.return_value.connect.side_effect = fake_rados.PermissionDeniedError("p", errno=errno.EACCES)
    with pytest.raises(errors.AuthenticationError, match="refused client.virt"):
        make_cluster(conf, fake_rados, fake_rbd).connect()


def test_unresolvable_monitor(conf, fake_rados, fake_rbd):
    fake_rados.Rados.return_value.connect.side_effect = fake_rados.InvalidArgumentError("x", errno=errno.EINVAL)
    with pytest.raises(errors.ConnectionFailedError, match="cannot resolve"):
        make_cluster(conf, fake_rados, fake_rbd).connect()


def test_errors_never_carry_the_key(conf, fake_rados, fake_rbd, mocker):
    fake_rados.Rados.return_value.connect.side_effect = fake_rados.TimedOut("t", errno=errno.ETIMEDOUT)
    mocker.patch.object(ceph.cluster, "reachable_monitor", return_value=None)
    with pytest.raises(errors.VirtrbdError) as info:
        make_cluster(conf, fake_rados, fake_rbd).connect()
    assert KEY not in str(info.value) and KEY not in repr(info.value.args)


@pytest.mark.parametrize("exc_name, code, cls, words", [
    ("ImageNotFound", errno.ENOENT, errors.NotFoundError, "does not exist"),
    ("ImageExists", errno.EEXIST, errors.AlreadyExistsError, "already exists"),
    ("ImageBusy", errno.EBUSY, errors.BusyError, "is in use"),
    ("ImageHasSnapshots", errno.ENOTEMPTY, errors.HasSnapshotsError, "has snapshots"),
    ("PermissionError", errno.EPERM, errors.PermissionDeniedError, "permission denied"),
    ("Timeout", errno.ETIMEDOUT, errors.OperationTimeoutError, "timed out after 10 s"),
    ("NoSpace", errno.ENOSPC, errors.NoSpaceError, "no space"),
    ("DiskQuotaExceeded", errno.EDQUOT, errors.NoSpaceError, "quota"),
    ("ReadOnlyImage", errno.EROFS, errors.CephError, "read-only"),
    ("InvalidArgument", errno.EINVAL, errors.CephError, "invalid argument"),
    ("IOError", errno.EIO, errors.CephError, r"input/output error \(RBD I/O error \(message from librbd\)\)"),
    ("FunctionNotSupported", errno.ENOSYS, errors.CephError, "not supported by this Ceph release"),
    ("OperationNotSupported", errno.EOPNOTSUPP, errors.CephError, "operation not supported"),
    ("ConnectionShutdown", errno.ESHUTDOWN, errors.CephError, "shut down"),
])
def test_every_rbd_error_is_translated(fake_rbd, exc_name, code, cls, words):
    exc = getattr(fake_rbd, exc_name)("message from librbd", errno=code)
    with pytest.raises(cls, match=words) as info:
        with ceph.translated("image rbd/x", timeout=10):
            raise exc
    assert str(info.value).startswith("image rbd/x: ")
    assert info.value.errno == code


def test_non_ceph_errors_pass_through():
    with pytest.raises(KeyError):
        with ceph.translated("x"):
            raise KeyError("k")


def test_image_is_closed_when_the_block_fails(conf, fake_rados, fake_rbd):
    image = fake_rbd.Image.return_value
    ioctx = fake_rados.Rados.return_value.open_ioctx.return_value
    with make_cluster(conf, fake_rados, fake_rbd) as cluster:
        with pytest.raises(RuntimeError):
            with cluster.image("rbd", "vm1", snapshot="s", read_only=True):
                raise RuntimeError("boom")
    fake_rbd.Image.assert_called_once_with(ioctx, "vm1", snapshot="s", read_only=True)
    image.close.assert_called_once_with()
    ioctx.close.assert_called_once_with()


def test_failed_open_closes_the_ioctx_and_names_the_image(conf, fake_rados, fake_rbd):
    fake_rbd.Image.side_effect = fake_rbd.ImageNotFound("x", errno=errno.ENOENT)
    ioctx = fake_rados.Rados.return_value.open_ioctx.return_value
    with make_cluster(conf, fake_rados, fake_rbd) as cluster:
        with pytest.raises(errors.NotFoundError, match=r"^image rbd/vm1: does not exist"):
            with cluster.image("rbd", "vm1", snapshot="s"):
                pass
    assert fake_rados.Rados.return_value.open_ioctx.call_count == ioctx.close.call_count


def test_settings_for_one_image_are_the_clients_only_while_it_opens(conf, fake_rados, fake_rbd):
    """librbd copies the client's settings when it opens an image: set before, put back right after."""
    handle = fake_rados.Rados.return_value
    values = {"rbd_concurrent_management_ops": "4"}
    handle.conf_get.side_effect = values.__getitem__
    handle.conf_set.side_effect = values.__setitem__
    seen_at_open = []
    fake_rbd.Image.side_effect = lambda *a, **k: seen_at_open.append(dict(values)) or mock.DEFAULT
    with make_cluster(conf, fake_rados, fake_rbd) as cluster:
        with cluster.image("rbd", "vm1", settings={"rbd_concurrent_management_ops": "32"}) as image:
            assert image is fake_rbd.Image.return_value
            assert values["rbd_concurrent_management_ops"] == "4"
        with cluster.image("rbd", "vm1"):
            pass
        fake_rbd.Image.side_effect = fake_rbd.ImageNotFound("x", errno=errno.ENOENT)
        with pytest.raises(errors.NotFoundError):
            with cluster.image("rbd", "vm1", settings={"rbd_concurrent_management_ops": "32"}):
                pass
    assert [s["rbd_concurrent_management_ops"] for s in seen_at_open] == ["32", "4"]
    assert values["rbd_concurrent_management_ops"] == "4"          # a failed open puts them back too


def test_missing_snapshot_of_an_existing_image_names_the_snapshot(conf, fake_rados, fake_rbd):
    image = fake_rbd.Image.return_value
    fake_rbd.Image.side_effect = [fake_rbd.ImageNotFound("x", errno=errno.ENOENT), image]
    with make_cluster(conf, fake_rados, fake_rbd) as cluster:
        with pytest.raises(errors.NotFoundError, match=r"^snapshot rbd/vm1@s: does not exist"):
            with cluster.image("rbd", "vm1", snapshot="s"):
                pass
    image.close.assert_called_once_with()


def test_missing_pool(conf, fake_rados, fake_rbd):
    fake_rados.Rados.return_value.open_ioctx.side_effect = fake_rados.ObjectNotFound("x", errno=errno.ENOENT)
    with make_cluster(conf, fake_rados, fake_rbd) as cluster:
        with pytest.raises(errors.NotFoundError, match="pool nope: does not exist"):
            with cluster.ioctx("nope"):
                pass


def test_handle_requires_connection(conf, fake_rados, fake_rbd):
    with pytest.raises(errors.CephError, match="not connected"):
        _ = make_cluster(conf, fake_rados, fake_rbd).handle


def test_reachable_monitor_finds_a_listening_port():
    import socket

    from virtrbd.monitor import Monitor
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert ceph.reachable_monitor((Monitor("127.0.0.1", 1), Monitor("127.0.0.1", port)), budget=1) == \
            Monitor("127.0.0.1", port)
    assert ceph.reachable_monitor((Monitor("127.0.0.1", 1),), budget=0.5) is None


def test_a_timed_out_operation_gets_the_next_one_a_fresh_connection(conf, fake_rados, fake_rbd):
    """A handle that timed out during an outage was seen to keep timing out after it; the next one is fresh."""
    first, second = fake_rados.Rados.return_value, mock.create_autospec(rados.Rados, instance=True)
    fake_rados.Rados.side_effect = [first, second]
    cluster = make_cluster(conf, fake_rados, fake_rbd).connect()
    first.open_ioctx.return_value.read.side_effect = fake_rados.TimedOut("t", errno=errno.ETIMEDOUT)
    with pytest.raises(errors.OperationTimeoutError):
        with cluster.ioctx("rbd") as ioctx, ceph.translated("reading"):
            ioctx.read("obj")
    with cluster.ioctx("rbd"):
        pass
    assert cluster.handle is second
    first.shutdown.assert_not_called()          # other threads may still use it
    cluster.close()
    first.shutdown.assert_called_once_with()
    second.shutdown.assert_called_once_with()


def test_the_nocache_hint_is_librados_own():
    assert ceph.FADVISE_NOCACHE == rados.LIBRADOS_OP_FLAG_FADVISE_NOCACHE


def test_librbd_constants_are_the_bindings_own():
    import rbd

    from virtrbd.ceph import image
    assert image.FEATURE_NAMES == {getattr(rbd, f"RBD_FEATURE_{name.upper().replace('-', '_')}"): name
                                   for name in image.FEATURE_NAMES.values() if name != "striping"} | {
                                       rbd.RBD_FEATURE_STRIPINGV2: "striping"}
    assert image.SNAP_NAMESPACE_USER == rbd.RBD_SNAP_NAMESPACE_TYPE_USER
    assert image.SNAP_NAMESPACE_TRASH == rbd.RBD_SNAP_NAMESPACE_TYPE_TRASH


def test_every_method_of_the_image_protocol_is_the_bindings_own():
    import rbd

    from virtrbd.ceph import RbdImage
    methods = [name for name in vars(RbdImage) if not name.startswith("_")]
    assert len(methods) > 30
    assert [name for name in methods if not callable(getattr(rbd.Image, name, None))] == []


def image_missing(fake_rbd):
    fake_rbd.Image.side_effect = fake_rbd.ImageNotFound("no such image", errno=errno.ENOENT)


def test_a_missing_image_says_so_as_data(conf, fake_rados, fake_rbd):
    image_missing(fake_rbd)
    with make_cluster(conf, fake_rados, fake_rbd) as cluster:
        with pytest.raises(errors.NotFoundError, match="image rbd/vm1: does not exist") as raised:
            with cluster.image("rbd", "vm1"):
                pass
        assert raised.value.missing == "image"
        assert cluster.exists("rbd", "vm1") is False


def test_a_missing_pool_is_an_error_not_a_missing_image(conf, fake_rados, fake_rbd):
    with make_cluster(conf, fake_rados, fake_rbd) as cluster:
        cluster.handle.open_ioctx.side_effect = rados.ObjectNotFound("no pool", errno=errno.ENOENT)
        with pytest.raises(errors.NotFoundError, match="pool nopool: does not exist") as raised:
            cluster.exists("nopool", "vm1")
        assert raised.value.missing == "pool"


def test_a_missing_snapshot_of_an_image_that_exists_is_named(conf, fake_rados, fake_rbd):
    opened = []

    def open_image(ioctx, name, snapshot=None, read_only=False, image_id=None):
        if snapshot is not None:
            raise fake_rbd.ImageNotFound("no snap", errno=errno.ENOENT)
        opened.append(name)
        return mock.create_autospec(rbd_image_class(), instance=True)

    fake_rbd.Image.side_effect = open_image
    with make_cluster(conf, fake_rados, fake_rbd) as cluster:
        with pytest.raises(errors.NotFoundError, match="snapshot rbd/vm1@s1: does not exist") as raised:
            with cluster.image("rbd", "vm1", snapshot="s1"):
                pass
    assert raised.value.missing == "snapshot" and opened == ["vm1"]


def rbd_image_class():
    import rbd
    return rbd.Image


def test_create_rename_remove_and_trash_go_through_one_rbd_handle(conf, fake_rados, fake_rbd):
    with make_cluster(conf, fake_rados, fake_rbd) as cluster:
        ioctx = cluster.handle.open_ioctx.return_value
        cluster.create("rbd", "vm1", 1 << 30, order=22)
        cluster.rename("rbd", "vm1", "vm2")
        cluster.move_to_trash("rbd", "vm2")
        cluster.remove("rbd", "vm3")
    api = fake_rbd.RBD.return_value
    api.create.assert_called_once_with(ioctx, "vm1", 1 << 30, old_format=False, order=22)
    api.rename.assert_called_once_with(ioctx, "vm1", "vm2")
    api.trash_move.assert_called_once_with(ioctx, "vm2", 0)
    api.remove.assert_called_once_with(ioctx, "vm3")
    assert ioctx.close.call_count == 4


def test_parent_chain_closes_every_ancestor_it_opened(conf, fake_rados, fake_rbd):
    from virtrbd.spec import ImageSpec
    parents = {"child": ("rbd", "mid", "s2"), "mid": ("rbd", "base", "s1")}
    handles = []

    def open_image(ioctx, name, snapshot=None, read_only=False, image_id=None):
        handle = mock.create_autospec(rbd_image_class(), instance=True)
        if name in parents:
            pool, image, snap = parents[name]
            handle.get_parent_image_spec.return_value = {"pool_name": pool, "image_name": image, "snap_name": snap}
        else:
            handle.get_parent_image_spec.side_effect = fake_rbd.ImageNotFound("none", errno=errno.ENOENT)
        handles.append(handle)
        return handle

    fake_rbd.Image.side_effect = open_image
    with make_cluster(conf, fake_rados, fake_rbd) as cluster, cluster.image("rbd", "child") as child:
        assert cluster.parent_chain(child) == [ImageSpec("rbd", "mid", "s2"), ImageSpec("rbd", "base", "s1")]
        assert all(h.close.called for h in handles[1:]) and not handles[0].close.called
