"""The console websocket: `/ws/consoles/{vm_id}/{type}?ticket=T`, bridged to the guest.

An ASGI application (`vaporsite.asgi` routes `/ws/` here). Before anything
reaches the guest it checks, in this order: the path, a same-origin `Origin`
header, and the ticket (`vms.services.consoles.console_ticket_redeem`: unused,
unexpired, this VM, this type, this user, access still granted). A refusal is
an HTTP 403 before the websocket is accepted, with the reason in a JSON body
where the server can send one. Once accepted, binary frames carry the
console's raw bytes both ways (RFB for VNC, the serial port's bytes for
serial); text frames from the client are sent as UTF-8. A read-only serial
session drops what the client sends.

A console ends when the guest's side closes (the VM stopped: code 1000),
when the VM is deleted (4004), when its user is deactivated or loses access
(4001; checked every `VAPOR_CONSOLE_CHECK_INTERVAL` seconds for all the
process's consoles at once), when the client leaves, or when the server
shuts down (1001). Each one is recorded on the VM's event log when it opens
and when it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import parse_cookie
from django.utils import timezone

from vaporsite.errors import VaporError
from vms import hypervisor
from vms.choices import ConsoleType
from vms.hypervisor import SerialChannel
from vms.services.consoles import (
    ConsoleGrant,
    TicketRefused,
    console_session_closed,
    console_session_opened,
    console_sessions_check,
    console_ticket_redeem,
)

log = logging.getLogger("vapor.consoles")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PATH = re.compile(r"^/ws/consoles/(?P<vm_id>[0-9]{1,18})/(?P<type>[a-z]{1,16})/?$")
READ_CHUNK = 256 * 1024  # larger reads mean fewer frames per MiB; 1 MiB gained little more (bench.consoles_bench part 1)
GUEST_CLOSED = 1000
SHUTTING_DOWN = 1001
SERVER_ERROR = 1011
REASON_BYTES = 120  # a close frame's reason is at most 123 bytes


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def origin_problem(scope: Scope) -> str | None:
    """Why the upgrade's `Origin` is not this site's, or None when it is.

    Same origin: the Origin's host and port are the request's `Host`, and a
    wss:// request comes from an https:// page; an origin listed in
    CSRF_TRUSTED_ORIGINS is also accepted.
    """
    origin = _header(scope, b"origin")
    if not origin:
        return "the Origin header is missing (a console opens from its own site only)"
    if origin in getattr(settings, "CSRF_TRUSTED_ORIGINS", ()):
        return None
    parts = urlsplit(origin)
    host = _header(scope, b"host").lower()
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.netloc.lower() != host:
        return f"the Origin {origin[:80]} is not this site"
    if scope.get("scheme") == "wss" and parts.scheme != "https":
        return f"the Origin {origin[:80]} is not this site (http page, wss request)"
    return None


def _session_user_id(cookie_header: str) -> int | None:
    """The user the request's session cookie belongs to, if it has a valid one."""
    if not cookie_header:
        return None
    from importlib import import_module

    from django.contrib.auth import get_user
    from django.contrib.sessions.backends.base import SessionBase

    key = parse_cookie(cookie_header).get(settings.SESSION_COOKIE_NAME)
    if not key:
        return None
    store: SessionBase = import_module(settings.SESSION_ENGINE).SessionStore(key)

    class _Request:
        session = store

    user = get_user(_Request())  # type: ignore[arg-type]
    return int(user.pk) if user.is_authenticated else None


def _redeem(scope: Scope, vm_id: int, type: str, ticket: str) -> ConsoleGrant:
    close_old_connections()
    client = scope.get("client")
    return console_ticket_redeem(
        ticket=ticket,
        vm_id=vm_id,
        type=type,
        session_user_id=_session_user_id(_header(scope, b"cookie")),
        address=client[0] if client else None,
    )


async def admit(scope: Scope) -> ConsoleGrant:
    """The grant for this upgrade request, or TicketRefused saying why."""
    match = PATH.match(scope.get("path", ""))
    if match is None or match["type"] not in ConsoleType.values:
        raise TicketRefused("no such console: the path is /ws/consoles/{vm_id}/{vnc|serial}?ticket=...")
    problem = origin_problem(scope)
    if problem:
        raise TicketRefused(problem)
    query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
    ticket = (query.get("ticket") or [""])[0]
    return await sync_to_async(_redeem)(scope, int(match["vm_id"]), match["type"], ticket)


