"""The libvirt connection and the error plumbing every driver mixin shares.

Together with the mixins beside it (`storage`, `host`, `domains`) this is the
only code in Vapor that imports `libvirt`. Every call into the bindings goes
through `calls()` or `lookup_or_none()`, which turn `libvirtError` into
Vapor's errors, so nothing above this package ever sees a libvirt exception
or error code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any, Self

import libvirt
from django.conf import settings

from vaporsite.errors import ServiceUnavailable, VaporError
from vms.hypervisor.errors import UNAVAILABLE, from_libvirt

logger = logging.getLogger("vapor.hypervisor")


def _quiet(_ctx: object, _error: object) -> None:
    """libvirt's default handler prints every error to stderr, including the
    "not found" answers the driver expects and handles; errors still raise."""


libvirt.registerErrorHandler(_quiet, None)


def vapor_error(exc: libvirt.libvirtError, *, field: str | None = None) -> VaporError:
    """The Vapor error for a libvirt exception, with libvirt's own words."""
    return from_libvirt(exc.get_error_code() or 0, exc.get_error_message() or str(exc), field=field)


@contextmanager
def calls(field: str | None = None) -> Iterator[None]:
    """Run libvirt calls; a `libvirtError` leaves as the matching Vapor error, blamed on `field`."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise vapor_error(exc, field=field) from exc


def lookup_or_none(lookup: Any, name: str, missing_code: int) -> Any:
    """`lookup(name)`, or None when libvirt says there is no such object."""
    try:
        return lookup(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == missing_code:
            return None
        raise vapor_error(exc) from exc


@contextmanager
def undefined_on_failure(definition: Any, created: bool) -> Iterator[None]:
    """Undefine `definition` if the steps after defining it fail, when we just `created` it.

    An ensure_* call that fails half-way leaves nothing of its own behind,
    but an object that existed before is never removed: it may hold
    someone's disks. The original error is re-raised; a failing rollback is
    only logged, because that error is what matters.
    """
    try:
        yield
    except libvirt.libvirtError:
        if created:
            try:
                definition.undefine()
            except (libvirt.libvirtError, VaporError) as exc:
                logger.warning("could not roll back a definition: %s", exc)
        raise


class Connection:
    """A connection to one libvirt host, opened on first use.

    One instance may be shared by threads: libvirt connections are
    thread-safe, and opening is serialized so a burst of first calls opens
    one connection. A connection that died (daemon restarted) is reopened.
    """

    def __init__(self, uri: str | None = None) -> None:
        self._uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        # Read at call time: tests swap settings.VAPOR after import.
        return self._uri or settings.VAPOR.libvirt_uri

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                self._discard(conn)
            uri = self.uri
            try:
                self._conn = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                raise ServiceUnavailable(f"cannot connect to {uri}: {exc.get_error_message() or exc} ({UNAVAILABLE})") from exc
            return self._conn

    @staticmethod
    def _discard(conn: libvirt.virConnect) -> None:
        # A dead connection may fail to close; there is nothing left to release.
        with suppress(libvirt.libvirtError):
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._discard(self._conn)
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
