"""Benchmarks of the ISO library: hashing, parallel registration, download, list endpoint.

These are measurements, not tests: nothing here fails because something is
slow. They back the design claims made elsewhere (isos/hashing.py: md5 on a
helper thread while sha256 runs on the caller costs about as much as md5
alone; register_isos --jobs: several files at once use the other cores; the
list endpoint: a fixed number of queries however many ISOs), and they show
the cost of hashing while downloading.

Absolute rates on a shared VM drift from run to run, so each part compares
variants measured in the same run, interleaved round-robin (variant A, B, C,
then A, B, C again) so that drift hits every variant alike; the figure
reported is the median of the repeats.

Run:  cd /work/main && .venv/bin/python -m bench.isos_bench [--write]
--write refreshes docs/BENCHMARKS.md with this run's figures.
"""

from __future__ import annotations

import functools
import hashlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench.common import MB, MIB, PROJECT_ROOT, REPORT_PATH, Measure, Run, Section, machine_facts, require, say
from bench.isos_list import bench_list
from isos.download import FetchPolicy, fetch
from isos.hashing import CHUNK_SIZE, Digests, DualHasher, hash_file

PROBE_MIB = 32
# The report head's second line: what the figures may be compared with.
CAVEAT = "pass/fail tests. Compare the ratios within one run: absolute rates on a shared VM drift between runs."


# ---------------------------------------------------------------------------
# Rounds and the CPU probe


@functools.cache
def probe_buffers() -> tuple[bytes, bytes]:
    block = os.urandom(MIB)
    return block * PROBE_MIB, bytes(reversed(block)) * PROBE_MIB


def cpu_probe() -> float:
    """How many CPUs two busy threads get right now: 2 x (time of one md5) / (time of two md5s on two threads).

    This VM's second vCPU comes and goes (the host lends it elsewhere; /proc/stat shows no steal when it
    does), and every two-thread figure here depends on it, so each round records it next to its timings.
    """
    first, second = probe_buffers()
    started = time.perf_counter()
    hashlib.md5(first, usedforsecurity=False).hexdigest()
    alone = time.perf_counter() - started
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe") as pool:
        started = time.perf_counter()
        both = [pool.submit(lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(), data) for data in (first, second)]
        for future in both:
            future.result()
        together = time.perf_counter() - started
    return 2 * alone / together


@dataclass
class Trial:
    """The measures of one part, plus the CPU probe taken after each round."""

    measures: dict[str, Measure]
    cpus: list[float]

    def cpu_finding(self) -> str:
        rounds = ", ".join(f"{c:.1f}" for c in self.cpus)
        median = statistics.median(self.cpus)
        caveat = " A two-thread speedup needs a second CPU: read the ratios with that in mind." if median < 1.5 else ""
        return f"CPUs available to two threads (probe after each round): {rounds}; median {median:.1f}.{caveat}"


def measure_round_robin(variants: dict[str, Callable[[], object]], repeats: int, nbytes: int = 0) -> Trial:
    """Time each variant `repeats` times, interleaved, so slow drift of the machine spreads over all of them."""
    trial = Trial({label: Measure(label, [], nbytes) for label in variants}, [])
    for round_number in range(1, repeats + 1):
        for label, run in variants.items():
            started = time.perf_counter()
            run()
            elapsed = time.perf_counter() - started
            trial.measures[label].samples.append(elapsed)
            say(f"  round {round_number}: {label}: {elapsed:.3f} s" + (f" ({nbytes / elapsed / MB:.0f} MB/s)" if nbytes else ""))
        trial.cpus.append(cpu_probe())
        say(f"  round {round_number}: CPU probe: {trial.cpus[-1]:.2f} CPUs")
    return trial


def rate_row(measure: Measure) -> list[str]:
    return [measure.label, f"{measure.median:.3f}", f"{measure.rate:,.0f}", measure.runs()]


# ---------------------------------------------------------------------------
# Files and hashing


