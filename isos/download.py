"""Download a URL into a file the caller owns, without letting the URL reach inside our network.

A download URL comes from an API user, and the server fetching it usually sits
next to things that user must not reach: the hypervisor's own services on
loopback, the LAN, the cloud metadata endpoint. Checking the host *name* is not
enough (any name can resolve to 127.0.0.1), and checking the address and then
letting the HTTP library look the name up again loses to DNS rebinding. So:

1. the URL's shape is checked (http/https, a host, no userinfo, no numeric
   host in the decimal/octal/hex spellings that parsers disagree about);
2. the host is resolved once, and *every* address must be global (or inside
   an explicitly allowed network), otherwise the whole URL is refused;
3. the connection goes to one of the addresses that were checked, with the
   original name in the Host header and, for https, in SNI and certificate
   verification, so TLS still proves we talk to the named server;
4. redirects are followed by hand, and each hop goes through steps 1-3 again
   (a redirect to http://169.254.169.254/ was the classic bypass).

No Django models here: the task that records progress and hashes the bytes
lives elsewhere and hands us callbacks.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, urljoin, urlsplit

from urllib3 import BaseHTTPResponse, HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util.ssl_match_hostname import CertificateError

from isos.netguard import IPAddress, first_refused
from vaporsite.errors import InvalidInput

log = logging.getLogger("vapor.isos")

CHUNK_SIZE = 1024 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# 408 and 429 mean "not now"; a retry later can succeed, like a 5xx.
TRANSIENT_STATUSES = frozenset({408, 429})
SUCCESS_STATUSES = frozenset({200, 203})
DEFAULT_PORTS = {"http": 80, "https": 443}
# The caller's thread wakes at least this often (seconds), whatever the server does: to check the deadline,
# the minimum rate and, through `on_tick`, whether the download was cancelled.
TICK = 0.25
# Chunks read ahead of the caller's writes; the reading thread waits when this many are queued.
READ_AHEAD = 16
# How long (seconds) `fetch` waits for its reading thread to end after stopping it. The thread can only be
# blocked in a connect or a name lookup by then (a shut-down socket ends any read at once); it is a daemon
# and ends by itself within the connect timeout, touching nothing of the caller's.
STOP_GRACE = 1.0
# The defaults of the limits below, as VAPOR_DOWNLOAD_* gives them when unset (vaporsite/env.py).
DEFAULT_DEADLINE = 4 * 3600.0
DEFAULT_MIN_RATE = 16 * 1024
DEFAULT_RATE_WINDOW = 120.0


class Writable(Protocol):
    """Where `fetch` writes the body: an open binary file, or anything with its `write`."""

    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True)
class FetchPolicy:
    """What a download may do. `from_settings()` in the app; tests build their own."""

    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()
    max_bytes: int = 16 * 1024**3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_redirects: int = 5
    deadline: float = DEFAULT_DEADLINE  # seconds for the whole transfer, from `fetch`'s `started`
    min_rate: int = DEFAULT_MIN_RATE  # bytes/s averaged over `rate_window`; 0: no minimum
    rate_window: float = DEFAULT_RATE_WINDOW

    @classmethod
    def from_settings(cls) -> FetchPolicy:
        """Read settings.VAPOR at call time, so a test that swaps the config is honoured."""
        from django.conf import settings

        config = settings.VAPOR
        return cls(
            allow_private=config.download_allow_private,
            allowed_networks=tuple(config.download_allowed_networks),
            max_bytes=config.download_max_bytes,
            connect_timeout=config.download_connect_timeout,
            read_timeout=config.download_read_timeout,
            deadline=config.download_deadline,
            min_rate=config.download_min_rate,
            rate_window=config.download_rate_window,
        )


class UrlRefused(InvalidInput):
    """The URL may not be fetched: wrong shape or an address inside our network. A 400 on field "url"."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="url", code="url_refused")


class HostNotFound(UrlRefused):
    """The host name did not resolve. A 400 when the user submits the URL; `fetch` turns it into a FetchError,
    because by then the URL was accepted once and the lookup may only be failing for a while."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class FetchError(Exception):
    """The download failed. `transient` says whether trying again later may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


class FetchCancelled(Exception):
    """Raised by the caller's `on_progress` to stop a download; `fetch` lets it through untouched."""


@dataclass(frozen=True)
class FetchResult:
    final_url: str
    bytes_written: int
    content_length: int | None


