"""Issue 5, faults injected: downloads that go wrong, through the real job against real loopback servers.

Each case queues a download with `iso_create_download`, then (in one of the
two runs of each case) puts a file with known bytes at the ISO's final path,
as if it appeared on the host while the download was queued (the request
itself refuses a name that is taken), then runs `iso_run_download` against a
raw socket server that misbehaves on cue. Promised: the ISO is `failed` with a
reason naming the cause, no temp file is left (the job cleans up; the janitor
finds nothing), the file at the final path is byte-identical (or, when the
path was free, nothing appears there), transient faults are retried up to
VAPOR_DOWNLOAD_ATTEMPTS (requests counted at the server) and a checksum
mismatch or a full disk is not retried.

Issue 11 adds the slow servers: one that trickles a byte at a time under the
read timeout (stopped by VAPOR_DOWNLOAD_MIN_RATE), one that keeps a rate but
never ends (VAPOR_DOWNLOAD_DEADLINE), and a cancel while the server is silent
for 50 s, which frees the worker within 2 s. None of them is retried.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from isos import jobs
from isos.models import IsoImage
from isos.services import IsoMetadata, iso_cancel, iso_cleanup, iso_create_download, temp_path
from tests.support.isos import make_iso
from tests.support.servers import LoopbackServer, Respond, loopback_servers

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "faults: download"
PREVIOUS = b"the file that was here before the download\n" * 100
ATTEMPTS = 3


def head(length: int) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()


@pytest.fixture
def serve() -> Iterator[Callable[[Respond], LoopbackServer]]:
    yield from loopback_servers()


@pytest.fixture
def iso_bytes(tmp_path: Path) -> bytes:
    """A real ISO of a few MiB: a fault the job missed would make it `ready`, so every case can fail."""
    return make_iso(tmp_path / "src.iso", label="FAULTS", boot="bios", size_padding=3 * 1024 * 1024).read_bytes()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: the disk that fills up."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@dataclasses.dataclass
class Outcome:
    iso: IsoImage
    requests: int
    leftovers: int
    what_left: list[str]
    previous: bool


def run_case(server: LoopbackServer, name: str, *, checksum: str = "", previous: bool = True) -> Outcome:
    """Queue, put the previous file in place (unless not `previous`), run the job; then count what is not as promised."""
    iso = iso_create_download(url=server.url(f"faults/{name}"), meta=IsoMetadata(), checksum=checksum)
    final = Path(iso.path)
    if previous:
        final.write_bytes(PREVIOUS)
    jobs.iso_run_download(iso_id=iso.pk, sleep=lambda seconds: None)
    iso.refresh_from_db()
    left: list[str] = []
    if temp_path(iso).exists():
        left.append(f"temp file {temp_path(iso).name}")
    left += [f"partial file {p.name}" for p in final.parent.iterdir() if p != final and p != temp_path(iso)]
    _stale, orphans = iso_cleanup(stale_after=timedelta(minutes=30))
    left += [f"orphan for the janitor {p.name}" for p in orphans]
    if previous and (not final.exists() or final.read_bytes() != PREVIOUS):
        left.append("final file replaced")
    if not previous and final.exists():
        left.append("a bad download put in place at the final path")
    if iso.status != "failed":
        left.append(f"ISO row {iso.status}, not failed")
    return Outcome(iso, server.requests, len(left), left, previous)


def check(tally, case: str, outcome: Outcome, *, reason: str, requests: int) -> None:
    """Record the case, then assert what was recorded."""
    named = reason in outcome.iso.error
    survived = outcome.iso.status == "failed" and named and outcome.requests == requests
    detail = f"error: {outcome.iso.error!r}; {outcome.requests} request(s)" + (
        f"; left: {', '.join(outcome.what_left)}" if outcome.what_left else ""
    )
    case += ", a file already at the final path" if outcome.previous else ", final path free"
    tally.record(SUITE, case, refused=survived, leftovers=outcome.leftovers, detail=detail)
    assert outcome.iso.status == "failed", detail
    assert named, detail
    assert outcome.requests == requests, detail
    assert outcome.what_left == [], detail


@pytest.fixture(params=[True, False], ids=["final-path-taken", "final-path-free"])
def previous(request: pytest.FixtureRequest) -> bool:
    """Whether a file with known bytes sits at the final path when the job runs (it must stay byte-identical);
    with the path free, no file may appear there."""
    return bool(request.param)


@pytest.fixture
def retrying(iso_dirs, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_attempts=ATTEMPTS)
    return iso_dirs


# --- connection cut -------------------------------------------------------------


@pytest.mark.parametrize("percent", [0, 50, 99])
def test_connection_cut_part_way_through_the_body(retrying, serve, iso_bytes, tally, percent, previous):
    cut = len(iso_bytes) * percent // 100

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(len(iso_bytes)) + iso_bytes[:cut])

    outcome = run_case(serve(respond), f"cut-{percent}.iso", previous=previous)
    check(
        tally,
        f"connection cut at {percent} % of the body ({cut} of {len(iso_bytes)} bytes), {ATTEMPTS} attempts",
        outcome,
        reason=f"was cut after {cut if percent == 0 else ''}",
        requests=ATTEMPTS,
    )
    assert f"of {len(iso_bytes)} bytes" in outcome.iso.error and f"(after {ATTEMPTS} attempts)" in outcome.iso.error


def test_connection_closed_before_the_status_line(retrying, serve, tally, previous):
    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        pass  # read the request, answer nothing, close

    outcome = run_case(serve(respond), "silent-close.iso", previous=previous)
    check(
        tally,
        f"connection closed before any answer, {ATTEMPTS} attempts",
        outcome,
        reason="failed before an answer came",
        requests=ATTEMPTS,
    )


def test_a_cut_that_heals_is_retried_and_the_download_completes(retrying, serve, iso_bytes, tally):
    """The other side of "retried up to the attempts": a transient cut followed by a good answer succeeds."""

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(len(iso_bytes)) + (iso_bytes[: len(iso_bytes) // 2] if number == 1 else iso_bytes))

    server = serve(respond)
    iso = iso_create_download(url=server.url("heals.iso"), meta=IsoMetadata())
    jobs.iso_run_download(iso_id=iso.pk, sleep=lambda seconds: None)
    iso.refresh_from_db()
    final = Path(iso.path)
    left = [p.name for p in final.parent.iterdir() if p != final]
    ok = iso.status == "ready" and server.requests == 2 and final.read_bytes() == iso_bytes
    tally.record(
        SUITE,
        "connection cut at 50 % once, then a whole answer",
        refused=ok,
        leftovers=len(left),
        detail=f"{iso.status}; {server.requests} requests",
    )
    assert iso.status == "ready", iso.error
    assert server.requests == 2 and final.read_bytes() == iso_bytes
    assert left == []


# --- wrong Content-Length -----------------------------------------------------------


def test_content_length_longer_than_the_body(retrying, serve, iso_bytes, tally, previous):
    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(len(iso_bytes) + 4096) + iso_bytes)

    outcome = run_case(serve(respond), "long-length.iso", previous=previous)
    check(
        tally,
        "Content-Length 4 KiB longer than the body",
        outcome,
        reason=f"was cut after {len(iso_bytes)} of {len(iso_bytes) + 4096} bytes",
        requests=ATTEMPTS,
    )


def test_content_length_shorter_than_the_body_with_a_checksum(retrying, serve, iso_bytes, tally, previous):
    """The client reads the announced length; the checksum shows it is not the file (and is not retried)."""

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(len(iso_bytes) - 4096) + iso_bytes)

    checksum = "sha256:" + hashlib.sha256(iso_bytes).hexdigest()
    outcome = run_case(serve(respond), "short-length.iso", checksum=checksum, previous=previous)
    check(tally, "Content-Length 4 KiB shorter than the body, checksum given", outcome, reason="checksum mismatch", requests=1)


def test_content_length_shorter_than_the_iso_without_a_checksum(retrying, serve, tmp_path, tally, previous):
    """The body ends cleanly at the announced length; the ISO's own volume size shows the file is cut short.
    (Found by this suite: before, with the final path free, the cut file became a `ready` ISO.)"""
    whole = make_iso(tmp_path / "plain.iso", label="PLAIN", boot="bios").read_bytes()  # no padding: the cut hits the filesystem

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(len(whole) - 4096) + whole)

    outcome = run_case(serve(respond), "short-no-checksum.iso", previous=previous)
    check(
        tally,
        "Content-Length 4 KiB shorter than the ISO, no checksum",
        outcome,
        reason=f"truncated: {len(whole) - 4096} bytes, but the ISO's volume descriptor says {len(whole)}",
        requests=1,
    )


def test_content_length_shorter_than_the_volume_descriptors(retrying, serve, iso_bytes, tally, previous):
    """Without a checksum, an announced length that cuts the ISO's descriptors leaves no ISO: refused as such."""

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(16 * 1024) + iso_bytes)

    outcome = run_case(serve(respond), "tiny-length.iso", previous=previous)
    check(tally, "Content-Length 16 KiB for a 3 MiB body, no checksum", outcome, reason="not an ISO image", requests=1)


