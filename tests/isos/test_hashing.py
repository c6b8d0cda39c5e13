"""md5 + sha256 in one pass (isos.hashing), the download's write-behind file, and how register_isos hashes."""

from __future__ import annotations

import hashlib
import os
import threading
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from isos import hashing, jobs
from isos.hashing import Digests, DualHasher, SerialHasher, hash_file
from tests.support.isos import make_iso


def expected(data: bytes) -> Digests:
    return Digests(md5=hashlib.md5(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest())


def md5_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "md5"]


CHUNKS = [os.urandom(size) for size in (1, 4096, 1024 * 1024, 0, 777, 3 * 1024 * 1024 + 5)]


@pytest.mark.parametrize("hasher_class", [DualHasher, SerialHasher])
def test_both_hashers_give_hashlibs_digests_over_many_chunks(hasher_class):
    with hasher_class() as hasher:
        for chunk in CHUNKS:
            hasher.update(chunk)
        assert hasher.digests() == expected(b"".join(CHUNKS))


def test_the_queue_stays_short_and_md5_sees_every_chunk_in_order():
    # More chunks than the queue holds: update() must wait for md5 rather than drop or reorder anything.
    chunks = [bytes([n]) * 70_000 for n in range(hashing.QUEUE_DEPTH * 5)]
    with DualHasher(depth=2) as hasher:
        for chunk in chunks:
            hasher.update(chunk)
        assert hasher.digests() == expected(b"".join(chunks))


class HeldMd5:
    """md5 that waits for `release` before each update: the caller runs ahead, as it does when md5 is slow."""

    def __init__(self, release: threading.Event) -> None:
        self.release, self.inner = release, hashlib.md5()

    def update(self, chunk: bytes) -> None:
        self.release.wait(timeout=10)
        self.inner.update(chunk)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


def test_a_chunk_changed_after_update_does_not_change_the_digests():
    release = threading.Event()
    buffer = bytearray(b"a" * 100_000)
    with DualHasher() as hasher:
        hasher._md5 = HeldMd5(release)  # type: ignore[assignment]
        hasher.update(buffer)
        buffer[:] = b"b" * 100_000  # md5 has not read it yet: the hasher must have taken a copy
        hasher.update(memoryview(b"tail"))
        release.set()
        assert hasher.digests() == expected(b"a" * 100_000 + b"tail")


def test_the_helper_thread_ends_on_close_and_on_error():
    before = len(md5_threads())
    with DualHasher() as hasher:
        hasher.update(b"x" * 10_000)
        assert len(md5_threads()) == before + 1
    assert len(md5_threads()) == before
    with pytest.raises(RuntimeError), DualHasher() as hasher:
        hasher.update(b"x" * 10_000)
        raise RuntimeError("the download failed")
    assert len(md5_threads()) == before


def test_update_after_digests_is_refused_and_digests_can_be_read_twice():
    hasher = DualHasher()
    hasher.update(b"abc")
    first = hasher.digests()
    assert hasher.digests() == first == expected(b"abc")
    with pytest.raises(ValueError, match="after digests"):
        hasher.update(b"more")


@pytest.mark.parametrize("parallel", [True, False])
def test_hash_file_reports_progress_and_leaves_no_thread(tmp_path: Path, parallel: bool):
    data = os.urandom(2 * 1024 * 1024 + 123)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    steps: list[int] = []
    before = len(md5_threads())
    assert hash_file(path, on_progress=steps.append, chunk_size=512 * 1024, parallel=parallel) == expected(data)
    assert sum(steps) == len(data) and len(steps) == 5
    assert len(md5_threads()) == before


def test_hash_file_closes_the_helper_when_reading_fails(tmp_path: Path):
    before = len(md5_threads())
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing.iso")
    assert len(md5_threads()) == before


