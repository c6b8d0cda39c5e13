"""Host path guard shared by the ISO library and VM disks.

A path from a user is only a path after these checks: absolute, no protocol
prefix qemu would interpret (``json:``, ``nbd:`` ...), symlinks resolved,
inside one of the allowed roots compared component by component (``/images2``
is not inside ``/images``), existing, and a regular file.
"""

from __future__ import annotations

import os
import pwd
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vaporsite.errors import InvalidInput, NotFound


def real_roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(os.path.realpath(root)) for root in roots]


def is_inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in real_roots(roots))


def absolute_path(raw: object, *, field: str, code: str | None = None, note: str = "") -> str:
    """`raw` if it is a non-empty string starting with "/" and holding no NUL byte; else a 400 naming `field`.

    Checked before anything touches the file system: a relative name would be
    read against the worker's current directory, and C programs (qemu-img,
    libvirt) would cut a name at a NUL. `code` and `note` (appended to the
    message) are for a relative path.
    """
    if not isinstance(raw, str) or not raw:
        raise InvalidInput("must be a non-empty absolute path", field=field)
    if "\x00" in raw:
        raise InvalidInput("must not contain NUL bytes", field=field)
    if not raw.startswith("/"):
        raise InvalidInput(f"{raw!r} is not an absolute path{note}", field=field, code=code)
    return raw


def guard_file(raw: str, *, roots: Sequence[Path], field: str, what: str = "file") -> Path:
    """Return the resolved path of an existing regular file inside `roots`.

    400 for a malformed path, one outside the roots or not a regular file;
    404 for a path inside the roots that does not exist.
    """
    absolute_path(raw, field=field, code="path_not_absolute")
    resolved = Path(os.path.realpath(raw))
    if not is_inside(resolved, roots):
        allowed = ", ".join(str(r) for r in roots) or "(none configured)"
        raise InvalidInput(
            f"{raw} is outside the allowed directories ({allowed})",
            field=field,
            code="path_outside_roots",
        )
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        raise NotFound(f"{what} {raw} does not exist", field=field, code="path_not_found") from None
    except OSError as exc:
        raise InvalidInput(f"{raw} cannot be read: {exc.strerror}", field=field, code="path_unreadable") from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"{raw} is not a regular file", field=field, code="not_regular_file")
    if not os.access(resolved, os.R_OK):
        raise InvalidInput(f"{raw} is not readable by Vapor", field=field, code="path_unreadable")
    return resolved


# --- can QEMU reach it? ---------------------------------------------------------------
#
# libvirt hands QEMU a file by path, and QEMU runs as an unprivileged user
# (libvirt-qemu on Debian: qemu.conf `user`, the DAC label in `virsh
# capabilities`). libvirt makes the file itself that user's, but not the
# directories above it: a file in a 0700 directory (a home directory) is
# accepted, and QEMU then fails at start with "Permission denied".

# POSIX ACL entries as Linux stores them in the `system.posix_acl_access`
# attribute: a 4-byte version (2), then 8-byte entries (tag u16, perm u16, id u32).
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ACL_EXECUTE = 0x1


@dataclass(frozen=True)
class Identity:
    """A user as the kernel checks it: uid and every group (primary and supplementary)."""

    name: str
    uid: int
    groups: frozenset[int]


def identity(user: str) -> Identity | None:
    """`user`'s uid and groups; None when no such user exists on this host."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return Identity(user, entry.pw_uid, frozenset(os.getgrouplist(user, entry.pw_gid)))


def can_search(directory: Path, who: Identity) -> bool:
    """True when `who` may pass through `directory` (execute permission), ACLs included."""
    if who.uid == 0:
        return True
    info = os.stat(directory)
    acl = _access_acl(directory)
    if acl is None:
        if info.st_uid == who.uid:
            return bool(info.st_mode & stat.S_IXUSR)
        if info.st_gid in who.groups:
            return bool(info.st_mode & stat.S_IXGRP)
        return bool(info.st_mode & stat.S_IXOTH)
    # POSIX.1e: the owner entry, else a named user (masked), else any matching group (masked), else other.
    mask = next((perm for tag, perm, _ in acl if tag == _ACL_MASK), 0x7)
    if info.st_uid == who.uid:
        return any(tag == _ACL_USER_OBJ and perm & _ACL_EXECUTE for tag, perm, _ in acl)
    for tag, perm, uid in acl:
        if tag == _ACL_USER and uid == who.uid:
            return bool(perm & mask & _ACL_EXECUTE)
    groups = [
        perm for tag, perm, gid in acl if (tag == _ACL_GROUP_OBJ and info.st_gid in who.groups) or (tag == _ACL_GROUP and gid in who.groups)
    ]
    if groups:
        return any(perm & mask & _ACL_EXECUTE for perm in groups)
    return any(tag == _ACL_OTHER and perm & _ACL_EXECUTE for tag, perm, _ in acl)


def _access_acl(path: Path) -> list[tuple[int, int, int]] | None:
    """The entries of `path`'s access ACL; None when it has none beyond its mode bits."""
    try:
        raw = os.getxattr(path, "system.posix_acl_access")
    except OSError:  # no ACL (ENODATA), or a file system without them
        return None
    if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != 2 or (len(raw) - 4) % 8:
        return None
    return [struct.unpack_from("<HHI", raw, offset) for offset in range(4, len(raw), 8)]


def require_reachable_by_qemu(resolved: Path, *, user: str, field: str) -> None:
    """400 naming `field` and the first directory above `resolved` that QEMU's user cannot search.

    `user` is the account QEMU runs as (VAPOR_QEMU_USER); "" or a user this
    host does not have skips the check. Vapor does not change the directory's
    permissions (virt-install would add an ACL for QEMU's user): opening a
    directory, often someone's home, to every guest's QEMU is the operator's
    decision, and the message says how.
    """
    who = identity(user) if user else None
    if who is None:
        return
    for directory in reversed(resolved.parents):
        if not can_search(directory, who):
            mode = stat.S_IMODE(os.stat(directory).st_mode)
            raise InvalidInput(
                f"QEMU runs as {who.name}, which cannot search the directory {directory} (mode {mode:04o}), "
                f"so it could not open {resolved}: move the file, or let {who.name} search that directory "
                f"(for instance setfacl -m u:{who.name}:x {directory})",
                field=field,
                code="path_not_searchable",
            )
