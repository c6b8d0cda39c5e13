"""Vapor behind nginx with TLS, as docs/nginx.md describes: `manage.py serve` and nginx, both real.

nginx runs docs/nginx.conf.example itself (tests/support/serving.py renders it with this test's
ports and certificate) in front of `manage.py serve`, on loopback ports of their own, with a CA
and a certificate this test makes. A client that trusts only that CA then logs in to the admin
over https (a CSRF-protected POST: it works only if Django sees the request as secure), fetches
the admin's CSS, and talks to the test echo application over wss:// (tests/support/echo_asgi.py
stands in for the consoles), which reports the scheme, Host and Origin that reached it.

No libvirtd is needed. nginx is installed by scripts/setup.sh; without it this test skips on a
workstation and fails under CI.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin, Subprotocol

from tests.conftest import skip_or_fail_in_ci
from tests.support.serving import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    Certificates,
    Nginx,
    Served,
    make_certificates,
    manage,
    nginx_binary,
    prepare_data_dir,
    serve_env,
    start_nginx,
    start_serve,
)

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    nginx: Nginx
    served: Served
    certificates: Certificates
    tls: ssl.SSLContext  # trusts the test CA only
    data_dir: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = nginx_binary()
    if binary is None:
        skip_or_fail_in_ci("nginx is not installed (scripts/setup.sh installs it)")
    assert binary is not None
    base = tmp_path_factory.mktemp("nginx-tls")
    data_dir = base / "data"
    prepare_data_dir(data_dir)
    isos = base / "isos"  # where an upload lands
    isos.mkdir()
    certificates = make_certificates(base)
    tls = ssl.create_default_context(cafile=str(certificates.ca))
    # A host name of its own would turn these on by default (vaporsite/env.py); here they prove Django
    # sees https: over plain HTTP the redirect would loop and the secure cookies would not come back.
    with (
        start_serve(
            data_dir,
            base / "serve.log",
            VAPOR_WEB_WORKERS="2",
            VAPOR_SSL_REDIRECT="1",
            VAPOR_SECURE_COOKIES="1",
            VAPOR_ISO_DIRS=str(isos),
            VAPOR_ISO_DOWNLOAD_DIR=str(isos),
        ) as served,
        start_nginx(binary, base / "nginx", upstream_port=served.port, certificates=certificates) as nginx,
    ):
        yield Stack(nginx, served, certificates, tls, data_dir)


def _https(stack: Stack) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", stack.nginx.https_port, context=stack.tls, timeout=20)


def _cookies(response: http.client.HTTPResponse) -> SimpleCookie:
    jar = SimpleCookie()
    for header in response.headers.get_all("Set-Cookie") or []:
        jar.load(header)
    return jar


def test_the_certificate_is_checked_against_the_test_ca_only(stack: Stack, tmp_path: Path):
    other = make_certificates(tmp_path)  # another CA, which did not sign nginx's certificate
    connection = http.client.HTTPSConnection(
        "127.0.0.1", stack.nginx.https_port, context=ssl.create_default_context(cafile=str(other.ca)), timeout=20
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        connection.request("GET", "/admin/login/")
    connection.close()


def test_admin_login_page_and_its_css_over_https(stack: Stack):
    connection = _https(stack)
    connection.request("GET", "/admin/login/")
    response = connection.getresponse()
    page = response.read().decode()
    assert response.status == 200, page[:500]
    assert "strict-transport-security" in {name.lower() for name in response.headers}  # Django's, over https
    css = re.search(r'href="(/static/admin/css/[^"]+\.css)"', page)
    assert css, "the login page links no admin CSS"
    connection.request("GET", css.group(1), headers={"Accept-Encoding": "gzip"})
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/css")
    assert response.headers["Content-Encoding"] == "gzip"  # collectstatic's variant, chosen by whitenoise
    connection.request("GET", "/static/admin/css/base.css")
    response = connection.getresponse()
    assert response.status == 200 and b"body" in response.read()
    assert len(body) > 0
    connection.close()


def test_a_csrf_protected_login_post_works_over_https(stack: Stack):
    origin = stack.nginx.url
    connection = _https(stack)
    connection.request("GET", "/admin/login/")
    response = connection.getresponse()
    page = response.read().decode()
    jar = _cookies(response)
    assert jar["csrftoken"]["secure"], "the CSRF cookie is secure (VAPOR_SECURE_COOKIES)"
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token
    body = urlencode({"csrfmiddlewaretoken": token.group(1), "username": ADMIN_USER, "password": ADMIN_PASSWORD, "next": "/admin/"})
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"csrftoken={jar['csrftoken'].value}",
        "Origin": origin,  # Django compares it with https://<Host>: it matches only if Django sees https and the Host with its port
        "Referer": f"{origin}/admin/login/",
    }
    connection.request("POST", "/admin/login/", body=body, headers=headers)
    response = connection.getresponse()
    answer = response.read().decode()
    assert response.status == 302, answer[:1000]
    assert response.headers["Location"] == "/admin/"
    session = _cookies(response)["sessionid"]
    assert session["secure"] and session["httponly"]
    connection.request("GET", "/admin/", headers={"Cookie": f"sessionid={session.value}"})
    response = connection.getresponse()
    assert response.status == 200, response.headers.get("Location")
    assert ADMIN_USER in response.read().decode()
    connection.close()


def test_a_foreign_origin_is_refused_by_csrf_over_https(stack: Stack):
    """The same POST from another origin fails: the previous test passes because the origin matched."""
    connection = _https(stack)
    connection.request("GET", "/admin/login/")
    response = connection.getresponse()
    page = response.read().decode()
    jar = _cookies(response)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token
    body = urlencode({"csrfmiddlewaretoken": token.group(1), "username": ADMIN_USER, "password": ADMIN_PASSWORD})
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"csrftoken={jar['csrftoken'].value}",
        "Origin": "https://evil.example",
    }
    connection.request("POST", "/admin/login/", body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    assert response.status == 403
    connection.close()


def test_plain_http_on_nginx_is_sent_to_https(stack: Stack):
    connection = http.client.HTTPConnection("127.0.0.1", stack.nginx.http_port, timeout=20)
    connection.request("GET", "/admin/login/")
    response = connection.getresponse()
    response.read()
    assert response.status == 301
    assert response.headers["Location"].startswith("https://127.0.0.1")
    connection.close()


def test_websocket_echo_over_wss_with_origin_host_and_scheme_unchanged(stack: Stack):
    origin = stack.nginx.url
    uri = f"wss://127.0.0.1:{stack.nginx.https_port}/ws/consoles/7/serial?ticket=abc"
    with connect(uri, ssl=stack.tls, origin=Origin(origin), subprotocols=[Subprotocol("binary")], open_timeout=20) as websocket:
        assert websocket.subprotocol == "binary"
        seen = json.loads(websocket.recv(timeout=20))
        assert seen["scheme"] == "wss"  # X-Forwarded-Proto, believed from nginx on 127.0.0.1
        assert seen["origin"] == origin  # unchanged: the consoles compare it with the Host
        assert seen["host"] == f"127.0.0.1:{stack.nginx.https_port}"
        assert seen["path"] == "/ws/consoles/7/serial" and seen["query"] == "ticket=abc"
        payload = bytes(range(256)) * 64
        websocket.send(payload)
        assert websocket.recv(timeout=20) == payload
        websocket.send("ls -l\r")
        assert websocket.recv(timeout=20) == "ls -l\r"


def test_a_websocket_outside_ws_is_not_upgraded_through_nginx(stack: Stack):
    """nginx hands the upgrade on under /ws/ only; elsewhere the request reaches Django as a plain GET."""
    with pytest.raises(InvalidStatus) as refused:
        connect(f"wss://127.0.0.1:{stack.nginx.https_port}/admin/login/", ssl=stack.tls, origin=Origin(stack.nginx.url), open_timeout=20)
    assert refused.value.response.status_code == 200  # the login page, not an upgrade
    assert b"csrfmiddlewaretoken" in refused.value.response.body


def test_an_iso_upload_chunk_of_8_mib_passes_nginx_where_other_bodies_stop_at_2_mib(stack: Stack, tmp_path: Path):
    from tests.support.isos import make_iso

    made = manage(
        serve_env(stack.data_dir),
        "shell",
        "-c",
        "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token; "
        f"print(Token.objects.get_or_create(user=User.objects.get(username={ADMIN_USER!r}))[0].key)",
    )
    assert made.returncode == 0, made.stderr
    auth = {"Authorization": f"Token {made.stdout.split()[-1]}"}
    data = make_iso(tmp_path / "nginx.iso", size_padding=9 * 1024 * 1024).read_bytes()
    connection = _https(stack)
    connection.request(
        "POST",
        "/api/v1/virtualmachines/isos/uploads",
        body=json.dumps({"filename": "through-nginx.iso", "size": len(data)}),
        headers={**auth, "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    raw = response.read()
    assert response.status == 201, (response.status, response.headers, raw[:500])
    created = json.loads(raw)
    chunk = 8 * 1024 * 1024
    for first in (0, chunk):
        part = data[first : first + chunk]
        headers = {
            **auth,
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {first}-{first + len(part) - 1}/{len(data)}",
        }
        connection.request("PUT", f"/api/v1/virtualmachines/isos/uploads/{created['id']}", body=part, headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status in (200, 201), answer
    assert answer["iso"] and answer["offset"] == len(data)
    # Elsewhere nginx still stops a body past its 2 MiB.
    connection.request(
        "POST", "/api/v1/virtualmachines/isos", body=b"x" * (3 * 1024 * 1024), headers={**auth, "Content-Type": "application/json"}
    )
    response = connection.getresponse()
    response.read()
    assert response.status == 413
    connection.close()
