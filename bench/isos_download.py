"""Target 2 of bench.isos_bench: downloading an ISO from a loopback HTTP server, against `curl -o`.

Vapor's side is the download job itself (`isos.jobs.iso_run_download` on a row made by
`isos.services.iso_create_download`): fetch, md5 + sha256 of the stream, fsync, inspection, hard link into
place and the row's updates. curl's side is `curl -o FILE URL` as a user types it, which leaves the data in
the page cache: the issue compares the two like that, so Vapor's fsync is part of its cost. A third variant,
curl followed by an fsync of its file, shows how much of the gap the disk flush alone explains.

The server runs in its own process (`python -m bench.isos_download DIR` prints its port) and sends the body
with sendfile(2), so it needs almost no CPU and shares no GIL with the client being measured.
"""

from __future__ import annotations

import functools
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import GIB, MIB, PROJECT_ROOT, Section, Target, require, say
from bench.isos_support import Workspace, cores, rate, run_pairs, timed, warm, write_iso

TICKS = os.sysconf("SC_CLK_TCK")


class SendfileHandler(SimpleHTTPRequestHandler):
    """http.server's file handler with the body sent by sendfile(2): the kernel copies, Python waits."""

    def copyfile(self, source: Any, outputfile: Any) -> None:
        self.connection.sendfile(source)

    def log_message(self, format: str, *args: Any) -> None:
        """No line per request."""


def serve(directory: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SendfileHandler, directory=directory))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


@dataclass(frozen=True)
class Server:
    url: str  # base URL, no trailing slash
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


