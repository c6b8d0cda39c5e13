"""Kept libvirt connections (issue 15, point 2): one per host and process, opening bounded, a silent host
not asked again for a while, a refusing one asked again at once. libvirt.open is stood in for, so the
timings here are the adapter's own; tests/multihost shows the same against real daemons."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import libvirt
import pytest
from django.conf import settings as django_settings

from vaporsite.errors import ServiceUnavailable
from vms import hypervisor
from vms.hypervisor import _connection

REMOTE = "qemu+tcp://10.99.9.2/system"


class FakeConn:
    def __init__(self) -> None:
        self.keepalive: tuple[int, int] | None = None
        self.closed = False

    def isAlive(self) -> int:
        return 0 if self.closed else 1

    def setKeepAlive(self, interval: int, count: int) -> int:
        self.keepalive = (interval, count)
        return 0

    def close(self) -> int:
        self.closed = True
        return 0

    def listAllDomains(self, flags: int) -> list[Any]:
        return []


@pytest.fixture
def timing(settings) -> None:
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, host_connect_timeout=0.3, host_retry_after=0.6, host_keepalive=7)


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What libvirt.open was asked for; it answers as `behaviour[uri]` says (a FakeConn by default)."""
    asked: list[str] = []

    def opener(uri: str) -> FakeConn:
        asked.append(uri)
        return BEHAVIOUR.get(uri, FakeConn)()

    monkeypatch.setattr(_connection.libvirt, "open", opener)
    monkeypatch.setattr(hypervisor, "_kept", {})
    return asked


BEHAVIOUR: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _behaviour() -> Any:
    BEHAVIOUR.clear()
    yield
    BEHAVIOUR.clear()


def test_one_driver_is_kept_per_uri_and_its_close_does_not_close_it(opens, timing) -> None:
    first = hypervisor.get_hypervisor(REMOTE)
    first.list_domain_names()
    first.close()
    again = hypervisor.get_hypervisor(REMOTE)
    again.list_domain_names()
    assert again is first and opens == [REMOTE]  # one open for two requests
    assert hypervisor.get_hypervisor("test:///default") is not first
    hypervisor.forget_hypervisors()
    hypervisor.get_hypervisor(REMOTE).list_domain_names()
    assert opens == [REMOTE, REMOTE]  # forgotten: the next request opens anew


def test_a_forked_process_does_not_use_its_parents_driver(opens, timing, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = hypervisor.get_hypervisor(REMOTE)
    monkeypatch.setattr(hypervisor, "_kept_pid", -1)  # as if this process were a child of the one that kept it
    assert hypervisor.get_hypervisor(REMOTE) is not parent


def test_a_remote_connection_gets_keepalive(opens, timing) -> None:
    driver = hypervisor.get_hypervisor(REMOTE)
    conn = driver._connection()  # type: ignore[attr-defined]
    assert conn.keepalive == (7, 3)


def test_a_host_that_does_not_answer_is_bounded_then_not_asked_again_for_a_while(opens, timing) -> None:
    release = threading.Event()

    def silent() -> FakeConn:
        release.wait(5)
        return FakeConn()

    BEHAVIOUR[REMOTE] = silent
    driver = hypervisor.get_hypervisor(REMOTE)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="no answer within 0.3 s"):
        driver.list_domain_names()
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="not retried for another"):
        driver.list_domain_names()
    assert time.monotonic() - started < 0.1 and opens == [REMOTE]  # failed at once, without asking the host
    release.set()
    BEHAVIOUR[REMOTE] = FakeConn
    time.sleep(0.7)  # the retry window is over: asked again, and it answers
    assert driver.list_domain_names() == []
    assert opens == [REMOTE, REMOTE]


def test_a_host_that_refuses_at_once_is_asked_again_on_the_next_call(opens, timing) -> None:
    def refused() -> FakeConn:
        raise libvirt.libvirtError("unable to connect to server at '10.99.9.2:16509': Connection refused")

    BEHAVIOUR[REMOTE] = refused
    driver = hypervisor.get_hypervisor(REMOTE)
    for _ in range(2):
        with pytest.raises(ServiceUnavailable, match="Connection refused"):
            driver.list_domain_names()
    BEHAVIOUR[REMOTE] = FakeConn  # the daemon is back
    assert driver.list_domain_names() == []
    assert opens == [REMOTE] * 3


def test_a_dead_kept_connection_is_reopened(opens, timing) -> None:
    driver = hypervisor.get_hypervisor(REMOTE)
    conn = driver._connection()  # type: ignore[attr-defined]
    conn.closed = True  # keepalive or the daemon closed it
    assert driver._connection() is not conn  # type: ignore[attr-defined]
    assert opens == [REMOTE, REMOTE]


def test_a_command_that_used_a_kept_connection_exits_without_a_traceback():
    """The kept connections are closed at exit: left to the garbage collector, libvirt-python's finaliser ran
    after its module was torn down and every management command that had asked the host (set-up's
    vapor_bootstrap among them) ended with "Exception ignored in: virConnect.__del__" on stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = "from vms.hypervisor import get_hypervisor; print(get_hypervisor().list_domain_names())"
    env = {**os.environ, "VAPOR_LIBVIRT_URI": "test:///default"}
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v0", "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "test" in result.stdout  # the test driver's one domain: the connection was used
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr
