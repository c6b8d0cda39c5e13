"""Downloads through the API and the django-q2 task, from a loopback server."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug import Response

from isos import jobs
from isos.models import IsoImage
from tests.support.isos import make_iso

URL = "/api/v1/virtualmachines/isos"

pytestmark = pytest.mark.django_db


@pytest.fixture
def iso_bytes(tmp_path: Path) -> bytes:
    # Padding makes the body span several 1 MiB chunks, so progress has steps.
    return make_iso(tmp_path / "src.iso", label="Debian 11.8.0 amd64 n", boot="bios", size_padding=3 * 1024 * 1024).read_bytes()


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def start_download(api, run_tasks, url: str, **extra: object) -> dict:
    with run_tasks():
        response = api.post(URL, {"url": url, **extra}, format="json")
        assert response.status_code == 202, response.json()
        assert response.json()["status"] == "downloading"
    return api.get(f"{URL}/{response.json()['id']}").json()


@pytest.fixture
def progress_log(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """bytes_done as stored in the database after every progress write."""
    seen: list[int] = []
    original = jobs._Progress.__call__
    monkeypatch.setattr(jobs, "PROGRESS_INTERVAL", 0)

    def spy(self, done, total, *, force=False):
        original(self, done, total, force=force)
        seen.append(IsoImage.objects.get(pk=self.iso_id).bytes_done)

    monkeypatch.setattr(jobs._Progress, "__call__", spy)
    return seen


def test_download_with_matching_checksum_becomes_ready(api, iso_dirs, run_tasks, httpserver, iso_bytes, progress_log):
    httpserver.expect_request("/images/debian-11.iso").respond_with_data(iso_bytes, content_type="application/octet-stream")
    checksum = "sha256:" + hashlib.sha256(iso_bytes).hexdigest()
    body = start_download(api, run_tasks, httpserver.url_for("/images/debian-11.iso"), checksum=checksum, tags=["debian"])
    assert body["status"] == "ready", body["error"]
    assert body["path"] == str(iso_dirs.download / "debian-11.iso")
    assert Path(body["path"]).read_bytes() == iso_bytes
    assert body["md5_hash"] == hashlib.md5(iso_bytes).hexdigest()
    assert body["sha256_hash"] == hashlib.sha256(iso_bytes).hexdigest()
    assert (body["size"], body["bytes_done"], body["bytes_total"], body["progress"]) == (len(iso_bytes),) * 3 + (100.0,)
    assert (body["boot_type"], body["os_variant"], body["source_url"]) == ("bios", "debian11", httpserver.url_for("/images/debian-11.iso"))
    assert files_in(iso_dirs.download) == ["debian-11.iso"]
    assert len(progress_log) >= 4 and progress_log == sorted(progress_log) and progress_log[-1] == len(iso_bytes)


def test_md5_checksum_is_accepted_too(api, iso_dirs, run_tasks, httpserver, iso_bytes):
    httpserver.expect_request("/a.iso").respond_with_data(iso_bytes)
    body = start_download(api, run_tasks, httpserver.url_for("/a.iso"), checksum="md5:" + hashlib.md5(iso_bytes).hexdigest())
    assert body["status"] == "ready"


def test_checksum_mismatch_fails_without_retry_and_leaves_no_file(api, iso_dirs, run_tasks, httpserver, iso_bytes, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_attempts=3)
    httpserver.expect_request("/a.iso").respond_with_data(iso_bytes)
    body = start_download(api, run_tasks, httpserver.url_for("/a.iso"), checksum="sha256:" + "0" * 64)
    assert body["status"] == "failed"
    assert "checksum mismatch" in body["error"] and "sha256:" + "0" * 64 in body["error"]
    assert files_in(iso_dirs.download) == []
    assert len(httpserver.log) == 1  # not retried


def test_content_that_is_not_an_iso_fails(api, iso_dirs, run_tasks, httpserver):
    httpserver.expect_request("/a.iso").respond_with_data(b"<html>login page</html>" * 5000)
    body = start_download(api, run_tasks, httpserver.url_for("/a.iso"))
    assert body["status"] == "failed" and "not an ISO image" in body["error"]
    assert files_in(iso_dirs.download) == []


def test_over_the_size_limit_fails_and_leaves_no_file(api, iso_dirs, run_tasks, httpserver, iso_bytes, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_max_bytes=1024 * 1024)
    httpserver.expect_request("/big.iso").respond_with_data(iso_bytes)
    body = start_download(api, run_tasks, httpserver.url_for("/big.iso"))
    assert body["status"] == "failed"
    assert "limit" in body["error"]
    assert files_in(iso_dirs.download) == []


def test_http_error_fails_with_the_status_in_words(api, iso_dirs, run_tasks, httpserver):
    httpserver.expect_request("/gone.iso").respond_with_data("nope", status=404)
    body = start_download(api, run_tasks, httpserver.url_for("/gone.iso"))
    assert body["status"] == "failed" and "404" in body["error"]


class CutServer:
    """Sends the headers and half the body, then closes the connection.
    With `heal_after`, later requests get the whole body."""

    def __init__(self, body: bytes, heal_after: int | None = None) -> None:
        self.body, self.heal_after, self.requests = body, heal_after, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.requests += 1
                whole = self.heal_after is not None and self.requests > self.heal_after
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\nConnection: close\r\n\r\n".encode()
                conn.sendall(head + (self.body if whole else self.body[: len(self.body) // 2]))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def cut_server(iso_bytes: bytes) -> Iterator[CutServer]:
    server = CutServer(iso_bytes)
    yield server
    server.close()


def test_connection_cut_half_way_fails_and_leaves_no_temp_file(api, iso_dirs, run_tasks, cut_server):
    body = start_download(api, run_tasks, f"http://127.0.0.1:{cut_server.port}/a.iso")
    assert body["status"] == "failed"
    assert "cut" in body["error"]
    assert files_in(iso_dirs.download) == []


def test_transient_failure_is_retried_then_succeeds(api, iso_dirs, run_tasks, iso_bytes, settings, monkeypatch):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_attempts=3)
    monkeypatch.setattr(jobs.time, "sleep", lambda seconds: None)
    server = CutServer(iso_bytes, heal_after=1)
    try:
        body = start_download(api, run_tasks, f"http://127.0.0.1:{server.port}/a.iso")
    finally:
        server.close()
    assert body["status"] == "ready", body["error"]
    assert server.requests == 2
    assert files_in(iso_dirs.download) == ["a.iso"]


def test_cancel_stops_the_download_and_removes_the_partial_file(api, iso_dirs, run_tasks, httpserver, iso_bytes, monkeypatch):
    httpserver.expect_request("/a.iso").respond_with_data(iso_bytes)
    monkeypatch.setattr(jobs, "PROGRESS_INTERVAL", 0)
    original = jobs._Progress.__call__
    calls = {"n": 0}

    def cancel_after_first_chunk(self, done, total, *, force=False):
        calls["n"] += 1
        if calls["n"] == 2:  # an operator presses cancel while bytes flow
            response = api.post(f"{URL}/{self.iso_id}/cancel")
            assert response.status_code == 200 and response.json()["status"] == "cancelled"
        original(self, done, total, force=force)

    monkeypatch.setattr(jobs._Progress, "__call__", cancel_after_first_chunk)
    body = start_download(api, run_tasks, httpserver.url_for("/a.iso"))
    assert body["status"] == "cancelled"
    assert files_in(iso_dirs.download) == []


def test_retry_after_failure_downloads_again(api, iso_dirs, run_tasks, httpserver, iso_bytes):
    httpserver.expect_ordered_request("/a.iso").respond_with_data("down", status=500)
    httpserver.expect_ordered_request("/a.iso").respond_with_data(iso_bytes)
    body = start_download(api, run_tasks, httpserver.url_for("/a.iso"))
    assert body["status"] == "failed"
    with run_tasks():
        assert api.post(f"{URL}/{body['id']}/retry").json()["status"] == "downloading"
    assert api.get(f"{URL}/{body['id']}").json()["status"] == "ready"


def test_delete_of_a_downloaded_iso_deletes_its_file(api, iso_dirs, run_tasks, httpserver, iso_bytes):
    httpserver.expect_request("/a.iso").respond_with_data(iso_bytes)
    body = start_download(api, run_tasks, httpserver.url_for("/a.iso"))
    assert Path(body["path"]).exists()
    assert api.delete(f"{URL}/{body['id']}").status_code == 204
    assert files_in(iso_dirs.download) == []


def test_download_to_a_name_that_exists_on_disk_is_a_conflict(api, iso_dirs, httpserver):
    (iso_dirs.download / "a.iso").write_bytes(b"someone else's")
    response = api.post(URL, {"url": httpserver.url_for("/a.iso")}, format="json")
    assert response.status_code == 409 and response.json()["field"] == "url"
    assert not IsoImage.objects.exists() and len(httpserver.log) == 0


def test_redirect_is_followed(api, iso_dirs, run_tasks, httpserver, iso_bytes):
    httpserver.expect_request("/latest.iso").respond_with_response(Response(status=302, headers={"Location": "/v2/real.iso"}))
    httpserver.expect_request("/v2/real.iso").respond_with_data(iso_bytes)
    body = start_download(api, run_tasks, httpserver.url_for("/latest.iso"))
    assert body["status"] == "ready" and body["name"] == "latest.iso"


# --- SSRF guard on ------------------------------------------------------------


@pytest.fixture
def guard_on(iso_dirs, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, download_allow_private=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost", "2130706433"])
def test_guard_refuses_loopback_urls_with_no_connection(api, guard_on, httpserver, host):
    url = f"http://{host}:{httpserver.port}/a.iso"
    response = api.post(URL, {"url": url}, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["field"] == "url" and response.json()["code"] == "url_refused"
    assert not IsoImage.objects.exists()
    assert httpserver.log == []


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3/a.iso", "http://169.254.169.254/latest/meta-data/", "ftp://127.0.0.1/a.iso", "file:///etc/passwd"]
)
def test_guard_refuses_private_and_odd_urls(api, guard_on, url, monkeypatch):
    import urllib3

    def no_connection(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(urllib3.HTTPConnectionPool, "urlopen", no_connection)
    response = api.post(URL, {"url": url}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "url"
    assert not IsoImage.objects.exists()


def test_guard_refuses_a_redirect_to_loopback_in_the_worker(api, iso_dirs, run_tasks, settings, iso_bytes, httpserver):
    """The first hop is allowed (an allow-listed mirror); its redirect is re-checked and refused."""
    from pytest_httpserver import HTTPServer

    mirror = HTTPServer(host="127.0.0.2", port=0)
    mirror.start()
    try:
        target = httpserver  # on 127.0.0.1, must never be contacted
        target.expect_request("/a.iso").respond_with_data(iso_bytes)
        mirror.expect_request("/a.iso").respond_with_handler(
            lambda request: Response(status=302, headers={"Location": target.url_for("/a.iso")})
        )
        settings.VAPOR = dataclasses.replace(settings.VAPOR, download_allow_private=False, download_allowed_networks=("127.0.0.2/32",))
        body = start_download(api, run_tasks, f"http://127.0.0.2:{mirror.port}/a.iso")
    finally:
        mirror.clear()
        mirror.stop()
    assert body["status"] == "failed"
    assert "127.0.0.1" in body["error"]
    assert target.log == []
    assert files_in(iso_dirs.download) == []


def test_settings_default_keeps_the_guard_on() -> None:
    from vaporsite import env

    assert env.load({}).download_allow_private is False
