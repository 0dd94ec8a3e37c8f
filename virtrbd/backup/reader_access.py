"""Letting one user (QEMU's) read one backup file, through POSIX ACLs, and taking it back.

An instant restore leaves an image whose missing blocks every librbd client
reads from the backup file itself, QEMU included, which runs as its own user
(``libvirt-qemu`` on Debian).  Backups are 0600: instead of opening them to
everyone, a named-user entry is added to the file's ACL (read), and removed at
the commit.  The ACL is read and written as the kernel's
``system.posix_acl_access`` attribute (acl(5)'s ``posix_acl_xattr`` layout), so
no ``setfacl`` needs to be installed.
"""

from __future__ import annotations

import errno as errno_codes
import os
import pwd
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackupError

ACL_XATTR = "system.posix_acl_access"
_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_READ, _SEARCH = 4, 1
_ENTRY = struct.Struct("<HHI")


@dataclass(frozen=True)
class Grant:
    """One entry virtrbd added: ``uid`` may ``perm`` (4 read, 1 search) ``path``."""
    path: str
    uid: int
    perm: int

    def to_json(self) -> dict:
        return {"path": self.path, "uid": self.uid, "perm": self.perm}

    @classmethod
    def from_json(cls, data: dict) -> Grant:
        return cls(str(data["path"]), int(data["uid"]), int(data["perm"]))