# --- checksum mismatch ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_checksum_mismatch_is_not_retried(retrying, serve, iso_bytes, tally, algorithm, previous):
    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(len(iso_bytes)) + iso_bytes)

    wrong = f"{algorithm}:" + "0" * (64 if algorithm == "sha256" else 32)
    outcome = run_case(serve(respond), f"mismatch-{algorithm}.iso", checksum=wrong, previous=previous)
    check(
        tally,
        f"{algorithm} checksum mismatch, {ATTEMPTS} attempts allowed",
        outcome,
        reason=f"checksum mismatch: expected {wrong}",
        requests=1,
    )


# --- disk full ------------------------------------------------------------------------


def test_disk_full(retrying, settings, tmpfs, serve, tmp_path, tally, previous):
    big = make_iso(tmp_path / "big.iso", label="BIG", size_padding=12 * 1024 * 1024).read_bytes()
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_dir=tmpfs)

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(len(big)) + big)

    outcome = run_case(serve(respond), "disk-full.iso", previous=previous)
    check(tally, f"disk full: {len(big) // 2**20} MiB into an 8 MiB tmpfs", outcome, reason="No space left on device", requests=1)
    assert str(tmpfs) in outcome.iso.error  # names where it could not write


# --- server stalls --------------------------------------------------------------------