def test_write_behind_writes_everything_and_hands_each_step_to_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(jobs, "WRITE_BEHIND_STEP", 10_000)
    monkeypatch.setattr(jobs.os, "posix_fadvise", spy)
    data = os.urandom(35_000)
    with open(tmp_path / "out", "wb") as stream:
        writer = jobs._WriteBehind(stream)
        for start in range(0, len(data), 4_000):
            assert writer.write(data[start : start + 4_000]) == len(data[start : start + 4_000])
    assert (tmp_path / "out").read_bytes() == data
    # Handed over once 10,000 more bytes are written: after 12,000, 24,000 and 35,000 (the last, short write).
    assert calls == [(0, 0, os.POSIX_FADV_DONTNEED)] * 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("jobs_option", "files", "cpus", "parallel"),
    [(1, 3, 2, True), (2, 3, 2, False), (2, 1, 2, True), (2, 3, 4, True)],
)
def test_register_isos_gives_md5_a_helper_thread_only_when_cpus_are_left_over(
    iso_dirs, monkeypatch: pytest.MonkeyPatch, jobs_option: int, files: int, cpus: int, parallel: bool
):
    from isos.management.commands import register_isos

    for n in range(files):
        make_iso(iso_dirs.extra_root / f"{n}.iso", label=f"DISC{n}")
    seen: list[bool] = []
    real = register_isos.hash_file

    def spy(path: Path, **options: object) -> Digests:
        seen.append(bool(options["parallel"]))
        return real(path, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(register_isos, "hash_file", spy)
    monkeypatch.setattr(register_isos.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    call_command("register_isos", str(iso_dirs.extra_root), "--jobs", str(jobs_option), stdout=StringIO(), stderr=StringIO())
    assert seen == [parallel] * files


class SlowMd5:
    """md5 that blocks every update until `release` is set, recording how many pieces the hasher held then."""

    def __init__(self, release: threading.Event, hasher: list[hashing.PipelinedHasher]) -> None:
        self.release, self.hasher, self.inner = release, hasher, hashlib.md5()
        self.held: list[int] = []

    def update(self, chunk: bytes) -> None:
        self.held.append(max(len(lane.pending) for lane in self.hasher[0]._lanes))
        self.release.wait(timeout=10)
        self.inner.update(chunk)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


def test_the_pipelined_hasher_gives_hashlibs_digests_and_can_be_continued():
    hasher = hashing.PipelinedHasher(depth=2)
    for chunk in CHUNKS[:3]:
        hasher.update(chunk)
    md5, sha256 = hasher.state()  # every piece hashed; the same hasher goes on (the next chunk of an upload)
    assert md5.hexdigest() == hashlib.md5(b"".join(CHUNKS[:3])).hexdigest()
    for chunk in CHUNKS[3:]:
        hasher.update(chunk)
    assert hasher.digests() == expected(b"".join(CHUNKS))
    assert hasher.fed == len(b"".join(CHUNKS))


def test_the_pipelined_hasher_holds_at_most_depth_pieces_and_keeps_their_order():
    release, box = threading.Event(), list[hashing.PipelinedHasher]()
    slow = SlowMd5(release, box)
    hasher = hashing.PipelinedHasher(depth=3, start=(slow, hashlib.sha256()))  # type: ignore[arg-type]
    box.append(hasher)
    chunks = [bytes([n]) * 70_000 for n in range(12)]

    def feed() -> None:
        for chunk in chunks:
            hasher.update(chunk)

    feeder = threading.Thread(target=feed)
    feeder.start()
    for _ in range(1000):  # until the feeder has queued what it may (it cannot get further while md5 is held)
        if hasher.fed >= 3 * 70_000:
            break
        threading.Event().wait(0.01)
    feeder.join(timeout=0.2)
    assert feeder.is_alive() and hasher.fed == 3 * 70_000  # md5 is held: update() waits instead of queueing more
    release.set()
    feeder.join(timeout=10)
    assert hasher.digests() == expected(b"".join(chunks))
    assert max(slow.held) <= 3


def test_the_pipelined_hasher_reports_a_failing_hash_and_never_blocks():
    class Broken:
        def update(self, chunk: bytes) -> None:
            raise RuntimeError("md5 broke")

    hasher = hashing.PipelinedHasher(depth=1, start=(Broken(), hashlib.sha256()))  # type: ignore[arg-type]
    for chunk in CHUNKS:
        hasher.update(chunk)
    with pytest.raises(RuntimeError, match="md5 broke"):
        hasher.state()


def test_the_pipelined_hasher_works_in_a_child_forked_after_the_parent_used_it():
    hasher = hashing.PipelinedHasher()
    hasher.update(CHUNKS[2])
    assert hasher.digests() == expected(CHUNKS[2])  # the parent's pool has threads now
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and exits at once
        try:
            in_child = hashing.PipelinedHasher()
            for chunk in CHUNKS:
                in_child.update(chunk)
            ok = in_child.digests() == expected(b"".join(CHUNKS))
            os.write(write_end, b"ok" if ok else b"wrong")
        finally:
            os._exit(0)
    os.close(write_end)
    for _ in range(3000):  # a child whose pool waits for threads it never had hangs: give it 30 s, then fail
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.01)
    else:
        os.kill(child, 9)
        os.waitpid(child, 0)
        pytest.fail("the forked child's hasher never finished")
    with os.fdopen(read_end, "rb") as reader:
        assert (reader.read(), status) == (b"ok", 0)
