"""md5 and sha256 of a stream in one pass, the two digests in parallel.

md5 is the slow one (about 0.4 of sha256's speed with SHA-NI) and cannot be split, so the fastest a stream can
be hashed is md5's own speed. DualHasher gets there: md5 runs on a helper thread fed through a short queue,
sha256 on the caller's thread, and `update` returns as soon as both have the chunk (hashlib releases the GIL
for large updates). The caller reads the next chunk, writes it, receives it from the network while md5 is
still busy, so on two free CPUs hashing a file costs about what md5 alone costs (docs/BENCHMARKS.md, ISO
block, target 1). On one CPU nothing can run in parallel and the two hashes cost the sum of their times.

Several files hashed at once (`register_isos --jobs`) already keep every CPU busy: there each file is hashed
on one thread (`parallel=False`), which saves the hand-over between threads.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

CHUNK_SIZE = 1024 * 1024
# Chunks waiting for md5: enough to ride out a slow read or write, bounded so memory stays a few MiB.
QUEUE_DEPTH = 4


@dataclass(frozen=True)
class Digests:
    md5: str
    sha256: str

    def matches(self, checksum: str) -> bool:
        """`checksum` is ``algorithm:hex`` (sha256 or md5)."""
        algorithm, _, expected = checksum.partition(":")
        actual = {"md5": self.md5, "sha256": self.sha256}.get(algorithm.lower())
        return actual is not None and actual == expected.lower()


# md5 and sha256 of the bytes so far. hashlib's objects cannot be saved or pickled, only kept in memory.
HashState = tuple["hashlib._Hash", "hashlib._Hash"]


class Hasher(Protocol):
    def update(self, chunk: bytes) -> None: ...

    def digests(self) -> Digests: ...

    def close(self) -> None: ...


class SerialHasher:
    """Both digests on the caller's thread: for when every CPU is busy anyway."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self._md5.update(chunk)
        self._sha256.update(chunk)

    def digests(self) -> Digests:
        return Digests(md5=self._md5.hexdigest(), sha256=self._sha256.hexdigest())

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> SerialHasher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class DualHasher:
    """Feed chunks with `update`; `digests()` when done. Use as a context manager (the helper thread ends on close).

    `update` keeps a reference to the chunk until md5 has read it, so chunks must not change afterwards: bytes
    do not; anything else is copied first.
    """

    def __init__(self, *, depth: int = QUEUE_DEPTH, start: HashState | None = None) -> None:
        """`start`: the two hash objects of the bytes before these (an upload resumed), continued in place."""
        self._md5, self._sha256 = start if start is not None else (hashlib.md5(usedforsecurity=False), hashlib.sha256())
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)  # None: the end
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run_md5, name="md5", daemon=True)
        self._thread.start()

    def _run_md5(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._md5.update(chunk)
                except BaseException as exc:  # reported by digests(); keep draining so update() never blocks
                    self._error = exc

    def update(self, chunk: bytes) -> None:
        if self._closed:
            raise ValueError("update() after digests() or close()")
        if not chunk:
            return
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        self._queue.put(chunk)
        self._sha256.update(chunk)

    def close(self) -> None:
        """Let md5 finish what is queued and end the thread. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def digests(self) -> Digests:
        self.close()
        if self._error is not None:
            raise self._error
        return Digests(md5=self._md5.hexdigest(), sha256=self._sha256.hexdigest())

    def state(self) -> HashState:
        """The two hash objects once md5 has caught up, to continue with another DualHasher(start=...)."""
        self.close()
        if self._error is not None:
            raise self._error
        return self._md5, self._sha256

    def __enter__(self) -> DualHasher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def hash_file(
    path: Path, *, on_progress: Callable[[int], None] | None = None, chunk_size: int = CHUNK_SIZE, parallel: bool = True
) -> Digests:
    """Hash a file; `on_progress(bytes_done_since_last_call)` after each chunk.

    `parallel=False` hashes on the calling thread only, for callers that already hash several files at once.
    """
    hasher: Hasher = DualHasher() if parallel else SerialHasher()
    try:
        with open(path, "rb") as stream:
            while chunk := stream.read(chunk_size):
                hasher.update(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
        return hasher.digests()
    finally:
        hasher.close()


# Threads that run PipelinedHasher's updates, shared by every upload in the process: two, so md5 and sha256
# of one stream run at once; more CPUs let several uploads hash at once. Idle threads cost nothing. Made on first
# use in each process: a forked child inherits no threads, so it must not inherit a pool that believes it has some.
_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="hash"))
        return _POOL[1]


class _Lane:
    """One hash object, fed its pieces in order by at most one pool task at a time."""

    def __init__(self, digest: hashlib._Hash) -> None:
        self.digest = digest
        self.pending: deque[bytes] = deque()  # the piece being hashed stays at the front until it is done
        self.running = False
        self.error: BaseException | None = None


class PipelinedHasher:
    """md5 and sha256 each on a shared pool thread; `update` only queues the piece and returns at once.

    Nothing waits for the hashes until `state()`: the caller writes the next piece (or answers its HTTP request
    and receives the next chunk) while both hash the previous ones, so one upload uses up to three CPUs. The
    pieces queued but not yet hashed by both are at most `depth` (update blocks until one is done), so the memory
    held is at most `depth` pieces per hasher, the same bytes shared by the two lanes. A hasher can outlive the
    request that fed it (an upload's next chunk continues it); it holds no thread while idle.
    """

    def __init__(self, *, depth: int = QUEUE_DEPTH, start: HashState | None = None) -> None:
        md5, sha256 = start if start is not None else (hashlib.md5(usedforsecurity=False), hashlib.sha256())
        self._lanes = (_Lane(md5), _Lane(sha256))
        self._depth = depth
        self._changed = threading.Condition()
        self.fed = 0  # bytes given to update()

    def update(self, chunk: bytes) -> None:
        if not chunk:
            return
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        with self._changed:
            self._changed.wait_for(lambda: all(len(lane.pending) < self._depth for lane in self._lanes))
            for lane in self._lanes:
                lane.pending.append(chunk)
                if not lane.running:
                    lane.running = True
                    _pool().submit(self._drain, lane)
            self.fed += len(chunk)

    def _drain(self, lane: _Lane) -> None:
        while True:
            with self._changed:
                if not lane.pending:
                    lane.running = False
                    self._changed.notify_all()
                    return
                chunk = lane.pending[0]
            if lane.error is None:
                try:
                    lane.digest.update(chunk)
                except BaseException as exc:  # reported by state(); keep draining so update() never blocks
                    lane.error = exc
            with self._changed:
                lane.pending.popleft()
                self._changed.notify_all()

    def state(self) -> HashState:
        """The two hash objects once both have hashed every piece given; the hasher may be fed again after."""
        with self._changed:
            self._changed.wait_for(lambda: not any(lane.running for lane in self._lanes))
        for lane in self._lanes:
            if lane.error is not None:
                raise lane.error
        return self._lanes[0].digest, self._lanes[1].digest

    def digests(self) -> Digests:
        md5, sha256 = self.state()
        return Digests(md5=md5.hexdigest(), sha256=sha256.hexdigest())
