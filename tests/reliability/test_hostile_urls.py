"""Hostile download URLs: every way to point the ISO downloader back inside our network.

The guard is proven at the socket level: `socket.socket.connect` (which urllib3 and
`socket.create_connection` both end in) records every attempt, and a TCP server on
loopback, the port most of the URLs name, counts the connections it accepted. Names are
answered by a fake resolver (`socket.getaddrinfo`, which `isos.download.resolve_host`
uses), so "a public-looking name" can resolve to anything.

A URL refused when it is submitted is a 400 on `url` with no ISO row; a redirect that
leads to a forbidden place (the first hop is an allow-listed mirror on 127.0.0.2) ends
the job `failed` with the reason. Either way: no connection anywhere but the mirror,
nothing accepted by the loopback server, no file in the download directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from isos.models import IsoImage
from tests.reliability.hostile import ISO_URL, error_field
from tests.support.servers import http_server_on_127_0_0_2

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "hostile URLs"
PUBLIC = "93.184.216.34"
FAKE_DNS = {
    "rebind.example": ["127.0.0.1"],
    "intranet.example": ["10.1.2.3"],
    "office.example": ["192.168.0.5"],
    "metadata.example": ["169.254.169.254"],
    "v6loopback.example": ["::1"],
    "ula.example": ["fd00::5"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "half.example": [PUBLIC, "172.16.0.9"],
    "cgnat.example": ["100.64.0.7"],
}


class CountingServer:
    """Listens on 127.0.0.1 and counts the connections it accepts (then closes them)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.listener.close()


@dataclasses.dataclass
class Wire:
    server: CountingServer
    attempts: list[Any]  # every address connect() was called with
    looked_up: list[str]


@pytest.fixture
def mirror() -> Iterator[HTTPServer]:
    yield from http_server_on_127_0_0_2()


@pytest.fixture
def wire(iso_dirs, settings, monkeypatch: pytest.MonkeyPatch, mirror: HTTPServer) -> Iterator[Wire]:
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_allow_private=False, download_allowed_networks=("127.0.0.2/32",))
    server = CountingServer()
    wire = Wire(server, [], [])
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        wire.attempts.append(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        wire.attempts.append(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        wire.looked_up.append(name)
        if name in FAKE_DNS:
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port or 0))
                for a in FAKE_DNS[name]
            ]
        try:
            ipaddress.ip_address(name)
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield wire
    server.stop()


def refused_urls(port: int) -> list[tuple[str, str]]:
    """(what, URL): each must be refused when submitted."""
    return [
        ("loopback", f"http://127.0.0.1:{port}/a.iso"),
        ("loopback elsewhere in 127/8", f"http://127.9.9.9:{port}/a.iso"),
        ("loopback https", f"https://127.0.0.1:{port}/a.iso"),
        ("localhost by name", f"http://localhost:{port}/a.iso"),
        ("IPv6 loopback ::1", f"http://[::1]:{port}/a.iso"),
        ("unspecified 0.0.0.0", f"http://0.0.0.0:{port}/a.iso"),
        ("unspecified ::", f"http://[::]:{port}/a.iso"),
        ("RFC 1918 10/8", f"http://10.0.0.1:{port}/a.iso"),
        ("RFC 1918 172.16/12", f"http://172.16.5.4:{port}/a.iso"),
        ("RFC 1918 192.168/16", f"http://192.168.1.1:{port}/a.iso"),
        ("link-local 169.254/16", f"http://169.254.1.1:{port}/a.iso"),
        ("IPv6 link-local fe80::/10", f"http://[fe80::1]:{port}/a.iso"),
        ("cloud metadata 169.254.169.254", "http://169.254.169.254/latest/meta-data/"),
        ("cloud metadata over IPv6", "http://[fd00:ec2::254]/latest/meta-data/"),
        ("carrier-grade NAT 100.64/10", f"http://100.64.0.1:{port}/a.iso"),
        ("ULA fc00::/7 (fc)", f"http://[fc00::1]:{port}/a.iso"),
        ("ULA fc00::/7 (fd)", f"http://[fd12:3456:789a::1]:{port}/a.iso"),
        ("IPv4-mapped ::ffff:127.0.0.1", f"http://[::ffff:127.0.0.1]:{port}/a.iso"),
        ("IPv4-mapped in hex ::ffff:7f00:1", f"http://[::ffff:7f00:1]:{port}/a.iso"),
        ("IPv4-mapped metadata", "http://[::ffff:169.254.169.254]/latest/meta-data/"),
        ("NAT64 of loopback", f"http://[64:ff9b::7f00:1]:{port}/a.iso"),
        ("6to4 of loopback", f"http://[2002:7f00:1::1]:{port}/a.iso"),
        ("decimal 2130706433", f"http://2130706433:{port}/a.iso"),
        ("octal 0177.0.0.1", f"http://0177.0.0.1:{port}/a.iso"),
        ("hex 0x7f000001", f"http://0x7f000001:{port}/a.iso"),
        ("hex dotted 0x7f.0.0.1", f"http://0x7f.0.0.1:{port}/a.iso"),
        ("shortened 127.1", f"http://127.1:{port}/a.iso"),
        ("octal as one number 017700000001", f"http://017700000001:{port}/a.iso"),
        ("trailing dot 127.0.0.1.", f"http://127.0.0.1.:{port}/a.iso"),
        *[(f"name resolving to {FAKE_DNS[n]}", f"http://{n}:{port}/a.iso") for n in FAKE_DNS],
        ("user info hiding the host", f"http://{PUBLIC}@127.0.0.1:{port}/a.iso"),
        ("file://", "file:///etc/passwd"),
        ("file://localhost", "file://localhost/etc/passwd"),
        ("ftp://", f"ftp://127.0.0.1:{port}/a.iso"),
        ("ftp:// public", "ftp://ftp.example/pub/a.iso"),
        ("gopher://", f"gopher://127.0.0.1:{port}/_GET"),
        ("scheme-relative //", f"//127.0.0.1:{port}/a.iso"),
        ("no scheme", f"127.0.0.1:{port}/a.iso"),
        ("tab inside the host", f"http://127.0.0.1\t:{port}/a.iso"),
    ]


