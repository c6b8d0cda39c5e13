"""A loopback byte source for bench.consoles_bench: every connection gets MIB mebibytes as fast as it reads, then EOF.

Run as `python -m bench.consoles_source PORT MIB` (its own process, so its sending costs the bench's client and
the server nothing but the CPU it takes); it prints "ready" once listening.
"""

from __future__ import annotations

import socket
import sys
import threading

CHUNK = 1024 * 1024


def serve(port: int, mib: int) -> None:
    block = memoryview(bytes(range(256)) * (CHUNK // 256))
    listener = socket.create_server(("127.0.0.1", port), backlog=64)
    print("ready", flush=True)

    def stream(conn: socket.socket) -> None:
        with conn:
            try:
                for _ in range(mib):
                    conn.sendall(block)
            except OSError:
                pass

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=stream, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
