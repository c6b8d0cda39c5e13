"""md5 and sha256 of a stream in one pass, the two digests in parallel.

hashlib releases the GIL for large updates, so feeding md5 on a helper
thread while sha256 runs on the caller's costs about as much as md5 alone,
when a second CPU is really free (docs/BENCHMARKS.md has the figures: 1.29x
over one thread in the recorded run, no gain when only one CPU is given).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Digests:
    md5: str
    sha256: str

    def matches(self, checksum: str) -> bool:
        """`checksum` is ``algorithm:hex`` (sha256 or md5)."""
        algorithm, _, expected = checksum.partition(":")
        actual = {"md5": self.md5, "sha256": self.sha256}.get(algorithm.lower())
        return actual is not None and actual == expected.lower()


class DualHasher:
    """Feed chunks with `update`; `digests()` when done. Use as a context manager."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="md5")

    def update(self, chunk: bytes) -> None:
        pending = self._pool.submit(self._md5.update, chunk)
        self._sha256.update(chunk)
        pending.result()

    def digests(self) -> Digests:
        return Digests(md5=self._md5.hexdigest(), sha256=self._sha256.hexdigest())

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> DualHasher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def hash_file(path: Path, *, on_progress: Callable[[int], None] | None = None, chunk_size: int = CHUNK_SIZE) -> Digests:
    """Hash a file; `on_progress(bytes_done_since_last_call)` after each chunk."""
    with DualHasher() as hasher, open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            hasher.update(chunk)
            if on_progress is not None:
                on_progress(len(chunk))
        return hasher.digests()