def forbidden_attempts(wire: Wire, mirror: HTTPServer | None = None) -> list[Any]:
    allowed = {("127.0.0.2", mirror.port)} if mirror is not None else set()
    return [a for a in wire.attempts if not (isinstance(a, tuple) and tuple(a[:2]) in allowed)]


def test_refused_when_submitted_without_a_connection(wire: Wire, iso_dirs, vm_api, run_tasks, tally) -> None:
    for what, url in refused_urls(wire.server.port):
        with run_tasks():
            response = vm_api.post(ISO_URL, {"url": url}, format="json")
        leftovers = len(forbidden_attempts(wire)) + wire.server.accepted + IsoImage.objects.count() + len(list(iso_dirs.download.iterdir()))
        refused = response.status_code == 400 and error_field(response) == "url"
        message = response.json().get("message", "") if refused else response.content.decode()[:200]
        tally.record(SUITE, f"{what}: {url[:80]}", refused=refused, leftovers=leftovers, detail=f"{response.status_code}: {message[:160]}")
        assert refused, (what, url, response.status_code, response.content)
        assert leftovers == 0, (what, wire.attempts, wire.server.accepted)
    assert wire.attempts == [] and wire.server.accepted == 0
    # The instruments work: a real connection is both recorded and counted.
    with socket.create_connection(("127.0.0.1", wire.server.port)) as probe:
        assert probe.recv(1) == b""  # the server counts, then closes
    assert wire.attempts == [("127.0.0.1", wire.server.port)] and wire.server.accepted == 1


def redirect_targets(port: int) -> list[tuple[str, str]]:
    return [
        ("loopback", f"http://127.0.0.1:{port}/a.iso"),
        ("a name resolving to loopback", f"http://rebind.example:{port}/a.iso"),
        ("a name resolving to RFC 1918", f"http://intranet.example:{port}/a.iso"),
        ("cloud metadata", "http://169.254.169.254/latest/meta-data/"),
        ("IPv6 loopback", f"http://[::1]:{port}/a.iso"),
        ("IPv4-mapped loopback", f"http://[::ffff:127.0.0.1]:{port}/a.iso"),
        ("decimal loopback", f"http://2130706433:{port}/a.iso"),
        ("file://", "file:///etc/passwd"),
        ("ftp://", f"ftp://127.0.0.1:{port}/a.iso"),
    ]


@pytest.mark.parametrize("hops", [1, 3], ids=["direct", "after two allowed hops"])
def test_a_redirect_chain_ending_inside_fails_the_job_without_a_connection(
    wire: Wire, mirror: HTTPServer, iso_dirs, vm_api, run_tasks, tally, hops: int
) -> None:
    for index, (what, target) in enumerate(redirect_targets(wire.server.port)):
        mirror.clear()
        for hop in range(hops - 1):
            mirror.expect_request(f"/c{index}-h{hop}.iso").respond_with_response(
                Response(status=302, headers={"Location": f"/c{index}-h{hop + 1}.iso"})
            )
        mirror.expect_request(f"/c{index}-h{hops - 1}.iso").respond_with_response(Response(status=302, headers={"Location": target}))
        with run_tasks():
            response = vm_api.post(ISO_URL, {"url": f"http://127.0.0.2:{mirror.port}/c{index}-h0.iso"}, format="json")
        assert response.status_code == 202, response.content
        body = vm_api.get(f"{ISO_URL}/{response.json()['id']}").json()
        forbidden = forbidden_attempts(wire, mirror)
        files = list(iso_dirs.download.iterdir())
        leftovers = len(forbidden) + wire.server.accepted + len(files)
        refused = body["status"] == "failed" and bool(body["error"]) and len(mirror.log) == hops
        tally.record(
            SUITE,
            f"redirect ({hops} hop{'s' if hops > 1 else ''}) to {what}",
            refused=refused,
            leftovers=leftovers,
            detail=f"job {body['status']}: {body['error'][:160]}",
        )
        assert refused, (what, body, mirror.log)
        assert leftovers == 0, (what, forbidden, wire.server.accepted, files)
    assert wire.server.accepted == 0
    assert sum(tuple(a[:2]) == ("127.0.0.2", mirror.port) for a in wire.attempts) >= len(redirect_targets(0))  # the spy saw the mirror
