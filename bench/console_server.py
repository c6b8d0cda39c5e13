"""The portal as bench.consoles_bench serves it: an ASGI app for uvicorn, HTTP to Django, `/ws/` to the consoles.

Until `manage.py serve` and `vaporsite.asgi`'s websocket routing land, the console benchmark runs uvicorn on
this module (`bench.consoles_bench.server_command` builds the command line). It routes as the contract says
`vaporsite.asgi` will: `http` to Django's ASGI handler, websocket scopes under `/ws/` to
`vms.consoles.websocket.application`, other websockets closed, `lifespan` acknowledged, and the consoles
ended on shutdown.

One bench-only hook, read from the environment at import time and never present in the product:
`VAPOR_BENCH_FAKE_CONSOLES` (JSON, `{"graphics": {"DOMAIN": "HOST:PORT"}, "echo": ["DOMAIN"]}`) replaces, in
this process only, `vms.hypervisor.console_hypervisor` by a wrapper that, for the named domains, connects
`open_graphics` to a TCP byte source and answers `open_serial` with an in-memory echo; every other domain
goes to the real driver. The domains named must still exist and run on the daemon, since the ticket API
checks them there: only the bytes behind the console come from elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vaporsite.settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()

from vms import hypervisor  # noqa: E402 - after Django's set-up
from vms.consoles import websocket  # noqa: E402

FAKES_ENV = "VAPOR_BENCH_FAKE_CONSOLES"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class EchoSerial:
    """A serial port that sends back what is written (`vms.hypervisor.SerialChannel`), like tests/fakes.py's."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = False

    async def read(self) -> bytes:
        return await self._queue.get()

    async def write(self, data: bytes) -> None:
        self._queue.put_nowait(data)

    def close(self) -> None:
        self.closed = True
        self._queue.put_nowait(b"")


class RedirectedConsoles:
    """The real console driver, except for the domains whose consoles the benchmark feeds itself."""

    def __init__(self, real: Any, graphics: dict[str, str], echo: set[str]) -> None:
        self._real, self._graphics, self._echo = real, graphics, echo

    def open_graphics(self, name: str) -> socket.socket:
        if name not in self._graphics:
            return self._real.open_graphics(name)
        host, _, port = self._graphics[name].rpartition(":")
        return socket.create_connection((host, int(port)), timeout=10)

    def open_serial(self, name: str, loop: asyncio.AbstractEventLoop) -> Any:
        return EchoSerial() if name in self._echo else self._real.open_serial(name, loop)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real, attr)


def install_fakes(config: str) -> None:
    """Wrap this process's console driver as `config` (the JSON of FAKES_ENV) says."""
    fakes = json.loads(config)
    graphics, echo = dict(fakes.get("graphics", {})), set(fakes.get("echo", []))
    real_console_hypervisor = hypervisor.console_hypervisor

    def console_hypervisor(uri: str | None = None) -> Any:
        return RedirectedConsoles(real_console_hypervisor(uri), graphics, echo)

    hypervisor.console_hypervisor = console_hypervisor


if os.environ.get(FAKES_ENV):
    install_fakes(os.environ[FAKES_ENV])


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await websocket.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await django_application(scope, receive, send)
    elif scope["type"] == "websocket" and str(scope.get("path", "")).startswith("/ws/"):
        await websocket.application(scope, receive, send)
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close", "code": 1008})
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)


async def websocket_application(scope: Scope, receive: Receive, send: Send) -> None:
    """What `manage.py serve` runs for /ws/ under bench.serve_settings: the product's console application."""
    await websocket.application(scope, receive, send)


websocket_application.aclose = websocket.aclose  # type: ignore[attr-defined]
