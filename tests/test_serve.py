"""The production server: the ASGI router (vaporsite/asgi.py), the static files, `manage.py serve` and its settings.

The router is driven in-process with fake applications; `manage.py serve` runs as a subprocess with a
database of its own (tests/support/serving.py), as scripts/run.sh starts it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.support import echo_asgi
from tests.support.serving import ROOT, free_port, manage, prepare_data_dir, serve_env, start_serve
from vaporsite import env
from vaporsite.asgi import Router

# --- the router, in-process ------------------------------------------------------------------------------------------


class Recorder:
    """An ASGI application that records the scopes it got and answers 204."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def run(router: Router, scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drive one connection: `incoming` are the messages the server would deliver, the result what the app sent."""
    sent: list[dict[str, Any]] = []
    queue = list(incoming)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)  # nothing more comes: a test that waits here is wrong
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(router(scope, receive, send), timeout=10))
    return sent


def websocket_scope(path: str, subprotocols: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": path,
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")],
        "scheme": "ws",
        "client": ("127.0.0.1", 5000),
        "subprotocols": list(subprotocols),
    }


ECHO = "tests.support.echo_asgi.application"


@pytest.fixture
def echo() -> Iterator[echo_asgi.EchoApplication]:
    fresh = echo_asgi.EchoApplication()
    original = echo_asgi.application
    echo_asgi.application = fresh
    yield fresh
    echo_asgi.application = original


def test_http_goes_to_django_when_no_static_file_answers():
    django, static_paths = Recorder(), []

    async def static(scope: dict[str, Any], receive: Any, send: Any) -> bool:
        static_paths.append(scope["path"])
        return False

    sent = run(Router(django, static), {"type": "http", "path": "/admin/", "method": "GET", "headers": []}, [])
    assert static_paths == ["/admin/"] and [s["path"] for s in django.scopes] == ["/admin/"]
    assert sent[0]["status"] == 204


def test_a_static_file_is_answered_without_django():
    django = Recorder()

    async def static(scope: dict[str, Any], receive: Any, send: Any) -> bool:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"css"})
        return True

    sent = run(Router(django, static), {"type": "http", "path": "/static/x.css", "method": "GET", "headers": []}, [])
    assert django.scopes == [] and sent[1]["body"] == b"css"


def test_a_websocket_under_ws_reaches_the_configured_application(settings, echo):
    settings.VAPOR_WEBSOCKET_APPLICATION = ECHO
    router = Router(Recorder())
    sent = run(
        router,
        websocket_scope("/ws/consoles/1/vnc", subprotocols=("binary",)),
        [{"type": "websocket.connect"}, {"type": "websocket.receive", "bytes": b"RFB"}, {"type": "websocket.disconnect", "code": 1000}],
    )
    assert sent[0] == {"type": "websocket.accept", "subprotocol": "binary"}
    assert sent[2] == {"type": "websocket.send", "bytes": b"RFB"}
    assert echo.connections == 1 and router.websocket is echo


@pytest.mark.parametrize("path", ["/", "/admin/", "/wsx/1", "/api/v1/ws/", "/ws"])
def test_a_websocket_elsewhere_is_closed_before_accept_and_imports_nothing(settings, echo, path: str):
    settings.VAPOR_WEBSOCKET_APPLICATION = ECHO
    router = Router(Recorder())
    sent = run(router, websocket_scope(path), [{"type": "websocket.connect"}])
    assert sent == [{"type": "websocket.close", "code": 1008}]  # before accept: the server answers 403
    assert router.websocket is None and echo.connections == 0


def test_a_websocket_application_that_cannot_be_imported_refuses_websockets_and_spares_http(settings, caplog):
    settings.VAPOR_WEBSOCKET_APPLICATION = "tests.support.no_such_module.application"
    django = Recorder()
    router = Router(django)
    assert run(router, {"type": "http", "path": "/", "method": "GET", "headers": []}, [])[0]["status"] == 204
    sent = run(router, websocket_scope("/ws/consoles/1/serial"), [{"type": "websocket.connect"}])
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert "no_such_module" in caplog.text
    assert run(router, {"type": "http", "path": "/", "method": "GET", "headers": []}, [])[0]["status"] == 204


