"""Reaching a guest's consoles: its VNC server as a socket, its serial port as a libvirt stream.

VNC: on a local connection libvirt hands over a socket already connected to
QEMU's VNC server (`virDomainOpenGraphicsFD`), which reaches a server that
listens inside libvirtd's own network namespace; on a remote connection (or a
driver without that call) the socket is opened to the host's graphics
listen address. Serial: `virDomainOpenConsole` on a non-blocking stream,
which works over every libvirt transport. Stream events need an event loop
registered before the connection opens: `start_event_loop()` runs libvirt's
default one in a thread of its own (idle in poll() when nothing happens), and
`console_driver()` keeps one connection per URI opened after it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

import libvirt

from vaporsite.errors import Conflict, HypervisorError
from vms.hypervisor import SerialChannel
from vms.hypervisor._connection import Connection, calls

logger = logging.getLogger("vapor.hypervisor")

_READ_CHUNK = 64 * 1024
_CONNECT_TIMEOUT = 10.0
_LOOPBACK_OR_ANY = {"", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost"}  # noqa: S104 - addresses compared, not bound
# openGraphicsFD is refused by drivers and transports that cannot pass a descriptor.
_NO_FD_PASSING = {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, libvirt.VIR_ERR_OPERATION_UNSUPPORTED}

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None
_loop_pid = 0


def start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once per process).

    Connections opened afterwards get keepalive and stream events; those
    opened before keep working as they did.
    """
    global _loop_thread, _loop_pid
    with _loop_lock:
        if _loop_thread is not None and _loop_pid == os.getpid():
            return
        if _loop_thread is None:
            libvirt.virEventRegisterDefaultImpl()
        # else: a process forked from one that ran the loop: the registration is inherited, the thread is not
        _loop_pid = os.getpid()
        _loop_thread = threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True)
        _loop_thread.start()


def _run_event_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:  # pragma: no cover - libvirt's own loop failing
            logger.error("libvirt's event loop failed; consoles stop receiving")
            return


class SerialStream:
    """A guest's serial port as an async byte pipe (`vms.hypervisor.SerialChannel`).

    libvirt calls `_on_event` in its event thread; what it reads is handed to
    the asyncio loop that opened the stream. `read()` returns b"" once the
    port is closed (the guest stopped, or another session took it).
    """

    def __init__(self, stream: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._closed = False
        self._eof = False
        events = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_HANGUP | libvirt.VIR_STREAM_EVENT_ERROR
        stream.eventAddCallback(events, self._on_event, None)

    def _on_event(self, stream: Any, events: int, _opaque: object) -> None:
        if self._closed:
            return
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while True:
                try:
                    data = stream.recv(_READ_CHUNK)
                except libvirt.libvirtError:
                    data = b""
                if data == -2:  # nothing more for now
                    break
                self._deliver(data)
                if not data:
                    return
        if events & (libvirt.VIR_STREAM_EVENT_HANGUP | libvirt.VIR_STREAM_EVENT_ERROR):
            self._deliver(b"")

    def _deliver(self, data: bytes) -> None:
        if self._eof:
            return
        if not data:
            self._eof = True
            with suppress(libvirt.libvirtError):
                self._stream.eventRemoveCallback()
        with suppress(RuntimeError):  # the loop is gone: nobody reads any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, data)

    async def read(self) -> bytes:
        if self._closed:
            return b""
        return await self._queue.get()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._closed and not self._eof:
            try:
                sent = self._stream.send(bytes(view))
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"cannot write to the serial console: {exc.get_error_message() or exc}") from exc
            if sent == -2:  # the port's buffer is full: the guest reads slower than we write
                await asyncio.sleep(0.01)
                continue
            view = view[sent:]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with suppress(libvirt.libvirtError):
            if not self._eof:
                self._stream.eventRemoveCallback()
        with suppress(libvirt.libvirtError):
            self._stream.abort()
        self._queue.put_nowait(b"")


class ConsolesMixin(Connection):
    """The `open_graphics` and `open_serial` parts of `Hypervisor`."""

    def _is_local(self) -> bool:
        return not urlsplit(self.uri).hostname

    def open_graphics(self, name: str) -> socket.socket:
        """A socket connected to the running domain's VNC server (409 when it has none)."""
        info = self.console(name)  # type: ignore[attr-defined]  # from DomainsMixin
        if info.type != "vnc":
            raise Conflict(f"domain {name} has no VNC console ({info.type or 'no graphics'})", code="no_vnc")
        domain = self._lookup_domain(name)  # type: ignore[attr-defined]
        if self._is_local():
            try:
                fd = domain.openGraphicsFD(0, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _NO_FD_PASSING:
                    raise HypervisorError(f"cannot open the console of {name}: {exc.get_error_message() or exc}") from exc
            else:
                return socket.socket(fileno=fd)
        if info.port is None:
            raise Conflict(f"domain {name} has no VNC port yet (it is not running)", code="not_running")
        host = info.listen
        remote_host = urlsplit(self.uri).hostname
        if host in _LOOPBACK_OR_ANY and remote_host:
            host = remote_host
        try:
            return socket.create_connection((host or "127.0.0.1", info.port), timeout=_CONNECT_TIMEOUT)
        except OSError as exc:
            raise HypervisorError(f"cannot reach the VNC console of {name} at {host}:{info.port}: {exc.strerror or exc}") from exc

    def open_serial(self, name: str, loop: asyncio.AbstractEventLoop) -> SerialChannel:
        """The running domain's first serial port as a stream; takes it over from another session holding it."""
        start_event_loop()
        domain = self._lookup_domain(name)  # type: ignore[attr-defined]
        with calls(field="name"):
            stream = self._connection().newStream(libvirt.VIR_STREAM_NONBLOCK)
            try:
                domain.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            except libvirt.libvirtError:
                with suppress(libvirt.libvirtError):
                    stream.abort()
                raise
        return SerialStream(stream, loop)
