"""A loopback HTTP server on a raw socket, for downloads that must go wrong on cue."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

from pytest_httpserver import HTTPServer

# respond(conn, request_number, stop): answer (or misbehave) on `conn`; `stop` is set when the test ends,
# so a respond that stalls should wait on it rather than sleep.
Respond = Callable[[socket.socket, int, threading.Event], None]


class LoopbackServer:
    """Listens on 127.0.0.1; reads each request's head, then hands the connection to `respond`.

    Each connection gets its own thread, so a stalled answer does not hold up the retry behind it.
    `requests` counts the requests read.
    """

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            with self.lock:
                self.requests += 1
                number = self.requests
            try:
                self.respond(conn, number, self.stop)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the client hung up first (a read timeout, a size limit): what some tests want

    def close(self) -> None:
        self.stop.set()
        self.acceptor.join(timeout=10)
        for thread in self.threads:
            thread.join(timeout=10)
        self.listener.close()


def loopback_servers() -> Iterator[Callable[[Respond], LoopbackServer]]:
    """The body of a fixture that starts servers on demand and closes them all when the test ends."""
    servers: list[LoopbackServer] = []

    def start(respond: Respond) -> LoopbackServer:
        servers.append(LoopbackServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def http_server_on_127_0_0_2() -> Iterator[HTTPServer]:
    """The body of a fixture: pytest-httpserver on 127.0.0.2, a second loopback address, for tests that tell hosts apart."""
    server = HTTPServer(host="127.0.0.2", port=0)
    server.start()
    yield server
    server.clear()
    server.stop()