async def deny(scope: Scope, send: Send, reason: str, status: int = 403) -> None:
    """Refuse the upgrade: an HTTP answer with the reason where the server supports it, else a bare close."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps({"detail": f"console refused: {reason}", "code": "console_refused"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


# --- the guest's side ----------------------------------------------------------------------------


class _Guest:
    """One console's guest side: `read()` gives b"" at the end."""

    async def read(self) -> bytes:
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _VncGuest(_Guest):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_CHUNK)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with suppress(OSError, asyncio.CancelledError):
            await self._writer.wait_closed()


async def _open_vnc(name: str, uri: str = "") -> _Guest:
    sock = await asyncio.to_thread(hypervisor.console_hypervisor(uri or None).open_graphics, name)
    reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK)
    return _VncGuest(reader, writer)


class _SerialHub:
    """One serial stream per VM and process, shared by the consoles open on it (watchers and a typist)."""

    hubs: dict[str, _SerialHub] = {}
    opening: dict[tuple[int, str], asyncio.Lock] = {}  # by event loop (tests run several) and VM

    def __init__(self, name: str, channel: SerialChannel) -> None:
        self.name = name
        self.channel = channel
        self.listeners: set[asyncio.Queue[bytes]] = set()
        self.task = asyncio.get_running_loop().create_task(self._pump(), name=f"serial {name}")

    async def _pump(self) -> None:
        while True:
            data = await self.channel.read()
            for queue in list(self.listeners):
                queue.put_nowait(data)
            if not data:
                break
        if _SerialHub.hubs.get(self.name) is self:
            del _SerialHub.hubs[self.name]

    @classmethod
    async def join(cls, name: str, uri: str = "") -> tuple[_SerialHub, asyncio.Queue[bytes]]:
        # One opening at a time per VM: a second openConsole would take the port from the first.
        async with cls.opening.setdefault((id(asyncio.get_running_loop()), name), asyncio.Lock()):
            hub = cls.hubs.get(name)
            if hub is None or hub.task.done():
                loop = asyncio.get_running_loop()
                channel = await asyncio.to_thread(hypervisor.console_hypervisor(uri or None).open_serial, name, loop)
                hub = cls.hubs[name] = cls(name, channel)
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            hub.listeners.add(queue)
        return hub, queue

    def leave(self, queue: asyncio.Queue[bytes]) -> None:
        self.listeners.discard(queue)
        if not self.listeners:
            self.task.cancel()
            self.channel.close()
            if _SerialHub.hubs.get(self.name) is self:
                del _SerialHub.hubs[self.name]
            key = (id(asyncio.get_running_loop()), self.name)
            lock = _SerialHub.opening.get(key)
            if lock is not None and not lock.locked():
                del _SerialHub.opening[key]  # one lock per VM with a console open, not per VM ever opened


class _SerialGuest(_Guest):
    def __init__(self, hub: _SerialHub, queue: asyncio.Queue[bytes]) -> None:
        self._hub, self._queue = hub, queue

    async def read(self) -> bytes:
        return await self._queue.get()

    async def write(self, data: bytes) -> None:
        await self._hub.channel.write(data)

    async def close(self) -> None:
        self._hub.leave(self._queue)


async def _open_serial(name: str, uri: str = "") -> _Guest:
    hub, queue = await _SerialHub.join(name, uri)
    return _SerialGuest(hub, queue)


# --- sessions ------------------------------------------------------------------------------------


