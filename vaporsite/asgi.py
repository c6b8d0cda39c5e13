"""The ASGI application `manage.py serve` runs: one router for HTTP, websockets and lifespan.

- `http`: a static file (vaporsite/staticfiles.py) if the path names one, otherwise Django.
- `websocket` under /ws/: the application named by settings.VAPOR_WEBSOCKET_APPLICATION, imported
  on the first websocket, so that a module that is missing or broken costs the websockets only;
  HTTP never imports it. Any other websocket path is refused before it is accepted (HTTP 403).
- `lifespan`: acknowledged; at shutdown the websocket application's `aclose()`, if it has one and was
  loaded, is awaited (it closes the consoles still open).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vaporsite.settings")

logger = logging.getLogger("vapor.asgi")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]  # (scope, receive, send); Django's handler is typed loosely

WEBSOCKET_PREFIX = "/ws/"


async def refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """Close before accepting: the server answers the upgrade with HTTP 403."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


class Router:
    def __init__(self, http: ASGIApp, static: Callable[[Scope, Receive, Send], Awaitable[bool]] | None = None) -> None:
        self.http = http
        self.static = static
        self.websocket: ASGIApp | None = None

    def websocket_application(self) -> ASGIApp | None:
        """The websocket application, imported the first time; None (logged) if it cannot be imported."""
        if self.websocket is None:
            from django.conf import settings
            from django.utils.module_loading import import_string

            name = settings.VAPOR_WEBSOCKET_APPLICATION
            try:
                self.websocket = import_string(name)
            except Exception:
                logger.exception("the websocket application %s cannot be imported; websockets are refused", name)
                return None
        return self.websocket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self.static is not None and await self.static(scope, receive, send):
                return
            await self.http(scope, receive, send)
        elif kind == "websocket":
            application = self.websocket_application() if scope["path"].startswith(WEBSOCKET_PREFIX) else None
            await (application or refuse_websocket)(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        else:
            raise ValueError(f"unknown ASGI scope type {kind!r}")

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.aclose()
                except Exception as exc:
                    logger.exception("closing the websocket application failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        close = getattr(self.websocket, "aclose", None)
        if close is not None:
            await close()


def _application() -> Router:
    django_application = get_asgi_application()  # sets Django up first: the static files read settings
    from vaporsite.staticfiles import StaticFiles

    return Router(django_application, StaticFiles())


application = _application()
