"""Static files for the ASGI application, found and described by whitenoise, sent without Django.

whitenoise's Django middleware is synchronous and hands Django a file iterator
that Django's ASGI handler reads whole into memory (with a warning) before
sending it. Here whitenoise does what it is good at (the index of
STATIC_ROOT, content types, ETag and Last-Modified, the gzip variant a client
accepts, ranges, Cache-Control) and the file is sent in chunks, read in a
thread, on the event loop. A request for anything else goes to Django.

With DEBUG on, files are looked up per request from the apps' own static
directories (whitenoise's autorefresh), so development needs no
`collectstatic`; with DEBUG off, STATIC_ROOT is indexed once, on the first
request.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any

from whitenoise.middleware import WhiteNoiseMiddleware

logger = logging.getLogger("vapor.static")

CHUNK = 256 * 1024
# The request headers whitenoise reads, as ASGI names them and as it expects them (WSGI environ keys).
REQUEST_HEADERS = {
    b"accept-encoding": "HTTP_ACCEPT_ENCODING",
    b"if-none-match": "HTTP_IF_NONE_MATCH",
    b"if-modified-since": "HTTP_IF_MODIFIED_SINCE",
    b"range": "HTTP_RANGE",
}

Scope = dict[str, Any]


class StaticFiles:
    """`await static(scope, receive, send)` answers a request for a static file and returns True, or returns False."""

    def __init__(self) -> None:
        self._index: WhiteNoiseMiddleware | None = None

    @property
    def index(self) -> WhiteNoiseMiddleware:
        if self._index is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                index = WhiteNoiseMiddleware(get_response=None)
            for warning in caught:  # "No directory at: STATIC_ROOT": collectstatic has not run
                logger.warning("static files: %s (run: manage.py collectstatic)", warning.message)
            self._index = index
        return self._index

    def find(self, path: str) -> Any:
        index = self.index
        if not path.startswith(index.static_prefix):
            return None
        return index.find_file(path) if index.autorefresh else index.files.get(path)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> bool:
        static_file = self.find(scope["path"])
        if static_file is None:
            return False
        environ = {wsgi: value.decode("latin-1") for name, value in scope["headers"] if (wsgi := REQUEST_HEADERS.get(name))}
        response = static_file.get_response(scope["method"], environ)
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response.headers]
        await send({"type": "http.response.start", "status": int(response.status), "headers": headers})
        body = response.file
        if body is None:
            await send({"type": "http.response.body", "body": b""})
            return True
        try:
            while True:
                chunk = await asyncio.to_thread(body.read, CHUNK)
                if not chunk:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            body.close()
        return True
