"""The qemu hook: clone golden images when a domain is prepared, remove its ephemeral clones at release.

libvirt runs ``hooks/qemu`` as ``GUEST OP SUBOP -`` with the domain XML on
stdin, synchronously, for every domain event; the script hands the two calls
that can have work to ``run`` here:

* ``prepare begin``: for every disk the domain's virtrbd markup names as a
  clone of ``POOL/IMAGE@SNAP`` whose image does not exist yet, make the clone
  (depth limit respected) and record in the image's metadata which domain made
  it and whether it is ephemeral.  Existing images are left alone, so restarts
  reuse them; one that a client has open (the source's QEMU, when this is the
  destination of a live migration) is not even looked into.  A failure exits 1
  with one line on stderr: libvirt shows it and does not start the domain.
* ``release end``: remove the ephemeral clones this very domain made — never
  an image another domain or a user owns, and never one a client still has
  open: after a live migration the source releases the domain while the
  destination's QEMU runs on the clone, and a destination whose incoming
  migration failed releases it while the source's still does.  The domain's
  last release, on whichever host, removes the clone.  libvirt also calls this
  after a start that failed, so a missing image is normal.  Failing here cannot
  stop anything, so it exits 0 and says why on stderr and in the log.

Rules kept here: the hook never calls back into libvirt (libvirtd waits for
it: a deadlock); it reads the key from the keyring named in virtrbd.conf; it
imports nothing heavy until it knows it has work; a watchdog ends it with a
clear message when ``[hook] timeout`` runs out, whatever it is blocked in.

The Ceph work runs in a child process (``isolated``): librados has been seen
to abort its process from one of its own threads ("terminate called after
throwing ... std::system_error", docs/production.md), which no handler can
catch, and libvirt then refuses the domain.  The hook itself never loads
librados; when its worker ends by a signal it says so in its log and runs the
work once more in a new one — the work is idempotent: a clone cut short is
replaced, a release looks again at what is there.
"""

from __future__ import annotations

import sys

#: the calls that can have work; every other one returns at once
WORK = {("prepare", "begin"): "prepare", ("release", "end"): "release"}
#: the markup's namespace, looked for in the raw input before anything is parsed
MARKER = b"urn:x-virtrbd:domain:1"
MAX_INPUT = 4 * 1024 * 1024

#: worker processes tried for one call when librados ends one with a signal
ATTEMPTS = 2

#: image metadata on the clones the hook makes: {"domain": UUID, "ephemeral": bool}, one key, one round trip
OWNER_KEY = "virtrbd.owner"


def run(argv: list[str], *, config_path: str | None = None, stdin=None, stderr=None, isolated: bool = True) -> int:
    """Handle one hook call; ``argv`` is ``[GUEST, OP, SUBOP, EXTRA]``.  Returns the exit code.

    ``isolated``: the Ceph work in a child process, tried again if a signal ends it (see above); tests of
    the decisions against in-process fakes turn it off."""
    stderr = stderr or sys.stderr
    action = WORK.get((argv[1], argv[2])) if len(argv) >= 3 else None
    if action is None:
        return 0
    data = (stdin or sys.stdin.buffer).read(MAX_INPUT + 1)
    if MARKER not in data and len(data) <= MAX_INPUT:
        return 0
    try:
        if len(data) > MAX_INPUT:
            from .errors import InvalidXMLError
            raise InvalidXMLError(f"domain XML on stdin is larger than {MAX_INPUT // 1024} KiB")
        return _work(action, argv[0], data, config_path, stderr, isolated)
    except Exception as exc:  # every failure becomes one line; libvirt shows it verbatim
        print(_one_line(exc, argv[0], action), file=stderr, flush=True)
        return _failure_code(action)


def _failure_code(action: str) -> int:
    """The exit code of a failed call: a failed prepare stops the domain's start (libvirt refuses it); a
    failed release must not stop libvirt's own cleanup, so it exits 0 after saying why."""
    return 1 if action == "prepare" else 0


def _one_line(exc: Exception, guest: str, action: str) -> str:
    from .errors import VirtrbdError
    text = str(exc) if isinstance(exc, VirtrbdError) else f"internal error: {type(exc).__name__}: {exc}"
    return f"virtrbd: {guest}: {action}: {' '.join(text.split())}"


