"""The HTTP(S) download layer: streaming, limits, failures, and the SSRF guard.

Functional tests talk to servers on loopback only (pytest-httpserver, or a raw
socket server when we need a misbehaving peer). Tests that check a URL is
*refused* install `no_connection`, which fails the test if anything tries to
open a connection, so a refusal that came too late would be caught.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import ssl
import subprocess
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import urllib3.util.connection
from pytest_httpserver import HTTPServer

from isos import download
from isos.download import FetchCancelled, FetchError, FetchPolicy, FetchResult, HostNotFound, UrlRefused, fetch, validate_url
from tests.support.servers import LoopbackServer, Respond, http_server_on_127_0_0_2, loopback_servers
from vaporsite import env

MIB = 1024 * 1024
LOOPBACK = FetchPolicy(allow_private=True)
GUARDED = FetchPolicy()


@dataclass
class Sink:
    """Everything a fetch handed to the caller."""

    dest: io.BytesIO = field(default_factory=io.BytesIO)
    chunks: list[bytes] = field(default_factory=list)
    progress: list[tuple[int, int | None]] = field(default_factory=list)

    def run(self, url: str, policy: FetchPolicy, on_progress: Callable[[int, int | None], None] | None = None) -> FetchResult:
        def progress(done: int, total: int | None) -> None:
            self.progress.append((done, total))
            if on_progress is not None:
                on_progress(done, total)

        return fetch(url, self.dest, policy=policy, on_chunk=self.chunks.append, on_progress=progress)


def loopback_url(server: HTTPServer, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.port}{path}"


@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Fail on any attempt to build a connection pool or open a TCP connection."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append((args, kwargs))
        raise AssertionError(f"a connection was attempted: {args} {kwargs}")

    monkeypatch.setattr(download, "HTTPConnectionPool", refuse)
    monkeypatch.setattr(download, "HTTPSConnectionPool", refuse)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Make `resolve_host` answer from `answers`; returns the names looked up, in order."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    monkeypatch.setattr(download, "resolve_host", resolve)
    return asked


@pytest.fixture
def raw_server() -> Iterator[Callable[[Respond], LoopbackServer]]:
    yield from loopback_servers()


@pytest.fixture
def server_on_127_0_0_2() -> Iterator[HTTPServer]:
    yield from http_server_on_127_0_0_2()


# --- streaming ------------------------------------------------------------------------------------------------


def test_binary_body_arrives_byte_for_byte_with_chunks_and_progress(httpserver: HTTPServer) -> None:
    body = b"\x00\r\n\x00\xff\r" + os.urandom(3 * MIB + 12345) + b"\r\n\x00"
    httpserver.expect_request("/image.iso").respond_with_data(body, content_type="application/octet-stream")
    sink = Sink()

    result = sink.run(loopback_url(httpserver, "/image.iso"), LOOPBACK)

    assert sink.dest.getvalue() == body
    assert hashlib.sha256(b"".join(sink.chunks)).hexdigest() == hashlib.sha256(body).hexdigest()
    assert result == FetchResult(final_url=loopback_url(httpserver, "/image.iso"), bytes_written=len(body), content_length=len(body))
    done = [d for d, _ in sink.progress]
    assert done == sorted(done)
    assert sink.progress[0] == (0, len(body))
    assert sink.progress[-1] == (len(body), len(body))
    assert len(sink.chunks) >= 4  # streamed in 1 MiB pieces, not read whole


def test_dest_is_left_open_for_the_caller(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/small").respond_with_data(b"abc")
    sink = Sink()

    sink.run(loopback_url(httpserver, "/small"), LOOPBACK)

    assert not sink.dest.closed
    assert sink.dest.getvalue() == b"abc"


@pytest.mark.parametrize(("status", "transient"), [(404, False), (403, False), (410, False), (503, True), (500, True), (429, True)])
def test_http_error_statuses_fail_and_say_whether_a_retry_can_help(httpserver: HTTPServer, status: int, transient: bool) -> None:
    httpserver.expect_request("/x").respond_with_data(b"nope", status=status)
    sink = Sink()

    with pytest.raises(FetchError) as caught:
        sink.run(loopback_url(httpserver, "/x"), LOOPBACK)

    assert caught.value.transient is transient
    assert f"HTTP {status}" in caught.value.message
    assert sink.dest.getvalue() == b""


def test_redirects_are_followed_to_the_final_url(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/old").respond_with_data(b"", status=301, headers={"Location": "/middle"})
    httpserver.expect_request("/middle").respond_with_data(b"", status=307, headers={"Location": loopback_url(httpserver, "/new?v=2")})
    httpserver.expect_request("/new", query_string="v=2").respond_with_data(b"payload")
    sink = Sink()

    result = sink.run(loopback_url(httpserver, "/old"), LOOPBACK)

    assert sink.dest.getvalue() == b"payload"
    assert result.final_url == loopback_url(httpserver, "/new?v=2")
    assert len(httpserver.log) == 3


def test_a_redirect_loop_stops_at_the_redirect_limit(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/loop").respond_with_data(b"", status=302, headers={"Location": "/loop"})

    with pytest.raises(FetchError) as caught:
        Sink().run(loopback_url(httpserver, "/loop"), FetchPolicy(allow_private=True, max_redirects=3))

    assert caught.value.transient is False
    assert "too many redirects" in caught.value.message
    assert len(httpserver.log) == 4  # the first request and three redirects followed


def test_a_redirect_without_location_fails(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/r").respond_with_data(b"", status=302)

    with pytest.raises(FetchError, match="without a Location"):
        Sink().run(loopback_url(httpserver, "/r"), LOOPBACK)


def test_content_length_over_the_limit_is_refused_before_the_body_is_read(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/big").respond_with_data(b"x" * (2 * MIB))
    sink = Sink()

    with pytest.raises(FetchError) as caught:
        sink.run(loopback_url(httpserver, "/big"), FetchPolicy(allow_private=True, max_bytes=MIB))

    assert caught.value.transient is False
    assert f"{2 * MIB} bytes, more than the limit of {MIB}" in caught.value.message
    assert sink.dest.getvalue() == b""
    assert sink.chunks == []
    assert sink.progress == []


def test_a_chunked_body_without_length_is_stopped_at_the_limit(raw_server: Callable[[Respond], LoopbackServer]) -> None:
    piece = b"y" * (64 * 1024)

    def endless_chunks(conn: socket.socket, *_unused: object) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for _ in range(64):  # 4 MiB, far past the limit
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sendall(b"0\r\n\r\n")

    server = raw_server(endless_chunks)
    sink = Sink()

    with pytest.raises(FetchError) as caught:
        sink.run(server.url("stream"), FetchPolicy(allow_private=True, max_bytes=MIB + 1))

    assert caught.value.transient is False
    assert "larger than the limit" in caught.value.message
    assert sink.progress[0] == (0, None)
    assert MIB <= len(sink.dest.getvalue()) <= MIB + 1


def test_a_connection_cut_half_way_is_a_transient_failure_that_says_so(raw_server: Callable[[Respond], LoopbackServer]) -> None:
    total = 4 * MIB

    def half_then_close(conn: socket.socket, *_unused: object) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n" % total)
        conn.sendall(b"z" * (total // 2))

    server = raw_server(half_then_close)
    sink = Sink()

    with pytest.raises(FetchError) as caught:
        sink.run(server.url("image.iso"), LOOPBACK)

    assert caught.value.transient is True
    assert f"connection to 127.0.0.1 was cut after {total // 2} of {total} bytes" in caught.value.message
    assert sink.dest.getvalue() == b"z" * (total // 2)


def test_a_server_that_stops_sending_times_out_as_transient(raw_server: Callable[[Respond], LoopbackServer]) -> None:
    gate = threading.Event()

    def stall(conn: socket.socket, *_unused: object) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        gate.wait(10)

    server = raw_server(stall)
    try:
        with pytest.raises(FetchError) as caught:
            Sink().run(server.url("slow"), FetchPolicy(allow_private=True, read_timeout=0.2))
    finally:
        gate.set()

    assert caught.value.transient is True
    # urllib3 holds back a partial 1 MiB chunk, so how many bytes were written before the stall is its business.
    assert re.search(r"127\.0\.0\.1 sent nothing for 0\.2 seconds after \d+ of 100 bytes", caught.value.message)


def test_nothing_listening_is_a_transient_connection_failure() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again at once: nothing listens there now

    with pytest.raises(FetchError) as caught:
        Sink().run(f"http://127.0.0.1:{port}/", LOOPBACK)

    assert caught.value.transient is True
    assert "could not connect to 127.0.0.1" in caught.value.message


def test_cancelling_from_on_progress_propagates_and_stops_the_download(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/image.iso").respond_with_data(os.urandom(3 * MIB))
    sink = Sink()

    def cancel_after_first_chunk(done: int, total: int | None) -> None:
        if done > 0:
            raise FetchCancelled

    with pytest.raises(FetchCancelled):
        sink.run(loopback_url(httpserver, "/image.iso"), LOOPBACK, on_progress=cancel_after_first_chunk)

    assert len(sink.chunks) == 1  # nothing written after the callback raised
    assert sink.dest.getvalue() == sink.chunks[0] and len(sink.chunks[0]) <= MIB


# --- connecting to the checked address ---------------------------------------------------------------------------


def test_connects_to_the_resolved_address_and_sends_the_original_host(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(monkeypatch, {"mirror.test": ["127.0.0.1"]})
    real_getaddrinfo = socket.getaddrinfo

    def no_second_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        assert host != "mirror.test", "the name was looked up again after it was checked"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_second_lookup)
    httpserver.expect_request("/x").respond_with_data(b"mirrored")
    sink = Sink()

    result = sink.run(f"http://mirror.test:{httpserver.port}/x", LOOPBACK)

    assert sink.dest.getvalue() == b"mirrored"
    assert result.final_url == f"http://mirror.test:{httpserver.port}/x"
    assert asked == ["mirror.test"]
    request, _ = httpserver.log[0]
    assert request.headers["Host"] == f"mirror.test:{httpserver.port}"


def test_falls_back_to_the_next_checked_address_when_one_refuses(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Binding proves nothing listens on 127.0.0.3 at that port; once closed, connecting there is refused.
    with socket.create_server(("127.0.0.3", httpserver.port)):
        pass
    fake_dns(monkeypatch, {"mirror.test": ["127.0.0.3", "127.0.0.1"]})
    httpserver.expect_request("/x").respond_with_data(b"second address")
    sink = Sink()

    sink.run(f"http://mirror.test:{httpserver.port}/x", LOOPBACK)

    assert sink.dest.getvalue() == b"second address"


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a certificate for mirror.test signed by it (openssl CLI, part of every Debian)."""
    work = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Vapor test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=mirror.test")
    (work / "leaf.ext").write_text(
        "subjectAltName=DNS:mirror.test\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    openssl(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem", "-days", "2",
        "-extfile", "leaf.ext",
    )  # fmt: skip
    return TlsFiles(ca=work / "ca.pem", cert=work / "leaf.pem", key=work / "leaf.key")