@dataclass(frozen=True)
class _Target:
    """A checked URL: where to connect and what to say when we get there."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) name or bare IP, no brackets
    port: int
    host_header: str
    request_target: str
    addresses: tuple[str, ...]


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in resolver order, without duplicates. Raises socket.gaierror."""
    addresses: list[str] = []
    for family, _type, _proto, _canon, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP):
        if family in (socket.AF_INET, socket.AF_INET6) and str(sockaddr[0]) not in addresses:
            addresses.append(str(sockaddr[0]))
    return addresses


def validate_url(url: str, policy: FetchPolicy) -> list[str]:
    """Check `url`'s shape, resolve its host and check every address. Returns the addresses that may be used."""
    return list(_check(url, policy).addresses)


def _check(url: str, policy: FetchPolicy) -> _Target:
    parts = _split(url)
    host, literal = _host(parts)
    port = _port(parts)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = resolve_host(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            transient = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN
            reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
            raise HostNotFound(f"the host {host} could not be resolved ({reason})", transient=transient) from exc
        if not addresses:
            raise HostNotFound(f"the host {host} has no IPv4 or IPv6 address", transient=False)
    if not policy.allow_private:
        _check_addresses(host, literal is not None, addresses, policy.allowed_networks)
    bracketed = f"[{host}]" if ":" in host else host
    return _Target(
        url=url,
        scheme=parts.scheme.lower(),
        host=host,
        port=port,
        host_header=bracketed if parts.port is None else f"{bracketed}:{port}",
        request_target=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        addresses=tuple(addresses),
    )


def _split(url: str) -> SplitResult:
    if not isinstance(url, str) or not url:
        raise UrlRefused("the URL is empty")
    # urlsplit silently drops tabs and newlines and strips spaces; a URL containing them is not what it looks like.
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise UrlRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UrlRefused(f"the URL cannot be parsed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        shown = f"{scheme}://" if scheme else "no scheme"
        raise UrlRefused(f"only http:// and https:// URLs can be downloaded, not {shown}")
    if not parts.netloc or not parts.hostname:
        raise UrlRefused("the URL has no host")
    if "@" in parts.netloc:
        raise UrlRefused("the URL contains a user name or password (user:pass@host); credentials in URLs are not supported")
    return parts


def _port(parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError as exc:
        raise UrlRefused("the URL's port is not a number between 1 and 65535") from exc
    if port == 0:
        raise UrlRefused("the URL's port is not a number between 1 and 65535")
    return port if port is not None else DEFAULT_PORTS[parts.scheme.lower()]


def _host(parts: SplitResult) -> tuple[str, IPAddress | None]:
    """The host in ASCII, and the address when the host is an IP literal."""
    hostname = parts.hostname or ""
    if parts.netloc.split("@")[-1].startswith("["):
        try:
            return hostname, ipaddress.IPv6Address(hostname)
        except ValueError as exc:
            raise UrlRefused(f"[{hostname}] is not a valid IPv6 address") from exc
    try:
        ascii_host = hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UrlRefused(f"the host name {hostname!r} is not valid") from exc
    labels = ascii_host.removesuffix(".").split(".")
    if len(ascii_host) > 253 or not all(_is_dns_label(label) for label in labels):
        raise UrlRefused(f"the host name {hostname!r} is not valid")
    # A host whose last label is a number is an IPv4 address to browsers and C libraries, which read
    # "2130706433", "0x7f.1" and "0177.0.0.1" as 127.0.0.1. Only the plain dotted-decimal form is
    # unambiguous, so anything else is refused rather than guessed at.
    if _is_number(labels[-1]):
        try:
            return ascii_host, ipaddress.IPv4Address(ascii_host)
        except ValueError:
            raise UrlRefused(
                f"the host {hostname!r} is an IP address written in an unusual form (decimal, octal, hex or shortened); "
                "write IPv4 addresses as four decimal numbers, like 192.0.2.10"
            ) from None
    return ascii_host, None


def _is_dns_label(label: str) -> bool:
    return 0 < len(label) <= 63 and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)


def _is_number(label: str) -> bool:
    lowered = label.lower()
    if lowered.startswith("0x"):
        return all(c in "0123456789abcdef" for c in lowered[2:])
    return lowered.isdigit()


def _check_addresses(host: str, literal: bool, addresses: Iterable[str], allowed_networks: tuple[str, ...]) -> None:
    refused = first_refused(addresses, allowed_networks)
    if refused is None:
        return
    address, why = refused
    said = f"the URL's host {host} is {why}" if literal else f"{host} resolves to {address}, {why}"
    hint = "; only public addresses can be downloaded from (VAPOR_DOWNLOAD_ALLOWED_NETWORKS can allow an internal mirror)"
    raise UrlRefused(said + hint)


def fetch(
    url: str,
    dest: Writable,
    *,
    policy: FetchPolicy,
    on_chunk: Callable[[bytes], None],
    on_progress: Callable[[int, int | None], None],
    on_tick: Callable[[int, int | None], None] | None = None,
    started: float | None = None,
) -> FetchResult:
    """Stream `url` into `dest`, following redirects, within `policy`.

    Each chunk is written to `dest`, then given to `on_chunk` (for hashing), then
    `on_progress(bytes_so_far, content_length)` is called; `on_progress(0, length)`
    also comes once the headers are in, so the caller learns the size early.
    `on_tick(bytes_so_far, content_length)` is called every TICK seconds from the
    start, whether bytes flow or not (before the headers, with (0, None)).
    Whatever a callback raises (FetchCancelled) stops the download at once: the
    network is read by a thread of its own, and the caller's thread, which runs
    every callback, never waits on the server longer than TICK.

    The whole transfer must end within `policy.deadline` seconds of `started`
    (a time.monotonic() value; now by default), and once `policy.rate_window`
    seconds have passed, the bytes of the last window must average at least
    `policy.min_rate` per second: a server that sends one byte just before each
    read timeout is stopped too. Both are FetchErrors that are not transient.

    `dest` is never closed or removed here: on failure the caller deletes its
    temp file. Raises UrlRefused, FetchError, or whatever the callbacks raise.
    """
    now = time.monotonic()
    clock = _Limits(policy, started=now if started is None else started, now=now)
    clock.check(now, 0, None)  # a deadline that passed during the earlier attempts: no connection at all
    transfer = _Transfer(url, policy)
    transfer.start()
    done, length = 0, None
    next_tick = now
    try:
        while True:
            now = time.monotonic()
            clock.check(now, done, length)
            if on_tick is not None and now >= next_tick:
                on_tick(done, length)
                next_tick = now + TICK
            try:
                kind, value = transfer.events.get(timeout=clock.wait(now))
            except queue.Empty:
                continue
            if kind == "headers":
                length = value
                on_progress(0, length)
            elif kind == "chunk":
                dest.write(value)
                on_chunk(value)
                done += len(value)
                on_progress(done, length)
            elif kind == "end":
                return value
            else:
                raise value
    finally:
        transfer.stop()


class _Limits:
    """The deadline and the minimum rate of one fetch, checked by the caller's thread."""

    def __init__(self, policy: FetchPolicy, *, started: float, now: float) -> None:
        self.policy = policy
        self.started = started
        self.deadline_at = started + policy.deadline
        self.began = now  # the rate window counts from this fetch's start, not from the first attempt's
        self.samples: collections.deque[tuple[float, int]] = collections.deque([(now, 0)])

    def wait(self, now: float) -> float:
        return max(min(TICK, self.deadline_at - now), 0.001)

    def check(self, now: float, done: int, length: int | None) -> None:
        of_total = f" of {length}" if length is not None else ""
        if now >= self.deadline_at:
            raise FetchError(
                f"the download did not finish within its deadline of {self.policy.deadline:g} s (VAPOR_DOWNLOAD_DEADLINE): "
                f"{done}{of_total} bytes received, {now - self.started:.1f} s after it started",
                transient=False,
            )
        if not self.policy.min_rate:
            return
        if now - self.samples[-1][0] >= TICK:
            self.samples.append((now, done))
        window = self.policy.rate_window
        if now - self.began < window or (length is not None and done >= length):
            return
        while len(self.samples) > 1 and self.samples[1][0] <= now - window:
            self.samples.popleft()
        since, then = self.samples[0]
        span = now - since
        rate = (done - then) / span
        if rate < self.policy.min_rate:
            raise FetchError(
                f"the download was slower than the minimum of {self.policy.min_rate} bytes/s (VAPOR_DOWNLOAD_MIN_RATE): "
                f"{done - then} bytes in the last {span:.1f} s ({rate:.1f} bytes/s), {done}{of_total} bytes in all",
                transient=False,
            )


class _Stopped(Exception):
    """The caller stopped the transfer: its thread ends without a word."""


class _SocketWatch:
    """The socket of the connection a transfer is using, so that another thread can end a read that waits on it.

    It keeps a duplicate of the socket's descriptor: shutting that down ends a blocked recv() on the
    original at once (plain or TLS, in the headers or the body), and since the duplicate is ours alone,
    no other code closing the original can make us shut down a descriptor number that was reused.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dup: socket.socket | None = None
        self._stopped = False

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._close_dup()
            self._dup = socket.socket(fileno=os.dup(sock.fileno()))
            if self._stopped:
                self._shutdown_dup()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._shutdown_dup()

    def release(self) -> None:
        with self._lock:
            self._close_dup()

    def _shutdown_dup(self) -> None:
        if self._dup is not None:
            with contextlib.suppress(OSError):  # not connected any more
                self._dup.shutdown(socket.SHUT_RDWR)

    def _close_dup(self) -> None:
        if self._dup is not None:
            self._dup.close()
            self._dup = None


class _Watched:
    """Hands the connection's socket to its watch once connected (plain or TLS: mixed in before the class)."""

    sock: Any

    def __init__(self, *args: Any, watch: _SocketWatch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch = watch

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._watch.attach(self.sock)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _Transfer(threading.Thread):
    """Talks HTTP for one fetch and hands what it reads to the caller's thread as events:
    ("headers", length), ("chunk", bytes)..., then ("end", FetchResult) or ("error", exception)."""

    def __init__(self, url: str, policy: FetchPolicy) -> None:
        super().__init__(name="vapor-download", daemon=True)
        self.url, self.policy = url, policy
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=READ_AHEAD)
        self.watch = _SocketWatch()
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.watch.stop()
        self.join(STOP_GRACE)

    def run(self) -> None:
        try:
            self._put("end", self._fetch())
        except _Stopped:
            pass
        except Exception as exc:  # handed to the caller's thread, which raises it
            with contextlib.suppress(_Stopped):
                self._put("error", exc)
        finally:
            self.watch.release()

    def _put(self, kind: str, value: object) -> None:
        while not self._stopping.is_set():
            try:
                self.events.put((kind, value), timeout=TICK)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _fetch(self) -> FetchResult:
        policy, current = self.policy, self.url
        for hop in range(policy.max_redirects + 1):
            try:
                target = _check(current, policy)
            except HostNotFound as exc:
                raise FetchError(exc.message, transient=exc.transient) from exc
            if self._stopping.is_set():
                raise _Stopped
            pool, response = _open(target, policy, self.watch)
            try:
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(f"{target.host} answered HTTP {response.status} without a Location to go to", transient=False)
                    current = urljoin(current, location)
                    log.debug("redirect %d from %s to %s", hop + 1, target.url, current)
                    continue
                _check_status(response, target)
                length = _content_length(response)
                if length is not None and length > policy.max_bytes:
                    raise FetchError(f"{target.url} is {length} bytes, more than the limit of {policy.max_bytes} bytes", transient=False)
                written = self._stream(response, target, length)
                return FetchResult(final_url=current, bytes_written=written, content_length=length)
            finally:
                response.close()
                pool.close()
        raise FetchError(f"too many redirects starting from {self.url} (more than {policy.max_redirects})", transient=False)

    def _stream(self, response: BaseHTTPResponse, target: _Target, length: int | None) -> int:
        policy = self.policy
        done = 0
        of_total = f" of {length}" if length is not None else ""
        self._put("headers", length)
        try:
            # read1: whatever has arrived, up to a chunk, so the caller sees every byte as it comes.
            while chunk := response.read1(CHUNK_SIZE, decode_content=False):
                if self._stopping.is_set():
                    raise _Stopped
                if done + len(chunk) > policy.max_bytes:
                    limit = policy.max_bytes
                    raise FetchError(f"{target.url} is larger than the limit of {limit} bytes, stopped at {done}", transient=False)
                self._put("chunk", chunk)
                done += len(chunk)
        except ReadTimeoutError as exc:
            raise FetchError(
                f"{target.host} sent nothing for {policy.read_timeout:g} seconds after {done}{of_total} bytes", transient=True
            ) from exc
        except (ProtocolError, SSLError) as exc:
            raise FetchError(f"connection to {target.host} was cut after {done}{of_total} bytes ({_reason(exc)})", transient=True) from exc
        if self._stopping.is_set():
            raise _Stopped
        if length is not None and done < length:
            # http.client reports a short body as a clean end when the server closes at a chunk boundary.
            raise FetchError(f"connection to {target.host} was cut after {done} of {length} bytes", transient=True)
        if length is not None and done > length:
            raise FetchError(f"{target.host} sent {done} bytes but announced {length}", transient=False)
        return done


def _pool(target: _Target, address: str, watch: _SocketWatch) -> HTTPConnectionPool:
    """A pool whose only way out is `address`; TLS verifies the certificate against the URL's host name.
    Each connection it opens reports its socket to `watch`."""
    pool: HTTPConnectionPool
    if target.scheme == "https":
        tls_name = target.host.removesuffix(".")
        pool = HTTPSConnectionPool(
            address,
            target.port,
            maxsize=1,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            server_hostname=tls_name,
            assert_hostname=tls_name,
            watch=watch,
        )
        pool.ConnectionCls = _WatchedHTTPSConnection
        return pool
    pool = HTTPConnectionPool(address, target.port, maxsize=1, retries=False, watch=watch)
    pool.ConnectionCls = _WatchedHTTPConnection
    return pool


def _open(target: _Target, policy: FetchPolicy, watch: _SocketWatch) -> tuple[HTTPConnectionPool, BaseHTTPResponse]:
    """Send the GET to the first checked address that accepts a connection."""
    headers = {"Host": target.host_header, "User-Agent": "Vapor ISO downloader", "Accept": "*/*", "Accept-Encoding": "identity"}
    timeout = Timeout(connect=policy.connect_timeout, read=policy.read_timeout)
    failure: FetchError | None = None
    for address in target.addresses:
        pool = _pool(target, address, watch)
        try:
            response = pool.urlopen(
                "GET",
                target.request_target,
                headers=headers,
                retries=False,
                redirect=False,
                timeout=timeout,
                preload_content=False,
                decode_content=False,
                assert_same_host=False,
            )
        except ConnectTimeoutError as exc:  # includes NewConnectionError (refused, unreachable): try the next address
            pool.close()
            if isinstance(exc, NewConnectionError):
                failure = FetchError(f"could not connect to {target.host} ({address}): {_reason(exc)}", transient=True)
            else:
                failure = FetchError(
                    f"connecting to {target.host} ({address}) timed out after {policy.connect_timeout:g} s", transient=True
                )
            failure.__cause__ = exc
            continue
        except ReadTimeoutError as exc:
            pool.close()
            raise FetchError(f"{target.host} did not answer within {policy.read_timeout:g} seconds", transient=True) from exc
        except SSLError as exc:
            pool.close()
            verify = any(isinstance(arg, ssl.SSLCertVerificationError | CertificateError) for arg in exc.args)
            problem = "its certificate could not be verified" if verify else "the TLS handshake failed"
            raise FetchError(f"secure connection to {target.host} failed, {problem}: {_reason(exc)}", transient=not verify) from exc
        except (ProtocolError, HTTPError) as exc:
            pool.close()
            raise FetchError(f"connection to {target.host} failed before an answer came: {_reason(exc)}", transient=True) from exc
        return pool, response
    assert failure is not None, "a checked target always has at least one address"
    raise failure


def _check_status(response: BaseHTTPResponse, target: _Target) -> None:
    status = response.status
    if status in SUCCESS_STATUSES:
        return
    said = f"{target.host} answered HTTP {status} {response.reason or ''}".rstrip() + f" for {target.url}"
    raise FetchError(said, transient=status >= 500 or status in TRANSIENT_STATUSES)


def _content_length(response: BaseHTTPResponse) -> int | None:
    """The announced body size; None when chunked or absent. Conflicting values are an error, as in RFC 9110."""
    if "chunked" in response.headers.get("Transfer-Encoding", "").lower():
        return None
    raw = response.headers.get("Content-Length")
    if raw is None:
        return None
    values = {v.strip() for v in raw.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise FetchError(f"the server sent an invalid Content-Length: {raw!r}", transient=False)
    return int(values.pop())


def _reason(exc: BaseException) -> str:
    """The innermost cause in words ("Connection refused"), not urllib3's repr chain."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
