"""A websocket ASGI application for the server's tests, standing in for the consoles' one.

It accepts (with the subprotocol "binary" when offered, as the consoles do), sends one text frame
describing what reached it (scheme, path, query, Host, Origin, client), then echoes every frame
back as it came: binary as binary, text as text. `aclose()` records that the server's shutdown
called it, in `closed` and, when VAPOR_TEST_ECHO_CLOSED names a file, in that file (for a server
run as a subprocess).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class EchoApplication:
    def __init__(self) -> None:
        self.closed = False
        self.connections = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        message = await receive()
        assert message["type"] == "websocket.connect"
        self.connections += 1
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if "binary" in scope.get("subprotocols", []):
            accept["subprotocol"] = "binary"
        await send(accept)
        seen = {
            "scheme": scope.get("scheme"),
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "host": headers.get("host"),
            "origin": headers.get("origin"),
            "client": list(scope["client"]) if scope.get("client") else None,
        }
        await send({"type": "websocket.send", "text": json.dumps(seen)})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
            else:
                await send({"type": "websocket.send", "text": message["text"]})

    async def aclose(self) -> None:
        self.closed = True
        marker = os.environ.get("VAPOR_TEST_ECHO_CLOSED")
        if marker:
            Path(marker).write_text("closed\n")


application = EchoApplication()