@pytest.fixture
def tls_server(tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HTTPServer, list[str | None]]]:
    """An HTTPS server on 127.0.0.1 with the mirror.test certificate, trusted through SSL_CERT_FILE; records SNI names."""
    sni: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca))
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.start()
    yield server, sni
    server.clear()
    server.stop()


def test_https_verifies_the_certificate_against_the_name_while_connecting_to_the_address(
    tls_server: tuple[HTTPServer, list[str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, sni = tls_server
    fake_dns(monkeypatch, {"mirror.test": ["127.0.0.1"]})
    server.expect_request("/secure.iso").respond_with_data(b"over tls")
    sink = Sink()

    sink.run(f"https://mirror.test:{server.port}/secure.iso", LOOPBACK)

    assert sink.dest.getvalue() == b"over tls"
    assert sni == ["mirror.test"]
    request, _ = server.log[0]
    assert request.headers["Host"] == f"mirror.test:{server.port}"


def test_https_refuses_a_certificate_for_another_name(
    tls_server: tuple[HTTPServer, list[str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = tls_server
    fake_dns(monkeypatch, {"other.test": ["127.0.0.1"]})
    server.expect_request("/secure.iso").respond_with_data(b"over tls")

    with pytest.raises(FetchError) as caught:
        Sink().run(f"https://other.test:{server.port}/secure.iso", LOOPBACK)

    assert caught.value.transient is False
    assert "certificate could not be verified" in caught.value.message
    assert server.log == []


# --- the SSRF guard -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:{port}/", "127.0.0.1 is a loopback address"),
        ("http://[::1]:{port}/", "::1 is a loopback address"),
        ("http://localhost:{port}/", "localhost resolves to 127.0.0.1, a loopback address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a cloud metadata address"),
        ("http://2130706433:{port}/", "unusual form"),
        ("http://0x7f000001:{port}/", "unusual form"),
    ],
)
def test_guarded_fetch_refuses_internal_addresses_without_connecting(
    httpserver: HTTPServer, no_connection: list[Any], url: str, words: str
) -> None:
    httpserver.expect_request("/").respond_with_data(b"internal secret")
    sink = Sink()

    with pytest.raises(UrlRefused) as caught:
        sink.run(url.format(port=httpserver.port), GUARDED)

    assert words in caught.value.message
    assert no_connection == []
    assert httpserver.log == []
    assert sink.dest.getvalue() == b""


def test_a_name_with_one_public_and_one_private_address_is_refused(monkeypatch: pytest.MonkeyPatch, no_connection: list[Any]) -> None:
    fake_dns(monkeypatch, {"mixed.test": ["93.184.216.34", "10.0.0.5"]})

    with pytest.raises(UrlRefused, match=r"mixed\.test resolves to 10\.0\.0\.5, a private address"):
        Sink().run("http://mixed.test/image.iso", GUARDED)

    assert no_connection == []


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/secret", "http://localhost:{port}/secret"])
def test_a_redirect_to_an_internal_address_is_refused_before_it_is_followed(
    server_on_127_0_0_2: HTTPServer, httpserver: HTTPServer, target: str
) -> None:
    policy = FetchPolicy(allowed_networks=("127.0.0.2/32",))
    location = target.format(port=httpserver.port)
    server_on_127_0_0_2.expect_request("/start").respond_with_data(b"", status=302, headers={"Location": location})
    httpserver.expect_request("/secret").respond_with_data(b"internal secret")
    sink = Sink()

    with pytest.raises(UrlRefused, match="a loopback address"):
        sink.run(loopback_url(server_on_127_0_0_2, "/start", host="127.0.0.2"), policy)

    assert len(server_on_127_0_0_2.log) == 1
    assert httpserver.log == []
    assert sink.dest.getvalue() == b""


def test_an_allowed_network_lets_an_internal_mirror_through(server_on_127_0_0_2: HTTPServer) -> None:
    server_on_127_0_0_2.expect_request("/image.iso").respond_with_data(b"from the mirror")
    sink = Sink()

    sink.run(loopback_url(server_on_127_0_0_2, "/image.iso", host="127.0.0.2"), FetchPolicy(allowed_networks=("127.0.0.2/32",)))

    assert sink.dest.getvalue() == b"from the mirror"


@pytest.mark.parametrize(("errno", "transient"), [(socket.EAI_NONAME, False), (socket.EAI_AGAIN, True)])
def test_a_name_that_does_not_resolve_during_fetch_is_a_fetch_error(
    monkeypatch: pytest.MonkeyPatch, no_connection: list[Any], errno: int, transient: bool
) -> None:
    def fail(host: str, port: int) -> list[str]:
        raise socket.gaierror(errno, "lookup failed")

    monkeypatch.setattr(download, "resolve_host", fail)

    with pytest.raises(FetchError) as caught:
        Sink().run("http://gone.test/image.iso", GUARDED)

    assert caught.value.transient is transient
    assert "gone.test could not be resolved (lookup failed)" in caught.value.message


# --- validate_url ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.org/image.iso", "only http:// and https://"),
        ("file:///etc/passwd", "only http:// and https://"),
        ("example.org/image.iso", "only http:// and https://"),
        ("http:///image.iso", "no host"),
        ("http://user:pass@example.org/image.iso", "user name or password"),
        ("http://@example.org/image.iso", "user name or password"),
        ("http://example.org:99999/", "port"),
        ("http://example.org:0/", "port"),
        ("http://exa mple.org/", "spaces or control characters"),
        ("http://example.org/\nHost: evil", "spaces or control characters"),
        ("http://exa_mple!.org/", "not valid"),
        ("http://[::1/", "cannot be parsed"),
        ("http://2130706433/", "unusual form"),
        ("http://0x7f000001/", "unusual form"),
        ("http://0177.0.0.1/", "unusual form"),
        ("http://0x7f.1/", "unusual form"),
        ("http://127.1/", "unusual form"),
        ("http://127.0.0.01/", "unusual form"),
    ],
)
def test_validate_url_refuses_bad_shapes_without_resolving(monkeypatch: pytest.MonkeyPatch, url: str, words: str) -> None:
    asked = fake_dns(monkeypatch, {})

    with pytest.raises(UrlRefused) as caught:
        validate_url(url, LOOPBACK)

    assert words in caught.value.message
    assert caught.value.field == "url"
    assert caught.value.code == "url_refused"
    assert caught.value.status == 400
    assert asked == []


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("[::1]", "a loopback address"),
        ("10.0.0.1", "a private address"),
        ("172.16.4.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("[fd12:3456::1]", "a private address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("[fd00:ec2::254]", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("169.254.10.10", "a link-local address"),
        ("[fe80::1]", "a link-local address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("0.0.0.0", "an unspecified address"),
        ("[::]", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("[ff02::1]", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("192.0.2.10", "not publicly routable"),
        ("198.18.0.1", "not publicly routable"),
        ("[2001:db8::1]", "not publicly routable"),
        ("[::ffff:127.0.0.1]", "an IPv4-mapped form of 127.0.0.1, a loopback address"),
        ("[::ffff:169.254.169.254]", "an IPv4-mapped form of 169.254.169.254, a cloud metadata address"),
        ("[2002:7f00:1::]", "a 6to4 form of 127.0.0.1, a loopback address"),
        ("[2002:a9fe:a9fe::]", "a 6to4 form of 169.254.169.254, a cloud metadata address"),
        ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "a Teredo form of 127.0.0.1, a loopback address"),
        ("[64:ff9b::a9fe:a9fe]", "a NAT64 form of 169.254.169.254, a cloud metadata address"),
    ],
)
def test_validate_url_refuses_internal_ip_literals(monkeypatch: pytest.MonkeyPatch, host: str, words: str) -> None:
    asked = fake_dns(monkeypatch, {})

    with pytest.raises(UrlRefused) as caught:
        validate_url(f"http://{host}/image.iso", GUARDED)

    assert words in caught.value.message
    assert caught.value.field == "url"
    assert asked == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://93.184.216.34/image.iso", ["93.184.216.34"]),
        ("https://[2606:4700:4700::1111]:8443/image.iso", ["2606:4700:4700::1111"]),
        ("HTTPS://[::ffff:8.8.8.8]/image.iso", ["::ffff:808:808"]),
    ],
)
def test_validate_url_accepts_public_ip_literals(url: str, expected: list[str]) -> None:
    assert validate_url(url, GUARDED) == expected


def test_validate_url_returns_every_address_of_a_public_name(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(monkeypatch, {"cdn.test": ["93.184.216.34", "2606:2800:220:1::248"]})

    assert validate_url("https://CDN.test/iso/ubuntu.iso", GUARDED) == ["93.184.216.34", "2606:2800:220:1::248"]
    assert asked == ["cdn.test"]


def test_validate_url_allowed_networks_whitelist_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"mirror.lan": ["10.1.2.3"], "half.lan": ["10.1.2.3", "192.168.0.9"]})
    policy = FetchPolicy(allowed_networks=("10.0.0.0/8",))

    assert validate_url("http://mirror.lan/x.iso", policy) == ["10.1.2.3"]
    with pytest.raises(UrlRefused, match=r"half\.lan resolves to 192\.168\.0\.9, a private address"):
        validate_url("http://half.lan/x.iso", policy)


def test_validate_url_allow_private_skips_the_address_check(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"box.lan": ["192.168.0.9"]})

    assert validate_url("http://box.lan/x.iso", LOOPBACK) == ["192.168.0.9"]
    assert validate_url("http://10.0.0.1/x.iso", LOOPBACK) == ["10.0.0.1"]
    with pytest.raises(UrlRefused, match="unusual form"):
        validate_url("http://2130706433/", LOOPBACK)