def user_ids(user: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise BackupError(f"user {user!r} ([libvirt] qemu_user) does not exist on this host") from None
    return entry.pw_uid, entry.pw_gid


def grant_read(path: Path, user: str, *, shared: bool = False) -> list[Grant]:
    """Let ``user`` open ``path`` with a read entry in its ACL; return what the caller will take back.

    ``shared``: another instant restore reads the same file, so an entry for
    the user is that one's, and is returned as this one's too: the last of them
    to finish takes it back.  Directories are not opened: one the user cannot
    pass is named in the refusal (a search entry there would be shared by every
    backup below it, and outlive the restores).  Checked by opening the file as
    that user: where it still cannot (an NFS export that squashes the user, a
    filesystem without ACLs) nothing stays and the restore is refused before any
    image exists.
    """
    uid, _gid = user_ids(user)
    if readable_as(user, path):
        return [Grant(str(path), uid, _READ)] if shared and _named(_read(path, path.stat()), uid) else []
    blocked = next((d for d in reversed(path.parents) if not _may(d, uid, _SEARCH)), None)
    if blocked is not None:
        raise BackupError(f"{path}: QEMU's user {user} cannot reach it (no search permission on {blocked}); keep "
                          f"backups to restore instantly where it can pass (e.g. chmod o+x), or restore without "
                          f"--instant")
    added = _add(path, uid, _READ)
    if not readable_as(user, path):
        revoke(added)
        raise BackupError(f"{path}: QEMU's user {user} cannot open it even with an ACL entry (a filesystem "
                          f"without POSIX ACLs, or an export that squashes the user?); copy the backup where it "
                          f"can, or restore without --instant")
    return added


def revoke(grants: list[Grant]) -> None:
    """Remove the entries of ``grants`` (a path gone meanwhile is no error)."""
    for grant in reversed(grants):
        try:
            _remove(Path(grant.path), grant.uid)
        except FileNotFoundError:
            pass


def readable_as(user: str, path: Path) -> bool:
    """Whether ``user`` can open ``path`` for reading: asked of the kernel (and an NFS server) by trying it."""
    uid, gid = user_ids(user)
    # dd opens the file and reads nothing (count=0): a few milliseconds, where an interpreter took 25
    done = subprocess.run(["dd", f"if={path}", "of=/dev/null", "count=0", "status=none"], user=uid, group=gid,
                          extra_groups=os.getgrouplist(user, gid), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)
    return done.returncode == 0


# --- the ACL itself ---------------------------------------------------------------------------------------

def _may(path: Path, uid: int, perm: int) -> bool:
    """Whether mode bits or an ACL entry for ``uid`` or for others already allow ``perm`` on ``path``."""
    st = path.stat()
    if st.st_uid == uid:
        return bool((st.st_mode >> 6) & perm)
    entries = _read(path, st)
    named = [p for tag, p, ident in entries if tag == _USER and ident == uid]
    if named:
        mask = [p for tag, p, _ in entries if tag == _MASK]
        return bool(named[0] & (mask[0] if mask else 7) & perm)
    return bool(st.st_mode & perm)          # others' bits (group membership would need more: the probe decides)


def _add(path: Path, uid: int, perm: int) -> list[Grant]:
    """Add ``perm`` for ``uid`` (the mask recomputed: a chmod since may have closed it)."""
    st = path.stat()
    entries = _read(path, st)
    entries = [e for e in entries if not (e[0] == _USER and e[2] == uid)] + \
              [(_USER, perm | _named(entries, uid), uid)]
    _write(path, entries)
    return [Grant(str(path), uid, perm)]


def _remove(path: Path, uid: int) -> None:
    st = path.stat()
    entries = [e for e in _read(path, st) if not (e[0] == _USER and e[2] == uid)]
    if any(tag in (_USER, _GROUP) for tag, _p, _i in entries):
        _write(path, entries)
        return
    group = next(p for tag, p, _i in entries if tag == _GROUP_OBJ)
    try:
        os.removexattr(path, ACL_XATTR)
    except OSError as exc:
        if exc.errno not in (errno_codes.ENODATA, errno_codes.EOPNOTSUPP):
            raise
    os.chmod(path, (stat.S_IMODE(st.st_mode) & ~0o070) | (group << 3))


def _named(entries: list[tuple[int, int, int]], uid: int) -> int:
    return next((p for tag, p, ident in entries if tag == _USER and ident == uid), 0)


def _read(path: Path, st: os.stat_result) -> list[tuple[int, int, int]]:
    """The file's ACL as (tag, perm, id) entries; the three of its mode bits when it has none."""
    try:
        raw = os.getxattr(path, ACL_XATTR)
    except OSError as exc:
        if exc.errno not in (errno_codes.ENODATA, errno_codes.EOPNOTSUPP):
            raise
        mode = stat.S_IMODE(st.st_mode)
        return [(_USER_OBJ, mode >> 6 & 7, _UNDEFINED_ID), (_GROUP_OBJ, mode >> 3 & 7, _UNDEFINED_ID),
                (_OTHER, mode & 7, _UNDEFINED_ID)]
    if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != _VERSION or (len(raw) - 4) % _ENTRY.size:
        raise BackupError(f"{path}: its ACL is in a form this version does not read")
    return [_ENTRY.unpack_from(raw, at) for at in range(4, len(raw), _ENTRY.size)]


def _write(path: Path, entries: list[tuple[int, int, int]]) -> None:
    """Write the ACL, its mask the union of the group class (as setfacl computes it), entries in kernel order."""
    entries = [e for e in entries if e[0] != _MASK]
    if any(tag in (_USER, _GROUP) for tag, _p, _i in entries):
        mask = 0
        for tag, p, _i in entries:
            if tag in (_USER, _GROUP, _GROUP_OBJ):
                mask |= p
        entries.append((_MASK, mask, _UNDEFINED_ID))
    entries.sort(key=lambda e: (e[0], e[2]))
    raw = struct.pack("<I", _VERSION) + b"".join(_ENTRY.pack(tag, perm, ident) for tag, perm, ident in entries)
    try:
        os.setxattr(path, ACL_XATTR, raw)
    except OSError as exc:
        if exc.errno == errno_codes.EOPNOTSUPP:
            raise BackupError(f"{path}: its filesystem has no POSIX ACLs, so QEMU's user cannot be let in "
                              f"without opening the file to others") from None
        raise