@dataclass
class Console:
    """One open console session."""

    grant: ConsoleGrant
    started: datetime = field(default_factory=timezone.now)
    to_client: int = 0
    from_client: int = 0
    ended: asyncio.Future[tuple[int, str]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def end(self, code: int, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result((code, reason))


_open: dict[int, Console] = {}
_watcher: asyncio.Task[None] | None = None


def open_consoles() -> list[Console]:
    """The consoles open in this process (for tests and benchmarks)."""
    return list(_open.values())


def _check(grants: list[ConsoleGrant]) -> dict[int, tuple[int, str]]:
    close_old_connections()
    return console_sessions_check(grants)


async def _watch() -> None:
    """Every VAPOR_CONSOLE_CHECK_INTERVAL seconds while consoles are open: end those whose VM or user went away."""
    global _watcher
    try:
        while _open:
            await asyncio.sleep(settings.VAPOR.console_check_interval)
            consoles = list(_open.values())
            if not consoles:
                break
            try:
                verdicts = await sync_to_async(_check)([c.grant for c in consoles])
            except Exception:  # a database hiccup must not end the watch
                log.exception("console check failed; trying again")
                continue
            for console in consoles:
                if console.grant.ticket_id in verdicts:
                    console.end(*verdicts[console.grant.ticket_id])
    finally:
        _watcher = None


def _register(console: Console) -> None:
    global _watcher
    _open[console.grant.ticket_id] = console
    if _watcher is None or _watcher.done():
        _watcher = asyncio.get_running_loop().create_task(_watch(), name="console watcher")


async def aclose() -> None:
    """End every open console (the server is shutting down)."""
    for console in list(_open.values()):
        console.end(SHUTTING_DOWN, "the server is shutting down")
    for _ in range(50):
        if not _open:
            break
        await asyncio.sleep(0.02)


def _reason(text: str) -> str:
    return text.encode()[:REASON_BYTES].decode(errors="ignore")


async def _to_client(console: Console, guest: _Guest, send: Send) -> tuple[int, str]:
    while True:
        data = await guest.read()
        if not data:
            return GUEST_CLOSED, "the guest's console closed (the VM stopped, or another session took its serial port)"
        console.to_client += len(data)
        await send({"type": "websocket.send", "bytes": data})


async def _from_client(console: Console, guest: _Guest, receive: Receive) -> tuple[int, str]:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return 0, "the browser closed it"
        data = message.get("bytes")
        if data is None:
            data = (message.get("text") or "").encode()
        if not data or console.grant.read_only:
            continue
        console.from_client += len(data)
        await guest.write(data)


async def serve(grant: ConsoleGrant, scope: Scope, receive: Receive, send: Send) -> None:
    """Open the guest's side, accept the websocket and pump bytes until one side ends."""
    try:
        guest = await (_open_vnc if grant.type == ConsoleType.VNC else _open_serial)(grant.vm_name, grant.host_uri)
    except VaporError as exc:
        log.warning("console of %s for %s: cannot reach the guest: %s", grant.vm_name, grant.username, exc.message)
        await deny(scope, send, exc.message, status=exc.status if exc.status != 500 else 502)
        return
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if "binary" in scope.get("subprotocols", []):
        accept["subprotocol"] = "binary"
    console = Console(grant)
    await send(accept)
    _register(console)
    log.info("console %s of %s opened by %s from %s", grant.type, grant.vm_name, grant.username, grant.source_address)
    await sync_to_async(_record_open)(grant)
    loop = asyncio.get_running_loop()
    pumps = [loop.create_task(_to_client(console, guest, send)), loop.create_task(_from_client(console, guest, receive))]
    code, reason = SERVER_ERROR, "server error"
    try:
        done, _ = await asyncio.wait([*pumps, console.ended], return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        code, reason = first.result()
    except Exception as exc:  # a bug or a broken pipe: the console ends, the process goes on
        log.exception("console %s of %s failed", grant.type, grant.vm_name)
        code, reason = SERVER_ERROR, f"server error: {type(exc).__name__}"
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        _open.pop(grant.ticket_id, None)
        await guest.close()
        if code:  # 0: the client left; nothing to send
            with suppress(Exception):
                await send({"type": "websocket.close", "code": code, "reason": _reason(reason)})
        ended = timezone.now()
        log.info("console %s of %s for %s closed: %s", grant.type, grant.vm_name, grant.username, reason)
        await sync_to_async(_record_close)(console, ended, reason)


def _record_open(grant: ConsoleGrant) -> None:
    close_old_connections()
    console_session_opened(grant=grant)


def _record_close(console: Console, ended: datetime, reason: str) -> None:
    close_old_connections()
    console_session_closed(
        grant=console.grant,
        started=console.started,
        ended=ended,
        reason=reason,
        to_client=console.to_client,
        from_client=console.from_client,
    )


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry point for console websockets."""
    if scope["type"] != "websocket":
        raise ValueError(f"the console application serves websockets, not {scope['type']}")
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    try:
        grant = await admit(scope)
    except TicketRefused as exc:
        client = scope.get("client")
        log.warning("console refused on %s from %s: %s", scope.get("path"), client[0] if client else "?", exc)
        await deny(scope, send, str(exc))
        return
    await serve(grant, scope, receive, send)


application.aclose = aclose  # type: ignore[attr-defined]  # vaporsite.asgi awaits it on shutdown