def test_server_stalls_mid_body_past_the_read_timeout(retrying, settings, serve, iso_bytes, tally, previous):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_read_timeout=0.3, download_attempts=2)

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(len(iso_bytes)) + iso_bytes[: len(iso_bytes) // 2])
        stop.wait(5)  # silent, connection open, until the test ends

    outcome = run_case(serve(respond), "stall-body.iso", previous=previous)
    check(
        tally,
        "server stalls mid-body past a 0.3 s read timeout, 2 attempts",
        outcome,
        reason="sent nothing for 0.3 seconds after",
        requests=2,
    )


def test_server_stalls_before_answering(retrying, settings, serve, tally, previous):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_read_timeout=0.3, download_attempts=2)

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        stop.wait(5)

    outcome = run_case(serve(respond), "stall-head.iso", previous=previous)
    check(
        tally,
        "server accepts and never answers, 0.3 s read timeout, 2 attempts",
        outcome,
        reason="did not answer within 0.3 seconds",
        requests=2,
    )


# --- the final path taken during a good download ----------------------------------------


def test_a_good_download_does_not_replace_a_file_that_appeared_at_the_final_path(retrying, serve, iso_bytes, tally):
    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(len(iso_bytes)) + iso_bytes)

    outcome = run_case(serve(respond), "taken.iso")
    check(
        tally,
        "download completes but the final path was taken meanwhile",
        outcome,
        reason="appeared on the host during the download; not overwritten",
        requests=1,
    )