def _work(action: str, guest: str, data: bytes, config_path: str | None, stderr, isolated: bool) -> int:
    from . import config as config_module

    config = config_module.load(config_path)
    log = _logger(config.hook.log, guest)
    workers: list[int] = []
    watchdog = _watchdog(config.hook.timeout, guest, action, stderr, workers)
    try:
        work = _do(action, guest, data, config, log, stderr)
        if work is None:
            return 0
        if not isolated:
            work()
            return 0
        return _in_worker(work, guest, action, log, stderr, workers)
    finally:
        watchdog.cancel()


def _do(action: str, guest: str, data: bytes, config, log, stderr):
    """What the call asks of Ceph, as a function of no arguments; None when there is nothing to do."""
    from .errors import ConfigError, InvalidXMLError
    from .xml import clone_markup, safe

    domain = safe.parse_plain(data, what="domain XML on stdin")
    if domain.tag != "domain":
        raise InvalidXMLError(f"expected a <domain> document on stdin, got <{domain.tag}>")
    uuid = (domain.findtext("uuid") or "").strip()
    if not uuid:
        raise InvalidXMLError("the domain XML has no <uuid>")
    marked = clone_markup.parse(domain)
    images = clone_markup.rbd_disk_images(domain, {disk.target for disk in marked})   # only the marked ones
    work = []
    for disk in marked:
        if disk.target not in images:
            raise InvalidXMLError(f"virtrbd markup names disk {disk.target}, which is not an rbd disk of {guest}")
        work.append((disk, images[disk.target]))
    if not work:
        return None
    if config.ceph.keyring is None:
        raise ConfigError(f"{config.path}: [ceph] keyring: the hook needs it (it must not ask libvirt for the key)")

    def in_ceph() -> None:
        from .ceph import Cluster
        from .layering import Layering
        with Cluster(config) as cluster:
            layering = Layering(cluster, max_clone_depth=config.layering.max_clone_depth)
            for disk, image in work:
                if action == "prepare":
                    _prepare(layering, disk, image, uuid, log)
                elif disk.ephemeral:
                    _release(layering, image, uuid, log, stderr, guest)
    return in_ceph


def _in_worker(work, guest: str, action: str, log, stderr, workers: list[int]) -> int:
    """``work()`` in a child process, once more if a signal ends it; the exit code the call gives.

    The child's one-line failure comes back through a pipe and is said here,
    where ``stderr`` is (libvirt reads it); a worker that ends by a signal said
    nothing, so the next one starts from what the cluster holds.
    """
    import os
    import signal

    from .errors import CephError

    for attempt in range(1, ATTEMPTS + 1):
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:                                    # the worker: never returns into the caller's code
            os.close(reader)
            code = 1
            try:
                work()
                code = 0
            except Exception as exc:
                os.write(writer, _one_line(exc, guest, action).encode())
                code = _failure_code(action)
            finally:
                os._exit(code)
        os.close(writer)
        workers.append(pid)
        try:
            with os.fdopen(reader, "rb") as said:
                line = said.read().decode(errors="replace")
            _, status = os.waitpid(pid, 0)
        finally:
            workers.remove(pid)
        if line:
            print(line, file=stderr, flush=True)
        if not os.WIFSIGNALED(status):
            return os.waitstatus_to_exitcode(status)
        ended = signal.Signals(os.WTERMSIG(status)).name
        log.warning("the hook's worker process ended by %s (librados aborts so, docs/production.md)%s", ended,
                    "; trying again" if attempt < ATTEMPTS else "")
    raise CephError(f"its worker process ended by {ended}, {ATTEMPTS} times (librados aborted; see the hook's log)")


def _prepare(layering, disk, image, uuid: str, log) -> None:
    """Clone when the image is missing; leave an existing one as it is.

    The clone is tried first: a new domain is the common case, and librbd
    refuses an existing name before it changes anything.  Only when the clone
    fails is existence asked — so a persistent domain still starts after its
    golden snapshot is gone.
    """
    import json

    from .errors import AlreadyExistsError, NotFoundError

    def record(child) -> None:
        child.metadata_set(OWNER_KEY, json.dumps({"domain": uuid, "ephemeral": disk.ephemeral}))

    try:
        result = layering.clone(disk.clone_of, image, size=disk.size, on_created=record)
    except AlreadyExistsError:
        if _in_use(layering, image, disk.target, log):
            return
        result = _converge(layering, disk, image, record, log)
    except NotFoundError:
        if layering.cluster.exists(image.pool, image.image):   # a missing pool is an error, not "make the clone"
            log.info("%s: %s exists; left as it is", disk.target, image)
            return
        raise
    if result is None:
        return
    if result.existed:
        log.info("%s: %s exists; left as it is", disk.target, image)
        return
    log.info("%s: cloned %s to %s for domain %s (%s)%s", disk.target, disk.clone_of, image, uuid,
             "ephemeral" if disk.ephemeral else "persistent", f"; {result.note}" if result.note else "")


