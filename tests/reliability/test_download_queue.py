"""Issue 11: downloads run on a queue of their own, so hashing (and provisioning) never waits behind them.

Real `manage.py qcluster` processes on their own SQLite database, as scripts/run.sh starts them: the main
cluster and the downloads' cluster (Q_CLUSTER_NAME=vapor-downloads), two workers each. Two downloads from a
server that sends one byte every 50 s hold both workers of the downloads' cluster (no minimum rate here, a
60 s read timeout: they would stall for hours); an ISO registered by path meanwhile is hashed by the main
cluster and becomes `ready` while both downloads still run. With one queue for all, the two downloads held
both workers and the hashing waited for them. Then both downloads are cancelled, and their workers stop and
remove their partial files.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.reliability.portal import Backend
from tests.support.isos import make_iso
from tests.support.servers import LoopbackServer, Respond, loopback_servers

pytestmark = [pytest.mark.reliability]

SUITE = "faults: download"
WAIT = 60.0  # generous: two clusters starting on a loaded machine


@pytest.fixture
def serve() -> Iterator[Callable[[Respond], LoopbackServer]]:
    yield from loopback_servers()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[Backend, Path]]:
    iso_dir, data_dir, logs = tmp_path / "isos", tmp_path / "data", tmp_path / "logs"
    for directory in (iso_dir, data_dir, logs):
        directory.mkdir()
    backend = Backend(
        data_dir,
        iso_dir,
        logs,
        VAPOR_Q_WORKERS="2",
        VAPOR_DOWNLOAD_WORKERS="2",
        VAPOR_DOWNLOAD_ALLOW_PRIVATE="1",
        VAPOR_DOWNLOAD_MIN_RATE="0",
        VAPOR_DOWNLOAD_READ_TIMEOUT="60",
    )
    backend.migrate()
    try:
        yield backend, iso_dir
    finally:
        backend.stop_all()
        print(backend.cluster_logs())


def one_byte_every_50_s(conn: socket.socket, number: int, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nx")
    while not stop.wait(50):
        conn.sendall(b"x")


def test_hashing_is_done_while_two_stalled_downloads_hold_the_download_workers(backend, serve, tally):
    portal, iso_dir = backend
    server = serve(one_byte_every_50_s)
    out = portal.shell(
        "from isos.services import IsoMetadata, iso_create_download\n"
        f"for name in ('one.iso', 'two.iso'): print('ISO', iso_create_download(url={server.url('')!r} + name, meta=IsoMetadata()).pk)"
    )
    downloads = [line.split()[1] for line in out.splitlines() if line.startswith("ISO ")]

    def rows(*ids: str) -> list[tuple[str, int]]:
        marks = ",".join("?" * len(ids))
        return [(str(s), int(d)) for s, d in portal.query(f"SELECT status, bytes_done FROM isos_isoimage WHERE id IN ({marks})", *ids)]

    portal.start_cluster()
    portal.start_cluster(queue=settings.DOWNLOAD_QUEUE)
    portal.wait_for(lambda: rows(*downloads) == [("downloading", 1)] * 2, WAIT, "both downloads to have their first byte")

    path = make_iso(iso_dir / "local.iso")
    out = portal.shell(
        "from isos.services import IsoMetadata, iso_register_path\n"
        f"print('ISO', iso_register_path(path={str(path)!r}, meta=IsoMetadata()).pk)"
    )
    hashed = next(line.split()[1] for line in out.splitlines() if line.startswith("ISO "))
    portal.wait_for(lambda: rows(hashed)[0][0] != "hashing", WAIT, "the main cluster to hash the ISO")
    hashed_status, still = rows(hashed)[0][0], rows(*downloads)

    portal.shell(
        "from isos.models import IsoImage\nfrom isos.services import iso_cancel\n"
        f"for pk in {downloads!r}: iso_cancel(iso=IsoImage.objects.get(pk=pk))"
    )
    cancelled = time.monotonic()
    portal.wait_for(lambda: not list(iso_dir.glob(".*.part")), WAIT, "the download workers to stop and remove their partial files")
    took = time.monotonic() - cancelled
    final = rows(*downloads)

    ok = hashed_status == "ready" and still == [("downloading", 1)] * 2 and final == [("cancelled", 1)] * 2
    tally.record(
        SUITE,
        "two downloads at 1 byte per 50 s hold both download workers; an ISO registered meanwhile is hashed",
        refused=ok,
        leftovers=len(list(iso_dir.glob(".*.part"))),
        detail=f"hash {hashed_status} while the downloads were {still}; cancelled, part files gone {took:.1f} s later",
    )
    assert hashed_status == "ready"
    assert still == [("downloading", 1)] * 2  # the downloads were still running: the hash did not wait for them
    assert final == [("cancelled", 1)] * 2
    assert server.requests == 2
