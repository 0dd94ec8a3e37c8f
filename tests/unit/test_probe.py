"""The TCP probe used to wait for daemons and to tell a silent monitor from a refusing one."""

import socket

from virtrbd.probe import listening


def free_even_port() -> int:
    """A port nothing uses; even, the parity Linux gives connect()'s own source ports (bind gets odd ones)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1] // 2 * 2
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free even port found")


def test_a_listener_is_found():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert listening("127.0.0.1", server.getsockname()[1], timeout=1)


def test_a_probe_that_connects_to_itself_finds_nothing_and_leaves_the_port_free():
    """Real kernel behaviour: polling a silent even port connects to itself within a few thousand tries
    (the source port walks through every even port); that must neither count nor keep the port."""
    port = free_even_port()
    assert not any(listening("127.0.0.1", port, timeout=0.2) for _ in range(40000))
    with socket.socket() as daemon:                  # the daemon we were waiting for can still bind it
        daemon.bind(("127.0.0.1", port))
        daemon.listen()


def test_self_connection_is_reset_not_closed(mocker):
    sock = mocker.MagicMock()
    sock.__enter__.return_value = sock
    sock.getsockname.return_value = sock.getpeername.return_value = ("127.0.0.1", 40800)
    mocker.patch("socket.create_connection", return_value=sock)
    assert not listening("127.0.0.1", 40800, timeout=0.2)
    sock.setsockopt.assert_called_once_with(socket.SOL_SOCKET, socket.SO_LINGER, mocker.ANY)