def test_the_websocket_application_is_imported_on_the_first_websocket_only(settings):
    code = (
        "import sys; import vaporsite.asgi as a; "
        "print('tests.support.echo_asgi' in sys.modules, a.application.websocket is None, type(a.application).__name__)"
    )
    environ = serve_env(ROOT / "var" / "never-created", DJANGO_SETTINGS_MODULE="tests.support.serve_settings")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "Router"]


def test_lifespan_is_acknowledged_and_shutdown_closes_the_loaded_websocket_application(settings, echo):
    settings.VAPOR_WEBSOCKET_APPLICATION = ECHO
    router = Router(Recorder())
    run(router, websocket_scope("/ws/x"), [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}])
    sent = run(router, {"type": "lifespan"}, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert echo.closed


def test_lifespan_shutdown_imports_no_websocket_application_that_was_never_used(settings, echo):
    settings.VAPOR_WEBSOCKET_APPLICATION = ECHO
    router = Router(Recorder())
    sent = run(router, {"type": "lifespan"}, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert router.websocket is None and not echo.closed


def test_a_failing_aclose_reports_a_failed_shutdown(settings):
    class Failing:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            pass

        async def aclose(self) -> None:
            raise RuntimeError("stuck console")

    router = Router(Recorder())
    router.websocket = Failing()
    sent = run(router, {"type": "lifespan"}, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert sent[1] == {"type": "lifespan.shutdown.failed", "message": "stuck console"}


# --- the settings serve reads ----------------------------------------------------------------------------------------


def test_the_server_settings_have_safe_defaults(tmp_path: Path):
    config = env.load({"VAPOR_DATA_DIR": str(tmp_path)})
    assert config.web_listen == ("127.0.0.1", 8000)
    assert (config.web_workers, config.web_keepalive, config.web_graceful_timeout) == (2, 5, 10)
    assert config.forwarded_allow_ips == ("127.0.0.1",)
    assert config.problems == ()


def test_the_server_settings_are_read(tmp_path: Path):
    config = env.load(
        {
            "VAPOR_DATA_DIR": str(tmp_path),
            "VAPOR_LISTEN": "[::1]:9000",
            "VAPOR_WEB_WORKERS": "4",
            "VAPOR_WEB_KEEPALIVE": "30",
            "VAPOR_WEB_GRACEFUL_TIMEOUT": "60",
            "VAPOR_FORWARDED_ALLOW_IPS": "127.0.0.1, 10.0.0.0/8",
        }
    )
    assert config.problems == ()
    assert config.web_listen == ("::1", 9000)
    assert (config.web_workers, config.web_keepalive, config.web_graceful_timeout) == (4, 30, 60)
    assert config.forwarded_allow_ips == ("127.0.0.1", "10.0.0.0/8")


BAD_SERVER_VALUES = [
    ("VAPOR_LISTEN", "8000"),
    ("VAPOR_LISTEN", "127.0.0.1:0"),
    ("VAPOR_LISTEN", "127.0.0.1:65536"),
    ("VAPOR_LISTEN", "::1:8000"),
    ("VAPOR_LISTEN", "[127.0.0.1]:8000"),
    ("VAPOR_WEB_WORKERS", "0"),
    ("VAPOR_WEB_WORKERS", "two"),
    ("VAPOR_WEB_WORKERS", "65"),
    ("VAPOR_WEB_KEEPALIVE", "0"),
    ("VAPOR_WEB_KEEPALIVE", "1.5"),
    ("VAPOR_WEB_GRACEFUL_TIMEOUT", "-1"),
    ("VAPOR_FORWARDED_ALLOW_IPS", "nginx.local"),
    ("VAPOR_FORWARDED_ALLOW_IPS", " , "),
]


@pytest.mark.parametrize(("variable", "value"), BAD_SERVER_VALUES)
def test_a_bad_server_setting_is_a_problem_naming_its_variable(tmp_path: Path, variable: str, value: str):
    config = env.load({"VAPOR_DATA_DIR": str(tmp_path), variable: value})
    assert [problem.variable for problem in config.problems] == [variable]
    defaults = env.load({"VAPOR_DATA_DIR": str(tmp_path)})
    field = {
        "VAPOR_LISTEN": "web_listen",
        "VAPOR_WEB_WORKERS": "web_workers",
        "VAPOR_WEB_KEEPALIVE": "web_keepalive",
        "VAPOR_WEB_GRACEFUL_TIMEOUT": "web_graceful_timeout",
        "VAPOR_FORWARDED_ALLOW_IPS": "forwarded_allow_ips",
    }[variable]
    assert getattr(config, field) == getattr(defaults, field)  # the default stands in until it is fixed


# --- manage.py serve, as a subprocess -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database and collected static files, as scripts/setup.sh leaves them."""
    directory = tmp_path_factory.mktemp("serve") / "data"
    prepare_data_dir(directory)
    return directory


@pytest.mark.parametrize(("variable", "value"), [BAD_SERVER_VALUES[0], BAD_SERVER_VALUES[5], BAD_SERVER_VALUES[9], BAD_SERVER_VALUES[11]])
def test_serve_and_check_refuse_a_bad_server_setting(tmp_path: Path, variable: str, value: str):
    port = free_port()
    environ = serve_env(tmp_path, **{variable: value})
    for args in (("serve", "--bind", f"127.0.0.1:{port}"), ("check",)):
        result = manage(environ, *args, timeout=120)
        assert result.returncode != 0, result.stdout
        assert f"{variable} {value.strip()!r}" in result.stderr or f"{variable} {value!r}" in result.stderr, result.stderr
        assert "vapor.E001" in result.stderr


@pytest.mark.parametrize("bind", ["nowhere", "127.0.0.1:99999", "::1:8000"])
def test_serve_refuses_a_bad_bind_address(tmp_path: Path, bind: str):
    result = manage(serve_env(tmp_path), "serve", "--bind", bind, timeout=120)
    assert result.returncode != 0 and "--bind" in result.stderr, result.stderr


@pytest.mark.parametrize("where", ["--bind", "VAPOR_LISTEN"])
@pytest.mark.parametrize("address", ["0.0.0.0", "[::]", "192.0.2.10"])
def test_serve_refuses_debug_on_an_address_that_is_not_loopback(tmp_path: Path, address: str, where: str):
    listen = f"{address}:{free_port()}"
    environ = serve_env(tmp_path, VAPOR_DEBUG="1")
    if where == "--bind":
        result = manage(environ, "serve", "--bind", listen, timeout=120)
    else:
        environ["VAPOR_LISTEN"] = listen
        result = manage(environ, "serve", timeout=120)
    assert result.returncode != 0
    assert "VAPOR_DEBUG" in result.stderr and "loopback" in result.stderr, result.stderr
    assert f"listen on {listen}," in result.stderr


def _get(port: int, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_serve_serves_the_collected_static_files_with_debug_off(data_dir: Path, tmp_path: Path):
    css = (data_dir / "static" / "admin" / "css" / "base.css").read_bytes()
    with start_serve(data_dir, tmp_path / "serve.log") as served:
        status, headers, body = _get(served.port, "/static/admin/css/base.css")
        assert (status, body) == (200, css)
        assert headers["content-type"].startswith("text/css") and headers["content-length"] == str(len(css))
        assert "max-age=" in headers["cache-control"]
        status, headers, body = _get(served.port, "/static/admin/css/base.css", **{"Accept-Encoding": "gzip"})
        assert (status, headers["content-encoding"]) == (200, "gzip")
        assert body == (data_dir / "static" / "admin" / "css" / "base.css.gz").read_bytes()
        etag = headers["etag"]
        assert _get(served.port, "/static/admin/css/base.css", **{"If-None-Match": etag})[0] == 304
        status, headers, body = _get(served.port, "/static/admin/css/base.css", "HEAD")
        assert (status, body, headers["content-length"]) == (200, b"", str(len(css)))
        status, headers, body = _get(served.port, "/static/admin/css/base.css", **{"Range": "bytes=0-9"})
        assert (status, body) == (206, css[:10])
        # Not a static file: Django answers (its 404), and nothing outside STATIC_ROOT is reached.
        assert _get(served.port, "/static/admin/css/no-such.css")[0] == 404
        assert _get(served.port, "/static/../secret_key")[0] == 404
        assert _get(served.port, "/static/%2e%2e/secret_key")[0] == 404
        # A big one arrives whole (several chunks of the sender).
        status, _, body = _get(served.port, "/static/admin/js/vendor/jquery/jquery.js")
        assert status == 200 and body == (data_dir / "static" / "admin" / "js" / "vendor" / "jquery" / "jquery.js").read_bytes()
    assert "Warning" not in served.output() and "Traceback" not in served.output(), served.output()


def test_forwarded_proto_is_believed_only_from_the_allowed_proxies(data_dir: Path, tmp_path: Path):
    # With VAPOR_SSL_REDIRECT on, Django sends plain HTTP to https: a request it takes as secure gets the page.
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    with start_serve(data_dir, tmp_path / "trusted.log", VAPOR_SSL_REDIRECT="1") as served:
        assert _get(served.port, "/admin/login/")[0] == 301
        status, headers, _ = _get(served.port, "/admin/login/", **forwarded)
        assert status == 200 and "strict-transport-security" in headers
        assert _seen_by_websocket(served.port, forwarded)[:2] == ("wss", "203.0.113.9")
    with start_serve(data_dir, tmp_path / "untrusted.log", VAPOR_SSL_REDIRECT="1", VAPOR_FORWARDED_ALLOW_IPS="192.0.2.1") as served:
        assert _get(served.port, "/admin/login/", **forwarded)[0] == 301
        assert _seen_by_websocket(served.port, forwarded)[:2] == ("ws", "127.0.0.1")


def _seen_by_websocket(port: int, headers: dict[str, str]) -> tuple[str, str]:
    """The scheme and client address the echo application was given."""
    with connect(f"ws://127.0.0.1:{port}/ws/echo", additional_headers=headers, open_timeout=20) as websocket:
        seen = json.loads(websocket.recv(timeout=20))
    return seen["scheme"], seen["client"][0]


def test_serve_runs_websockets_and_its_shutdown_closes_the_websocket_application(data_dir: Path, tmp_path: Path):
    marker = tmp_path / "closed"
    with start_serve(data_dir, tmp_path / "serve.log", VAPOR_WEB_WORKERS="1", VAPOR_TEST_ECHO_CLOSED=str(marker)) as served:
        origin = f"http://127.0.0.1:{served.port}"
        with connect(f"ws://127.0.0.1:{served.port}/ws/echo", origin=Origin(origin), open_timeout=20) as websocket:
            assert '"scheme": "ws"' in str(websocket.recv(timeout=20))
            assert websocket.protocol.extensions == []  # the client offered permessage-deflate; the server declines it
            websocket.send(b"\x00\x01\x02")
            assert websocket.recv(timeout=20) == b"\x00\x01\x02"
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{served.port}/admin/", origin=Origin(origin), open_timeout=20)
        assert refused.value.response.status_code == 403
        assert not marker.exists()
        assert served.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert marker.read_text() == "closed\n", served.output()


def test_serve_with_several_workers_answers(data_dir: Path, tmp_path: Path):
    with start_serve(data_dir, tmp_path / "serve.log", VAPOR_WEB_WORKERS="3") as served:
        assert all(_get(served.port, "/admin/login/")[0] == 200 for _ in range(6))
    assert served.output().count("Application startup complete") == 3, served.output()
