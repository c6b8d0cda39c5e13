"""A download's partial file, locked by its writer for as long as the writer lives.

The writer takes an exclusive flock(2) on the `.part` file when it opens it and
keeps it until it has moved the finished file into place or removed the part;
the kernel drops the lock when the process dies, however it dies. Whoever else
would remove a part file (the janitor, a cancel, a delete, another delivery of
the same task) first takes the lock without waiting: if it cannot, a live
writer owns the file and it is left alone. This holds across processes (the
web process, the worker clusters, a management command).

flock, not fcntl's POSIX record locks: a POSIX lock belongs to the process and
is dropped when the process closes *any* descriptor of the file, so a janitor
running inside a download's own process (the inline tasks of the tests) would
release the writer's lock just by looking. A flock belongs to the open file
description, and a second open in the same process conflicts with it as one in
another process does.

Every remover checks, once it holds the lock, that the path still names the
file it opened and locked (the same device and inode): between its open and
its lock the previous owner may have removed the file and a new writer created
another one under the same name, which must not be deleted in its place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from pathlib import Path
from typing import BinaryIO

LOCK_POLL = 0.05  # seconds between two tries of a lock that another writer holds


class PartBusy(Exception):
    """Another live writer holds the part file's lock."""


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class PartFile:
    """The locked, open part file of one download. Use `claim`; close (or leave the `with`) to let go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.stream: BinaryIO = os.fdopen(fd, "wb")  # by descriptor: nothing is truncated or created here

    @classmethod
    def claim(cls, path: Path, *, wait: float) -> PartFile:
        """Open (creating it) and lock `path`, emptied. Waits up to `wait` seconds for another writer
        (one that was just cancelled stops within a few seconds), then raises PartBusy."""
        give_up = time.monotonic() + wait
        while True:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            try:
                locked = _try_lock(fd)
                if locked and _same_file(fd, path):
                    os.ftruncate(fd, 0)  # a leftover of a killed writer is replaced, never appended to
                    return cls(path, fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if locked:
                continue  # removed (and maybe created anew) between our open and our lock: open it again
            if time.monotonic() >= give_up:
                raise PartBusy(f"{path} is being written by another worker")
            time.sleep(LOCK_POLL)

    def reset(self) -> None:
        """Empty the file for another attempt."""
        self.stream.seek(0)
        self.stream.truncate(0)

    def discard(self) -> None:
        """Remove the part file, if the path still names ours."""
        if not self.stream.closed and _same_file(self.stream.fileno(), self.path):
            self.path.unlink()

    def close(self) -> None:
        """Close the file, which drops the lock. Unflushed bytes are lost on purpose when the file is gone."""
        # The descriptor is closed even when the last flush fails (into a full disk: the caller already failed on that).
        with contextlib.suppress(OSError):
            self.stream.close()

    def __enter__(self) -> PartFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_if_unowned(path: Path, *, dry_run: bool = False) -> bool:
    """Remove the part file at `path` unless a live writer holds its lock. True when it was removed
    (with `dry_run`: would have been). Symbolic links and special files are never opened or removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # gone, a symbolic link (ELOOP), or unreadable
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        if not _try_lock(fd) or not _same_file(fd, path):
            return False
        if not dry_run:
            path.unlink()
        return True
    finally:
        os.close(fd)