def test_validate_url_reports_a_name_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {})

    with pytest.raises(HostNotFound) as caught:
        validate_url("http://nowhere.test/x.iso", GUARDED)

    assert isinstance(caught.value, UrlRefused)
    assert caught.value.field == "url"
    assert "nowhere.test could not be resolved" in caught.value.message


def test_resolve_host_lists_each_address_once_in_resolver_order(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        assert (host, port, kwargs["type"]) == ("dual.test", 443, socket.SOCK_STREAM)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::1", 443, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 443)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::1", 443, 0, 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    assert download.resolve_host("dual.test", 443) == ["2001:db8::1", "192.0.2.7"]


# --- settings -------------------------------------------------------------------------------------------------


def test_policy_from_settings_reads_the_vapor_config(monkeypatch: pytest.MonkeyPatch) -> None:
    config = env.load(
        {
            "VAPOR_DOWNLOAD_ALLOW_PRIVATE": "yes",
            "VAPOR_DOWNLOAD_ALLOWED_NETWORKS": "10.0.0.0/8, 192.168.5.0/24",
            "VAPOR_DOWNLOAD_MAX_BYTES": "12345",
            "VAPOR_DOWNLOAD_CONNECT_TIMEOUT": "3.5",
            "VAPOR_DOWNLOAD_READ_TIMEOUT": "7",
        }
    )
    import django.conf

    monkeypatch.setattr(django.conf, "settings", types.SimpleNamespace(VAPOR=config))

    assert FetchPolicy.from_settings() == FetchPolicy(
        allow_private=True,
        allowed_networks=("10.0.0.0/8", "192.168.5.0/24"),
        max_bytes=12345,
        connect_timeout=3.5,
        read_timeout=7.0,
    )