@contextmanager
def loopback_server(directory: Path) -> Iterator[Server]:
    """A server for `directory` in a child process, stopped on the way out."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.isos_download", str(directory)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        port = child.stdout.readline().strip()
        require(port.isdigit(), "the loopback server did not start")
        yield Server(f"http://127.0.0.1:{port}", child.pid)
    finally:
        child.terminate()
        child.wait(timeout=10)


def cpu_of(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Variant:
    """One way of downloading the file: wall time, the client's CPU time and the server's, per run."""

    label: str
    seconds: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)

    def measure(self, server: Server, who: int, run: Callable[[], object]) -> float:
        client, served = cpu_of(who), server.cpu_seconds()
        seconds = timed(run)
        self.client_cpu.append(cpu_of(who) - client)
        self.server_cpu.append(server.cpu_seconds() - served)
        self.seconds.append(seconds)
        return seconds

    def row(self, size: int) -> list[str]:
        per_gib = GIB / size
        return [
            self.label,
            f"{rate(size, statistics.median(self.seconds)):,.0f}",
            f"{statistics.median(self.client_cpu) * per_gib:.2f}",
            f"{statistics.median(self.server_cpu) * per_gib:.2f}",
            ", ".join(f"{rate(size, s):,.0f}" for s in self.seconds),
        ]


def digests_of(path: Path) -> tuple[str, str]:
    """md5 and sha256 with hashlib on one thread: the answer every download must reproduce, found without Vapor."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(MIB):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def flush_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def bench_download(space: Workspace, server: Server, size: int, pairs: int, hash_rates: dict[str, float]) -> tuple[Target, Section]:
    from isos import jobs
    from isos.models import IsoImage
    from isos.services import IsoMetadata, iso_create_download

    curl = shutil.which("curl")
    require(curl is not None, "curl is not installed (scripts/setup.sh installs it)")
    say(f"target 2: writing a {size // MIB} MiB ISO to serve")
    source = write_iso(space.served / "download.iso", size)
    warm(source)
    expected = digests_of(source)
    url = f"{server.url}/{source.name}"
    curl_out = space.downloads / "curl.out"
    plain, flushed, vapor = (
        Variant("`curl -o` (the baseline)"),
        Variant("`curl -o`, then fsync of its file"),
        Variant("Vapor's download job"),
    )

    def fetch_with_curl(variant: Variant, fsync: bool) -> float:
        def run() -> None:
            subprocess.run([str(curl), "--silent", "--show-error", "--fail", "--output", str(curl_out), url], check=True)
            if fsync:
                flush_file(curl_out)

        seconds = variant.measure(server, resource.RUSAGE_CHILDREN, run)
        require(curl_out.stat().st_size == size, "curl wrote the wrong number of bytes")
        curl_out.unlink()
        return seconds

    def baseline() -> float:
        return rate(size, fetch_with_curl(plain, fsync=False))

    def download() -> float:
        registered: list[str] = []

        def run() -> None:
            iso = iso_create_download(url=url, meta=IsoMetadata())
            jobs.iso_run_download(iso_id=iso.pk)
            registered.append(iso.pk)

        seconds = vapor.measure(server, resource.RUSAGE_SELF, run)
        iso = IsoImage.objects.get(pk=registered[0])
        require(iso.status == "ready", f"the download job ended {iso.status}: {iso.error}")
        require((iso.md5_hash, iso.sha256_hash) == expected, "the download job stored wrong digests")
        Path(iso.path).unlink()
        iso.delete()
        return rate(size, seconds)

    say(f"target 2: {url}, curl vs the download job")
    target = run_pairs(
        Target(
            2,
            f"Downloading a {size // MIB} MiB ISO from a loopback HTTP server with md5 + sha256 and fsync (the download job)",
            "`curl -o FILE URL` (no fsync)",
            "MB/s",
            0.80,
            higher_is_better=True,
        ),
        pairs,
        baseline,
        download,
        after=lambda: fetch_with_curl(flushed, fsync=True),
    )
    source.unlink()
    section = Section(
        title="2. Download over loopback: where the time goes",
        intro=(
            f"One {size // MIB} MiB ISO served from the page cache by http.server with sendfile(2), in a child process on "
            "127.0.0.1. Vapor: `iso_create_download`, then `iso_run_download` (urllib3, md5 + sha256, the file handed to the "
            "disk as it grows, fsync, inspection, link into place, row updates); every run's digests are checked. curl: "
            "`curl -o` as the issue asks (its data stays in the page cache), and after each pair `curl -o` then an fsync. "
            "CPU time is user + system of the client (curl's process; the whole benchmark process for Vapor, all threads) and "
            "of the server's process, per GiB."
        ),
        header=["variant", "median MB/s", "client CPU s/GiB", "server CPU s/GiB", "runs (MB/s)"],
        rows=[variant.row(size) for variant in (plain, flushed, vapor)],
        findings=download_findings(plain, flushed, vapor, size, hash_rates),
    )
    return target, section


def download_findings(plain: Variant, flushed: Variant, vapor: Variant, size: int, hash_rates: dict[str, float]) -> list[str]:
    def median_rate(variant: Variant) -> float:
        return rate(size, statistics.median(variant.seconds))

    curl_rate, flushed_rate, vapor_rate = median_rate(plain), median_rate(flushed), median_rate(vapor)
    per_gib = GIB / size
    vapor_cpu = (statistics.median(vapor.client_cpu) + statistics.median(vapor.server_cpu)) * per_gib
    md5_seconds = GIB / 1e6 / hash_rates["md5"]
    best = GIB / 1e6 / max(md5_seconds, vapor_cpu / cores())
    return [
        f"Vapor over `curl -o` then fsync: **{vapor_rate / flushed_rate:.2f}x**; the fsync alone takes curl from "
        f"{curl_rate:,.0f} to {flushed_rate:,.0f} MB/s.",
        f"md5 must see every byte in order on one thread: at {hash_rates['md5']:,.0f} MB/s (section 1) no download that "
        f"computes it can run faster. Vapor's run used {vapor_cpu:.2f} CPU s/GiB with the server's; on {cores()} CPUs that and "
        f"md5 bound the download to {best:,.0f} MB/s, **{best / curl_rate:.2f}x** this run's curl.",
    ]


if __name__ == "__main__":
    serve(sys.argv[1])