# --- slow servers: the minimum rate, the deadline, a cancel (issue 11) -------------------------------------------------


def test_server_trickles_under_the_read_timeout(retrying, settings, serve, tally, previous):
    """One byte every 0.1 s resets a 5 s read timeout for ever; the minimum rate (tiny here) stops it, once."""
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_read_timeout=5, download_min_rate=100, download_rate_window=0.5)

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(40))
        for _ in range(40):  # 4 s: without the minimum rate, the body would end (and not be an ISO)
            conn.sendall(b"x")
            if stop.wait(0.1):
                return

    outcome = run_case(serve(respond), "trickle.iso", previous=previous)
    check(
        tally,
        "server trickles 1 byte every 0.1 s (a 5 s read timeout never trips), minimum rate 100 bytes/s over 0.5 s",
        outcome,
        reason="slower than the minimum of 100 bytes/s (VAPOR_DOWNLOAD_MIN_RATE)",
        requests=1,
    )


def test_server_keeps_a_rate_past_the_deadline(retrying, settings, serve, tally, previous):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_deadline=0.5, download_min_rate=1, download_rate_window=0.2)

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(15000))
        for _ in range(150):  # 3 s: without the deadline, the body would end (and not be an ISO)
            if stop.wait(0.02):
                return
            conn.sendall(b"x" * 100)

    outcome = run_case(serve(respond), "endless.iso", previous=previous)
    check(
        tally,
        "server sends 5 KB/s of a 15 KB body (3 s), deadline 0.5 s",
        outcome,
        reason="did not finish within its deadline of 0.5 s (VAPOR_DOWNLOAD_DEADLINE)",
        requests=1,
    )


def test_cancel_while_the_server_sends_one_byte_every_50_s(retrying, settings, serve, tally, monkeypatch):
    """The operator cancels while the server is silent between two bytes 50 s apart: the worker is free within 2 s."""
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_min_rate=0, download_read_timeout=60)

    def respond(conn: socket.socket, number: int, stop: threading.Event) -> None:
        conn.sendall(head(1000) + b"x")
        while not stop.wait(50):
            conn.sendall(b"x")

    server = serve(respond)
    iso = iso_create_download(url=server.url("faults/cancel.iso"), meta=IsoMetadata())
    original = jobs._Progress.__call__
    pressed: list[float] = []

    def press_cancel_once_silent(self, done, total, *, force=False):
        if not pressed and done >= 1 and time.monotonic() - self.last >= jobs.PROGRESS_INTERVAL:
            iso_cancel(iso=IsoImage.objects.get(pk=self.iso_id))
            pressed.append(time.monotonic())
            return
        original(self, done, total, force=force)

    monkeypatch.setattr(jobs._Progress, "__call__", press_cancel_once_silent)
    jobs.iso_run_download(iso_id=iso.pk, sleep=lambda seconds: None)
    took = time.monotonic() - pressed[0]
    iso.refresh_from_db()
    left = [p.name for p in Path(iso.path).parent.iterdir()]
    _stale, orphans = iso_cleanup(stale_after=timedelta(minutes=30))
    ok = iso.status == "cancelled" and took < 2.0 and server.requests == 1
    tally.record(
        SUITE,
        "cancel while the server sends 1 byte every 50 s (read timeout 60 s)",
        refused=ok,
        leftovers=len(left) + len(orphans),
        detail=f"{iso.status}; the worker stopped {took:.2f} s after the cancel; {server.requests} request(s)",
    )
    assert iso.status == "cancelled" and server.requests == 1
    assert took < 2.0, took
    assert left == [] and orphans == []
