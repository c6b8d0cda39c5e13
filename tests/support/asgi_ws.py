"""Drive an ASGI websocket application in-process: the scope, the messages in, the messages out.

async with ws_session(application, "/ws/consoles/3/vnc?ticket=T") as ws:
    first = await ws.next()          # websocket.accept, websocket.http.response.start or websocket.close
    await ws.send(b"bytes")
    message = await ws.next()
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

Application = Callable[[dict[str, Any], Any, Any], Coroutine[Any, Any, None]]


@dataclass
class WsSession:
    scope: dict[str, Any]
    inbound: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    outbound: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next message the application sent (TimeoutError if none comes)."""
        return await asyncio.wait_for(self.outbound.get(), timeout)

    async def send(self, data: bytes | str) -> None:
        key = "bytes" if isinstance(data, bytes) else "text"
        await self.inbound.put({"type": "websocket.receive", key: data})

    async def disconnect(self) -> None:
        await self.inbound.put({"type": "websocket.disconnect", "code": 1000})

    async def received(self, until: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
        """The bytes of binary frames the application sends, until `until(data so far)` holds."""
        data = b""
        while not until(data):
            message = await self.next(timeout)
            assert message["type"] == "websocket.send", message
            data += message["bytes"]
        return data


def scope_for(
    path_and_query: str,
    *,
    origin: str | None = "http://testserver",
    host: str = "testserver",
    cookie: str | None = None,
    subprotocols: tuple[str, ...] = (),
    scheme: str = "ws",
    client: tuple[str, int] = ("127.0.0.1", 50000),
    http_response_extension: bool = True,
) -> dict[str, Any]:
    path, _, query = path_and_query.partition("?")
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "client": client,
        "server": ("127.0.0.1", 8000),
        "subprotocols": list(subprotocols),
        "extensions": {"websocket.http.response": {}} if http_response_extension else {},
    }


@pytest.fixture
def close_async_connections() -> Iterator[None]:
    """The websocket's database work runs in asgiref's worker thread, which keeps its connection open;
    close it after each test (`usefixtures`), or PostgreSQL's test database could not be dropped at the end."""
    yield
    asyncio.run(sync_to_async(connections.close_all)())


@asynccontextmanager
async def ws_session(application: Application, path_and_query: str, **scope: Any) -> AsyncIterator[WsSession]:
    session = WsSession(scope_for(path_and_query, **scope))
    await session.inbound.put({"type": "websocket.connect"})
    session.task = asyncio.get_running_loop().create_task(application(session.scope, session.inbound.get, session.outbound.put))
    try:
        yield session
    finally:
        if not session.task.done():
            await session.disconnect()
            try:
                await asyncio.wait_for(session.task, 5)
            except TimeoutError:
                session.task.cancel()
        if session.task.done() and not session.task.cancelled() and session.task.exception():
            raise session.task.exception()  # type: ignore[misc]
