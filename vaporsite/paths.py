"""Host path guard shared by the ISO library and VM disks.

A path from a user is only a path after these checks: absolute, no protocol
prefix qemu would interpret (``json:``, ``nbd:`` ...), symlinks resolved,
inside one of the allowed roots compared component by component (``/images2``
is not inside ``/images``), existing, and a regular file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
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
