"""The console pages in Chromium: their modules (the page's own, noVNC's and xterm.js's, all from
static files) load without an error, the ticket is taken out of the address bar, and without one the
page asks the ticket API (with the CSRF token) and follows its answer. The portal here is Django's
live server with the in-memory hypervisor: the ticket API and the websocket are stood in for by
Playwright, so only the pages are under test (the end-to-end console test is elsewhere)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, Route, expect

from tests.fakes import FakeDomain, FakeHypervisor
from tests.support.factories import VirtualMachineFactory
from vms.hypervisor.documents.domain import domain_xml
from vms.models import VirtualMachine
from vms.services.design import domain_spec

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PASSWORD = "console-browser-pw-4411"


@pytest.fixture
def vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VirtualMachine:
    """A running VM with a VNC display, and the superuser who opens it; made before the browser starts,
    since Playwright's event loop in this thread makes the ORM refuse to run after that."""
    User.objects.create_superuser("console-admin", "a@example.invalid", PASSWORD)
    fake = FakeHypervisor(pool_dir=tmp_path)
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", lambda uri=None: fake)
    machine = VirtualMachineFactory.create(name="console-page-vm", status="running", graphics_type="vnc")
    fake.domains[machine.name] = FakeDomain(xml=domain_xml(domain_spec(machine)), state="running")
    return machine


@pytest.fixture
def signed_in(vm: VirtualMachine, live_server, page: Page) -> Iterator[tuple[Page, str, list[str]]]:
    """The superuser's page on the live server, and its errors: uncaught exceptions and static files that
    did not load (the websocket and the ticket API have nothing behind them here: their failures are expected)."""
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "console-admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    page.wait_for_load_state("load")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: _static_failure(request, errors))
    page.on(
        "response",
        lambda response: errors.append(f"{response.status}: {response.url}")
        if response.status >= 400 and "/static/" in response.url
        else None,
    )
    yield page, live_server.url, errors


def _static_failure(request, errors: list[str]) -> None:
    """A static file that could not be fetched. A request Chromium itself cancelled (net::ERR_ABORTED: the
    favicon, low in its queue, when the page moves on or closes) is not one: a missing file is a 404 response,
    which the response handler records."""
    if "/static/" in request.url and "ERR_ABORTED" not in (request.failure or ""):
        errors.append(f"failed: {request.url} ({request.failure})")


def test_vnc_page_takes_the_ticket_out_of_the_address_and_opens_the_websocket_with_it(signed_in, vm):
    page, base, errors = signed_in
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(f"{base}/consoles/{vm.pk}/vnc/#ticket=T-from-the-api")
    expect(page.locator("#console-status")).to_contain_text("disconnected")  # nothing answers /ws/ here
    assert page.url == f"{base}/consoles/{vm.pk}/vnc/"
    assert sockets == [f"{base.replace('http', 'ws')}/ws/consoles/{vm.pk}/vnc?ticket=T-from-the-api"]
    assert page.evaluate("import(document.getElementById('vnc-screen').dataset.rfb).then(m => typeof m.default)") == "function"
    page.click("#vnc-scale")
    expect(page.locator("#vnc-scale")).to_have_text("Scale: 1:1")
    assert errors == []


def test_serial_page_asks_the_api_for_a_ticket_and_follows_a_read_only_answer(signed_in, vm):
    page, base, errors = signed_in
    asked: list[dict] = []

    def ticket_api(route: Route) -> None:
        request = route.request
        asked.append({"body": json.loads(request.post_data or "{}"), "csrf": request.headers.get("x-csrftoken", "")})
        answer = {"websocket": f"/ws/consoles/{vm.pk}/serial?ticket=T2", "ticket": "T2", "read_only": True, "type": "serial"}
        route.fulfill(status=201, content_type="application/json", body=json.dumps(answer))

    page.route(f"**/api/v1/virtualmachines/{vm.pk}/console", ticket_api)
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(f"{base}/consoles/{vm.pk}/serial/")
    expect(page.locator(".xterm")).to_have_count(1)
    expect(page.locator("#serial-read-only")).to_be_visible()
    expect(page.locator("#console-status")).to_contain_text("disconnected")
    assert asked and asked[0]["body"] == {"type": "serial", "read_only": False} and len(asked[0]["csrf"]) >= 32
    assert sockets == [f"{base.replace('http', 'ws')}/ws/consoles/{vm.pk}/serial?ticket=T2"]
    assert errors == []


def test_a_refused_ticket_is_said_on_the_status_line(signed_in, vm):
    page, base, errors = signed_in
    refusal = {"detail": "You do not have permission to perform this action.", "code": "permission_denied"}
    page.route(f"**/api/v1/virtualmachines/{vm.pk}/console", lambda route: route.fulfill(status=403, json=refusal))
    page.goto(f"{base}/consoles/{vm.pk}/vnc/")
    expect(page.locator("#console-status")).to_have_text(f"not connected: {refusal['detail']}")
    expect(page.locator("#console-reconnect")).to_be_visible()
    assert errors == []
