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
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any, Self

import libvirt
from django.conf import settings

from vaporsite.errors import ServiceUnavailable, VaporError
from vms.hypervisor.errors import UNAVAILABLE, from_libvirt
from vms.hypervisor.uris import files_are_local

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


SLOW_FAILURE_SECONDS = 0.5
"""An open that failed after this long is remembered (VAPOR_HOST_RETRY_AFTER); a quicker refusal is not."""


class _NoAnswer(ServiceUnavailable):
    """The host did not answer within VAPOR_HOST_CONNECT_TIMEOUT."""


def _remote(uri: str) -> bool:
    """A URI that goes over the network (qemu+tcp://, qemu+tls://, qemu+ssh://, qemu://HOST/...)."""
    return not files_are_local(uri)


class Connection:
    """A connection to one libvirt host, opened on first use.

    One instance may be shared by threads: libvirt connections are
    thread-safe, and opening is serialized so a burst of first calls opens
    one connection. A connection that died (daemon restarted) is reopened.

    A *kept* connection (`vms.hypervisor.get_hypervisor`: one per host and
    process) ignores `close()`, so callers that close what they were given
    do not close it for the next request. Opening one to a remote host is
    bounded by VAPOR_HOST_CONNECT_TIMEOUT and, once open, watched by libvirt's
    keepalive (VAPOR_HOST_KEEPALIVE seconds, three misses: dead), so a call
    to a host that stopped answering fails instead of hanging. A host that
    that did not answer within the timeout is not asked again for
    VAPOR_HOST_RETRY_AFTER seconds: requests about it fail at once meanwhile,
    and never wait on it. A host that refuses at once (its daemon stopped) is
    asked again on the next call, which costs about a millisecond.
    """

    def __init__(self, uri: str | None = None, *, kept: bool = False) -> None:
        self._uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._kept = kept
        self._failed: tuple[float, str] | None = None  # monotonic time and message of the last failed open

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
                self._conn = None
            uri = self.uri
            if self._failed is not None:
                failed_at, message = self._failed
                wait = settings.VAPOR.host_retry_after - (time.monotonic() - failed_at)
                if wait > 0:
                    raise ServiceUnavailable(f"{message}; not retried for another {wait:.0f} s ({UNAVAILABLE})")
            started = time.monotonic()
            try:
                self._conn = self._open(uri)
            except ServiceUnavailable as exc:
                # Only a slow failure (no answer: a timeout) is remembered; a refusal costs a millisecond, and
                # asking again at once lets a daemon that is back be used at once.
                if isinstance(exc, _NoAnswer) or time.monotonic() - started >= SLOW_FAILURE_SECONDS:
                    self._failed = (time.monotonic(), exc.message.removesuffix(f" ({UNAVAILABLE})"))
                raise
            self._failed = None
            return self._conn

    def _open(self, uri: str) -> libvirt.virConnect:
        from vms.hypervisor.consoles import start_event_loop

        # Before opening: keepalive and the serial console's stream events need libvirt's event loop.
        start_event_loop()
        if not _remote(uri):
            try:
                opened = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                raise ServiceUnavailable(f"cannot connect to {uri}: {exc.get_error_message() or exc} ({UNAVAILABLE})") from exc
            self._keepalive(opened, uri)
            return opened
        timeout = settings.VAPOR.host_connect_timeout
        result: list[Any] = []

        def opener() -> None:
            try:
                result.append(libvirt.open(uri))
            except libvirt.libvirtError as exc:
                result.append(exc)

        thread = threading.Thread(target=opener, name=f"libvirt-open {uri}", daemon=True)
        thread.start()
        thread.join(timeout)
        if not result:
            # The thread finishes on its own; whatever it opens late is closed then.
            threading.Thread(target=self._close_late, args=(thread, result), daemon=True).start()
            raise _NoAnswer(f"cannot connect to {uri}: no answer within {timeout:g} s ({UNAVAILABLE})")
        opened = result[0]
        if isinstance(opened, libvirt.libvirtError):
            raise ServiceUnavailable(f"cannot connect to {uri}: {opened.get_error_message() or opened} ({UNAVAILABLE})") from opened
        self._keepalive(opened, uri)
        return opened

    @staticmethod
    def _keepalive(conn: libvirt.virConnect, uri: str) -> None:
        if uri.startswith("test:"):
            return  # the in-process test driver has no wire to watch
        try:
            conn.setKeepAlive(settings.VAPOR.host_keepalive, 3)
        except libvirt.libvirtError as exc:
            logger.info("no keepalive on %s: %s", uri, exc.get_error_message())

    def _close_late(self, thread: threading.Thread, result: list[Any]) -> None:
        thread.join()
        if result and not isinstance(result[0], libvirt.libvirtError):
            self._discard(result[0])

    @staticmethod
    def _discard(conn: libvirt.virConnect) -> None:
        # A dead connection may fail to close; there is nothing left to release.
        with suppress(libvirt.libvirtError):
            conn.close()

    def close(self) -> None:
        """Close the connection; a kept one stays open (see the class), `discard()` closes that."""
        if not self._kept:
            self.discard()

    def discard(self) -> None:
        """Close the connection whatever it is; the next call opens a new one, and a failed host is asked again."""
        with self._lock:
            self._failed = None
            if self._conn is not None:
                self._discard(self._conn)
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