def _converge(layering, disk, image, record, log):
    """An existing image no client has open: a clone of this snapshot made before is reused, the empty
    remains of a clone cut short by an outage are replaced (a domain must never boot from them)."""
    from .errors import AlreadyExistsError

    try:
        return layering.clone(disk.clone_of, image, size=disk.size, exist_ok=True, on_created=record)
    except AlreadyExistsError:
        log.info("%s: %s exists (not a clone of %s); left as it is", disk.target, image, disk.clone_of)
        return None


def _in_use(layering, image, target: str, log) -> bool:
    """Whether a client has ``image`` open: then the domain runs elsewhere (this host is the destination of
    a live migration), and the image is left exactly as it is."""
    users = _clients(layering, image)
    if users:
        log.info("%s: %s is open by %s (a live migration to this host?); left untouched", target, image,
                 ", ".join(users))
    return bool(users)


def _clients(layering, image) -> list[str]:
    """The addresses of the clients that watch ``image`` (QEMUs that have it open), [] when it is gone."""
    from .errors import NotFoundError

    try:
        with layering.cluster.image(image.pool, image.image, read_only=True) as opened:
            return [watcher["addr"] for watcher in opened.watchers_list()]
    except NotFoundError:
        return []


def _release(layering, image, uuid: str, log, stderr, guest: str) -> None:
    from .errors import NotFoundError, VirtrbdError

    try:
        with layering.cluster.image(image.pool, image.image, read_only=True) as opened:
            owner = _owner(opened)
            users = [watcher["addr"] for watcher in opened.watchers_list()]
    except NotFoundError:
        log.info("%s does not exist (the domain never started?); nothing to release", image)
        return
    if owner.get("domain") != uuid or owner.get("ephemeral") is not True:
        log.info("%s was not made ephemeral by domain %s; left alone", image, uuid)
        return
    if users:
        log.info("ephemeral clone %s stays: open by %s (the domain runs on another host after a live "
                 "migration, or one to this host failed)", image, ", ".join(users))
        return
    try:
        layering.remove(image)
    except VirtrbdError as exc:
        log.warning("ephemeral clone %s kept: %s", image, exc)
        print(f"virtrbd: {guest}: release: ephemeral clone kept: {exc}", file=stderr, flush=True)
        return
    log.info("removed ephemeral clone %s of domain %s", image, uuid)


def _owner(image) -> dict:
    """The hook's record on an image, or {} for an image the hook did not make."""
    import json

    try:
        record = json.loads(image.metadata_get(OWNER_KEY))
    except (KeyError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _watchdog(timeout: int, guest: str, action: str, stderr, workers: list[int]):
    """End the process with a clear message once ``timeout`` seconds are gone, even mid-librados call; its
    worker first (libvirt would wait for a process that still holds its pipes)."""
    import os
    import signal
    import threading

    def expire() -> None:
        for pid in list(workers):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        print(f"virtrbd: {guest}: {action}: gave up after {timeout} s ([hook] timeout)", file=stderr, flush=True)
        os._exit(_failure_code(action))

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    return timer


def _logger(target: str, guest: str):
    """The hook's log: syslog (through the small ``syslog`` module), a file, or stderr for warnings."""
    import logging
    import os

    log = logging.getLogger("virtrbd.hook")
    if log.handlers:
        return log
    log.setLevel(logging.INFO)
    handler: logging.Handler
    if target == "syslog" and os.path.exists("/dev/log"):
        handler = _SyslogHandler(guest)
    elif target.startswith("/"):
        handler = logging.FileHandler(target)
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s virtrbd-hook[%(process)d] %(levelname)s {guest}: %(message)s"))
    else:  # stderr, or syslog where there is none: warnings only, libvirt shows stderr to users
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter(f"virtrbd: {guest}: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    return log


def _SyslogHandler(guest: str):
    """A logging handler on the C ``syslog`` module: logging.handlers would cost the hook ~5 ms of imports."""
    import logging
    import syslog

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            priority = syslog.LOG_WARNING if record.levelno >= logging.WARNING else syslog.LOG_INFO
            syslog.syslog(priority, f"{guest}: {record.getMessage()}")

    syslog.openlog("virtrbd-hook", syslog.LOG_PID, syslog.LOG_DAEMON)
    return Handler()