def write_file(path: Path, size: int) -> None:
    """`size` bytes of one random MiB repeated: incompressible enough for hashing and sockets, quick to make."""
    block = os.urandom(MIB)
    with open(path, "wb") as stream:
        for _ in range(size // MIB):
            stream.write(block)
        stream.write(block[: size % MIB])


def read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            yield chunk


class OneThreadHasher:
    """md5 then sha256 on the same thread for every chunk: the obvious way, and the baseline DualHasher must beat."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self._md5.update(chunk)
        self._sha256.update(chunk)

    def digests(self) -> Digests:
        return Digests(md5=self._md5.hexdigest(), sha256=self._sha256.hexdigest())


def hash_one_thread(path: Path) -> Digests:
    hasher = OneThreadHasher()
    for chunk in read_chunks(path):
        hasher.update(chunk)
    return hasher.digests()


def hash_alone(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    for chunk in read_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def bench_hashing(workdir: Path, size: int, repeats: int) -> tuple[Section, Path, Digests]:
    path = workdir / "one.iso"
    say(f"part 1: writing {size // MIB} MiB to {path}")
    write_file(path, size)
    # An untimed pass warms the page cache and gives the digests every variant must reproduce.
    expected = hash_one_thread(path)

    def dual() -> None:
        require(hash_file(path) == expected, "hash_file returned different digests than hashlib")

    def md5_alone() -> None:
        require(hash_alone(path, "md5") == expected.md5, "md5 mismatch")

    def sha256_alone() -> None:
        require(hash_alone(path, "sha256") == expected.sha256, "sha256 mismatch")

    trial = measure_round_robin(
        {
            "(a) md5 then sha256, one thread": lambda: require(hash_one_thread(path) == expected, "one-thread digests changed"),
            "(b) hash_file (DualHasher: md5 helper thread + sha256 caller)": dual,
            "(c) md5 alone": md5_alone,
            "(d) sha256 alone": sha256_alone,
        },
        repeats,
        size,
    )
    one, two, md5, sha = trial.measures.values()
    section = Section(
        title="1. Hashing one file (md5 + sha256)",
        intro=(
            f"One {size // MIB} MiB file read in {CHUNK_SIZE // MIB} MiB chunks from the page cache (written just before, "
            "so the disk is not measured). Every variant's digests are checked against a first, untimed pass."
        ),
        header=["variant", "median s", "MB/s", "runs (s)"],
        rows=[rate_row(m) for m in trial.measures.values()],
    )
    ideal = min(md5.rate, sha.rate)
    section.findings = [
        f"**hash_file over one thread: {two.rate / one.rate:.2f}x** ({two.rate:,.0f} vs {one.rate:,.0f} MB/s).",
        f"Two threads can at best run at the slower hash alone ({ideal:,.0f} MB/s); hash_file reaches {two.rate / ideal:.0%} of that.",
        f"One thread costs the sum of both hash times: predicted {1 / (1 / md5.rate + 1 / sha.rate):,.0f} MB/s, measured {one.rate:,.0f}.",
        trial.cpu_finding(),
    ]
    return section, path, expected


def bench_jobs(workdir: Path, size: int, repeats: int) -> Section:
    """What `register_isos --jobs N` does: N pool threads, each calling hash_file (itself two threads)."""
    count = 4
    each = size // count
    paths = [workdir / f"multi-{n}.iso" for n in range(count)]
    say(f"part 2: writing {count} files of {each // MIB} MiB")
    for path in paths:
        write_file(path, each)
    expected = [hash_file(path) for path in paths]  # untimed: warms the cache, fixes the answers

    def pool_of(jobs: int) -> Callable[[], None]:
        def run() -> None:
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="hash") as pool:
                require(list(pool.map(hash_file, paths)) == expected, f"jobs={jobs} returned different digests")

        return run

    try:
        trial = measure_round_robin({"jobs=1": pool_of(1), "jobs=2": pool_of(2)}, repeats, each * count)
    finally:
        for path in paths:
            path.unlink()
    one, two = trial.measures.values()
    cores = len(os.sched_getaffinity(0))
    return Section(
        title="2. register_isos --jobs (files hashed in parallel)",
        intro=(
            f"{count} files of {each // MIB} MiB hashed by a ThreadPoolExecutor whose workers each call hash_file, as "
            f"`manage.py register_isos --jobs N` does. Rates are over all {count * each // MIB} MiB."
        ),
        header=["jobs", "median s", "total MB/s", "runs (s)"],
        rows=[rate_row(m) for m in trial.measures.values()],
        findings=[
            f"**jobs=2 over jobs=1: {two.rate / one.rate:.2f}x** on {cores} CPU(s). With one job, sha256 finishes "
            "each chunk early and waits for md5, so a second job fills that idle time (and any further core).",
            trial.cpu_finding(),
        ],
    )


# ---------------------------------------------------------------------------
# Download over loopback


class FileHandler(SimpleHTTPRequestHandler):
    """Serves the temp directory. The body goes out with sendfile(2), so the server thread uses almost no
    CPU and no GIL: what is measured is the client (fetch, callbacks, writing, fsync), not http.server."""

    def copyfile(self, source: Any, outputfile: Any) -> None:
        self.connection.sendfile(source)

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request on stderr would drown the progress lines."""


def ignore_chunk(chunk: bytes) -> None:
    """on_chunk for the no-hashing variant."""


def ignore_progress(done: int, total: int | None) -> None:
    """on_progress: the real task writes progress to the database a few times a second; not measured here."""


def download(url: str, dest_path: Path, on_chunk: Callable[[bytes], None], size: int) -> None:
    """What the download task does with the bytes: write to its temp file, feed the hasher, fsync at the end."""
    policy = FetchPolicy(allow_private=True, max_bytes=size, connect_timeout=5.0, read_timeout=30.0)
    try:
        with open(dest_path, "wb") as dest:
            result = fetch(url, dest, policy=policy, on_chunk=on_chunk, on_progress=ignore_progress)
            dest.flush()
            os.fsync(dest.fileno())
        require(result.bytes_written == size, f"downloaded {result.bytes_written} bytes, expected {size}")
    finally:
        dest_path.unlink(missing_ok=True)


def bench_download(source: Path, size: int, expected: Digests, repeats: int) -> Section:
    handler = functools.partial(FileHandler, directory=str(source.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="bench-http", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{source.name}"
    dest = source.parent / "download.part"
    say(f"part 3: downloading {url}")

    def plain() -> None:
        download(url, dest, ignore_chunk, size)

    def dual() -> None:
        with DualHasher() as hasher:
            download(url, dest, hasher.update, size)
            require(hasher.digests() == expected, "DualHasher digests of the download are wrong")

    def one_thread() -> None:
        hasher = OneThreadHasher()
        download(url, dest, hasher.update, size)
        require(hasher.digests() == expected, "one-thread digests of the download are wrong")

    try:
        trial = measure_round_robin(
            {
                "(a) on_chunk no-op": plain,
                "(b) on_chunk=DualHasher.update": dual,
                "(c) on_chunk=md5+sha256 in one thread (for comparison)": one_thread,
            },
            repeats,
            size,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    plain_m, dual_m, one_m = trial.measures.values()
    return Section(
        title="3. Download over loopback (isos.download.fetch)",
        intro=(
            f"A {size // MIB} MiB file served by http.server (ThreadingHTTPServer on 127.0.0.1, body sent with sendfile) "
            "in the same process; fetch() writes it to a temp file, calls on_chunk per chunk, then the file is fsynced. "
            "Times include the fsync, so the disk's write speed is part of every figure."
        ),
        header=["on_chunk", "median s", "MB/s", "runs (s)"],
        rows=[rate_row(m) for m in trial.measures.values()],
        findings=[
            f"**Hashing with DualHasher keeps {dual_m.rate / plain_m.rate:.0%} of the no-hash rate**; "
            f"hashing in one thread keeps {one_m.rate / plain_m.rate:.0%}.",
            f"DualHasher over one-thread hashing while downloading: {dual_m.rate / one_m.rate:.2f}x.",
            trial.cpu_finding(),
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    run = Run("isos_bench", "ISO library", CAVEAT, argv)
    parser = run.parser(__doc__)
    parser.add_argument("--write", action="store_true", help=f"write the report to {REPORT_PATH.relative_to(PROJECT_ROOT)}")
    parser.add_argument("--size-mib", type=int, default=512, help="file size for parts 1 and 3; part 2 uses 4 files of a quarter each")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant in parts 1-3 (median reported)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per list size in part 4")
    parser.add_argument("--tmpdir", type=Path, default=None, help="parent of the temp directory (default: the system's)")
    args = parser.parse_args(argv)
    if args.size_mib < 4 or args.repeats < 1 or args.requests < 1:
        parser.error("--size-mib must be at least 4, --repeats and --requests at least 1")

    size = args.size_mib * MIB
    with TemporaryDirectory(prefix="vapor-bench-", dir=args.tmpdir) as tmp:
        workdir = Path(tmp)
        hashing, iso_file, digests = bench_hashing(workdir, size, args.repeats)
        sections = [hashing, bench_jobs(workdir, size, args.repeats), bench_download(iso_file, size, digests, args.repeats)]
        iso_file.unlink()
        sections.append(bench_list(workdir, args.requests, (10, 1000)))
        facts = machine_facts(workdir)
    method = (
        f"parts 1-3 run each variant {args.repeats}x, interleaved round-robin, and report the median;"
        " MB/s is 10^6 bytes per second. Files live in a temp directory removed at the end."
    )
    run.publish(run.render(method, facts, sections), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
