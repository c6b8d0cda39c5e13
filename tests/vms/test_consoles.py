"""Browser consoles against the in-memory hypervisor: tickets from the API, the websocket's checks, the
bytes it carries and the sessions it records (the real daemon: tests/integration/test_consoles_real.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from datetime import datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from projects.choices import Role
from tests.fakes import RFB_BANNER, FakeDomain, FakeHypervisor
from tests.support.asgi_ws import close_async_connections, ws_session
from tests.support.factories import AdminFactory, UserFactory, VirtualMachineFactory
from tests.support.projects import join
from tests.vms.test_domain_xml import example_1
from vms.consoles import websocket
from vms.consoles.websocket import application
from vms.hypervisor.documents.domain import domain_xml
from vms.hypervisor.specs import GraphicsSpec
from vms.models import ConsoleTicket, VirtualMachine, VmEvent
from vms.services.lifecycle import _delete_row

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures(close_async_connections.__name__)]

VNC_PASSWORD = "vnc-Pa55-never-shown"


@pytest.fixture
def consoles(hv: FakeHypervisor, monkeypatch: pytest.MonkeyPatch, settings) -> FakeHypervisor:
    """The fake serves the websocket's consoles too; the watcher looks every 50 ms."""
    monkeypatch.setattr("vms.hypervisor.console_hypervisor", lambda uri=None: hv)
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, console_check_interval=0.05)
    return hv


def running_vm(hv: FakeHypervisor, *, graphics: GraphicsSpec | None = None, state: str = "running", **fields: Any) -> VirtualMachine:
    vm = VirtualMachineFactory.create(**fields)
    spec = dataclasses.replace(
        example_1(), name=vm.name, graphics=graphics if graphics is not None else GraphicsSpec(password=VNC_PASSWORD)
    )
    hv.domains[vm.name] = FakeDomain(domain_xml(spec), state=state)
    return vm


def api_as(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def ticket_for(user: User, vm: VirtualMachine, type: str = "vnc", **body: Any) -> dict[str, Any]:
    response = api_as(user).post(f"/api/v1/virtualmachines/{vm.pk}/console", {"type": type, **body}, format="json")
    assert response.status_code == 201, response.json()
    return dict(response.json())


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# --- tickets from the API --------------------------------------------------------------------------------


def test_a_ticket_names_the_page_and_the_websocket_and_is_kept_only_as_a_hash(consoles: FakeHypervisor):
    admin = AdminFactory.create()
    vm = running_vm(consoles)
    before = timezone.now()

    body = ticket_for(admin, vm, "vnc")

    ticket = body["ticket"]
    assert len(ticket) >= 43  # 32 random bytes, base64
    assert body["url"] == f"/consoles/{vm.pk}/vnc/#ticket={ticket}"
    assert body["websocket"] == f"/ws/consoles/{vm.pk}/vnc?ticket={ticket}"
    assert (body["type"], body["read_only"]) == ("vnc", False)
    expires = datetime.fromisoformat(body["expires_at"])
    assert before < expires <= before + timedelta(seconds=61)
    row = ConsoleTicket.objects.get()
    assert row.token_hash == hashlib.sha256(ticket.encode()).hexdigest()
    assert ticket not in str([getattr(row, f.attname) for f in ConsoleTicket._meta.fields])
    assert (row.user, row.vm, row.type, row.used_at) == (admin, vm, "vnc", None)


def test_tickets_are_random_and_their_life_is_bounded(consoles: FakeHypervisor, settings):
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, console_ticket_ttl=5)
    admin = AdminFactory.create()
    vm = running_vm(consoles)
    tickets = {ticket_for(admin, vm)["ticket"] for _ in range(5)}
    assert len(tickets) == 5
    row = ConsoleTicket.objects.first()
    assert row is not None and (row.expires_at - row.created_at) <= timedelta(seconds=5.5)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "rdp"}, "type"),
        ({}, "type"),
        ({"type": "vnc", "colour": 1}, "colour"),
        ({"type": "serial", "read_only": "maybe"}, "read_only"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(consoles: FakeHypervisor, body: dict[str, Any], field: str):
    vm = running_vm(consoles)
    response = api_as(AdminFactory.create()).post(f"/api/v1/virtualmachines/{vm.pk}/console", body, format="json")
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert not ConsoleTicket.objects.exists()


def test_an_unknown_vm_is_a_404(consoles: FakeHypervisor):
    response = api_as(AdminFactory.create()).post("/api/v1/virtualmachines/999999/console", {"type": "vnc"}, format="json")
    assert response.status_code == 404


@pytest.mark.parametrize("state", ["shutoff", "crashed", "pmsuspended"])
def test_a_vm_that_is_not_running_is_a_409_with_its_state(consoles: FakeHypervisor, state: str):
    vm = running_vm(consoles, state=state)
    response = api_as(AdminFactory.create()).post(f"/api/v1/virtualmachines/{vm.pk}/console", {"type": "serial"}, format="json")
    assert response.status_code == 409
    assert (response.json()["code"], response.json()["state"]) == ("not_running", state)
    assert not ConsoleTicket.objects.exists()


def test_a_vm_whose_domain_is_gone_is_a_409_missing(consoles: FakeHypervisor):
    vm = VirtualMachineFactory.create()
    response = api_as(AdminFactory.create()).post(f"/api/v1/virtualmachines/{vm.pk}/console", {"type": "vnc"}, format="json")
    assert (response.status_code, response.json()["state"]) == (409, "missing")


@pytest.mark.parametrize(("graphics", "says"), [(GraphicsSpec(type="spice"), "spice"), (None, "none")])
def test_a_vnc_console_of_a_vm_without_vnc_is_a_409_saying_what_it_has(consoles: FakeHypervisor, graphics: GraphicsSpec | None, says: str):
    vm = VirtualMachineFactory.create()
    spec = dataclasses.replace(example_1(), name=vm.name, graphics=graphics)
    consoles.domains[vm.name] = FakeDomain(domain_xml(spec), state="running")
    client = api_as(AdminFactory.create())

    response = client.post(f"/api/v1/virtualmachines/{vm.pk}/console", {"type": "vnc"}, format="json")

    assert response.status_code == 409
    assert (response.json()["code"], response.json()["graphics"]) == ("no_vnc", says)
    assert "serial console" in response.json()["detail"]
    assert client.post(f"/api/v1/virtualmachines/{vm.pk}/console", {"type": "serial"}, format="json").status_code == 201


def test_who_gets_a_ticket(consoles: FakeHypervisor):
    vm = running_vm(consoles)
    operator, viewer, outsider, watcher = (UserFactory.create() for _ in range(4))
    join(operator, Role.OPERATOR)
    join(viewer, Role.VIEWER)
    join(outsider, Role.OPERATOR, "elsewhere")
    join(watcher, Role.VIEWER)
    watcher.user_permissions.add(Permission.objects.get(codename="watch_console"))

    def status(user: User, type: str, **body: Any) -> int:
        return api_as(user).post(f"/api/v1/virtualmachines/{vm.pk}/console", {"type": type, **body}, format="json").status_code

    assert status(operator, "vnc") == 201 and status(operator, "serial") == 201
    assert status(viewer, "vnc") == 403 and status(viewer, "serial") == 403  # view-only: no console by default
    assert status(outsider, "vnc") == 404  # not theirs to know of
    assert status(watcher, "vnc") == 403  # a graphical console cannot be watched without typing
    assert status(watcher, "serial") == 201
    assert ticket_for(watcher, vm, "serial")["read_only"] is True
    assert ticket_for(operator, vm, "serial", read_only=True)["read_only"] is True
    assert APIClient().post(f"/api/v1/virtualmachines/{vm.pk}/console", {"type": "vnc"}, format="json").status_code in (401, 403)


def test_the_vnc_password_is_in_no_response_or_ticket(consoles: FakeHypervisor):
    admin = AdminFactory.create()
    vm = running_vm(consoles)
    client = api_as(admin)
    bodies = [
        client.post(f"/api/v1/virtualmachines/{vm.pk}/console", {"type": "vnc"}, format="json").content,
        client.get(f"/api/v1/virtualmachines/{vm.pk}").content,
    ]
    assert all(VNC_PASSWORD.encode() not in body for body in bodies)
    assert all(VNC_PASSWORD not in str(row.__dict__) for row in ConsoleTicket.objects.all())


# --- the websocket ---------------------------------------------------------------------------------------


def test_vnc_bytes_go_both_ways_as_binary_frames_and_the_session_is_recorded(consoles: FakeHypervisor):
    admin = AdminFactory.create(username="alice")
    vm = running_vm(consoles)
    body = ticket_for(admin, vm)

    async def scenario() -> None:
        async with ws_session(application, body["websocket"], subprotocols=("binary",)) as ws:
            accepted = await ws.next()
            assert accepted == {"type": "websocket.accept", "subprotocol": "binary"}
            assert await ws.received(lambda d: len(d) >= len(RFB_BANNER)) == RFB_BANNER
            await ws.send(b"RFB 003.008\n")
            assert await ws.received(lambda d: len(d) >= 12) == b"RFB 003.008\n"

    run(scenario())
    assert bytes(consoles.vnc_received[vm.name]) == b"RFB 003.008\n"
    events = list(VmEvent.objects.filter(vm=vm, step="console vnc").order_by("id"))
    assert [e.user for e in events] == [admin, admin]
    assert "alice opened the vnc console (read-write)" in events[0].message
    assert "closed: open from" in events[1].message and "the browser closed it" in events[1].message
    assert events[0].source_address == "127.0.0.1"


def test_serial_bytes_and_text_frames_reach_the_port(consoles: FakeHypervisor):
    admin = AdminFactory.create()
    vm = running_vm(consoles)
    body = ticket_for(admin, vm, "serial")

    async def scenario() -> None:
        async with ws_session(application, body["websocket"]) as ws:
            assert (await ws.next())["type"] == "websocket.accept"
            await ws.send(b"echo hi\r")
            assert await ws.received(lambda d: d.endswith(b"\r")) == b"echo hi\r"
            await ws.send("ls\r")
            assert await ws.received(lambda d: d.endswith(b"\r")) == b"ls\r"

    run(scenario())
    assert bytes(consoles.serials.get(vm.name, [])[0].written) == b"echo hi\rls\r"


def test_a_read_only_session_shows_the_port_but_drops_what_is_typed(consoles: FakeHypervisor):
    watcher = UserFactory.create()
    join(watcher, Role.VIEWER)
    watcher.user_permissions.add(Permission.objects.get(codename="watch_console"))
    typist = AdminFactory.create()
    vm = running_vm(consoles)
    watching, typing = ticket_for(watcher, vm, "serial"), ticket_for(typist, vm, "serial")

    async def scenario() -> None:
        async with ws_session(application, watching["websocket"]) as watch, ws_session(application, typing["websocket"]) as type_:
            assert (await watch.next())["type"] == (await type_.next())["type"] == "websocket.accept"
            await watch.send(b"rm -rf /\r")
            await type_.send(b"uptime\r")
            # Both see the port's output (one stream, shared), only the typist's bytes reached it.
            assert await watch.received(lambda d: d.endswith(b"\r")) == b"uptime\r"
            assert await type_.received(lambda d: d.endswith(b"\r")) == b"uptime\r"

    run(scenario())
    serial = consoles.serials[vm.name]
    assert len(serial) == 1 and bytes(serial[0].written) == b"uptime\r"
    assert serial[0].closed  # the last one out closed the stream
    assert "(read-only)" in VmEvent.objects.filter(vm=vm, user=watcher).first().message  # type: ignore[union-attr]


def _refused(consoles: FakeHypervisor, vm: VirtualMachine, path: str, **scope: Any) -> dict[str, Any]:
    async def scenario() -> dict[str, Any]:
        async with ws_session(application, path, **scope) as ws:
            start = await ws.next()
            body = await ws.next() if start["type"] == "websocket.http.response.start" else {}
            return {"start": start, "body": body}

    result: dict[str, Any] = run(scenario())
    assert result["start"]["type"] == "websocket.http.response.start" and result["start"]["status"] == 403, result
    assert consoles.calls["open_graphics"] == consoles.calls["open_serial"] == 0  # nothing reached the guest
    assert not consoles.vnc_received.get(vm.name)
    return dict(result["body"])


def test_a_ticket_opens_one_console_once(consoles: FakeHypervisor):
    admin = AdminFactory.create()
    vm = running_vm(consoles)
    body = ticket_for(admin, vm)
    consoles.domains[vm.name].state = "running"
    run(_open_and_close(body["websocket"]))
    consoles.calls.clear()
    consoles.vnc_received.clear()
    assert b"already used" in _refused(consoles, vm, body["websocket"])["body"]


async def _open_and_close(path: str) -> None:
    async with ws_session(application, path) as ws:
        assert (await ws.next())["type"] == "websocket.accept"


def test_an_expired_ticket_is_refused(consoles: FakeHypervisor):
    vm = running_vm(consoles)
    body = ticket_for(AdminFactory.create(), vm)
    ConsoleTicket.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert b"expired" in _refused(consoles, vm, body["websocket"])["body"]


@pytest.mark.parametrize("mangle", ["other-vm", "other-type", "no-ticket", "unknown-ticket", "bad-path"])
def test_a_ticket_used_elsewhere_is_refused_and_spent(consoles: FakeHypervisor, mangle: str):
    admin = AdminFactory.create()
    vm, other = running_vm(consoles), running_vm(consoles)
    ticket = ticket_for(admin, vm)["ticket"]
    path = {
        "other-vm": f"/ws/consoles/{other.pk}/vnc?ticket={ticket}",
        "other-type": f"/ws/consoles/{vm.pk}/serial?ticket={ticket}",
        "no-ticket": f"/ws/consoles/{vm.pk}/vnc",
        "unknown-ticket": f"/ws/consoles/{vm.pk}/vnc?ticket=x{ticket[1:]}",
        "bad-path": f"/ws/consoles/{vm.pk}/rdp?ticket={ticket}",
    }[mangle]
    reason = _refused(consoles, vm, path)["body"]
    assert b"console refused" in reason
    if mangle in ("other-vm", "other-type"):
        assert ConsoleTicket.objects.get().used_at is not None  # one try, whatever its outcome
        assert b"already used" in _refused(consoles, vm, f"/ws/consoles/{vm.pk}/vnc?ticket={ticket}")["body"]


@pytest.mark.parametrize(
    "origin",
    [None, "http://evil.example", "http://testserver.evil.example", "null", "https://testserver:8443", "http://testserver@evil.example"],
)
def test_a_foreign_or_missing_origin_is_refused(consoles: FakeHypervisor, origin: str | None):
    vm = running_vm(consoles)
    body = ticket_for(AdminFactory.create(), vm)
    assert b"Origin" in _refused(consoles, vm, body["websocket"], origin=origin)["body"]


def test_an_http_page_cannot_open_a_wss_console(consoles: FakeHypervisor):
    vm = running_vm(consoles)
    body = ticket_for(AdminFactory.create(), vm)
    _refused(consoles, vm, body["websocket"], origin="http://testserver", scheme="wss")


def test_a_ticket_from_another_users_session_is_refused(consoles: FakeHypervisor):
    alice, mallory = AdminFactory.create(), AdminFactory.create()
    vm = running_vm(consoles)
    body = ticket_for(alice, vm)
    browser = Client()
    browser.force_login(mallory)
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={browser.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    assert b"another user" in _refused(consoles, vm, body["websocket"], cookie=cookie)["body"]


def test_the_ticket_owners_own_session_is_welcome(consoles: FakeHypervisor):
    alice = AdminFactory.create()
    vm = running_vm(consoles)
    body = ticket_for(alice, vm)
    browser = Client()
    browser.force_login(alice)
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={browser.cookies[django_settings.SESSION_COOKIE_NAME].value}"

    async def scenario() -> None:
        async with ws_session(application, body["websocket"], cookie=cookie) as ws:
            assert (await ws.next())["type"] == "websocket.accept"

    run(scenario())


def test_access_withdrawn_between_issue_and_use_is_refused(consoles: FakeHypervisor):
    operator = UserFactory.create()
    membership = join(operator, Role.OPERATOR)
    vm = running_vm(consoles)
    body = ticket_for(operator, vm)
    membership.role = Role.VIEWER
    membership.save()
    assert b"access withdrawn" in _refused(consoles, vm, body["websocket"])["body"]


def test_without_the_http_response_extension_a_refusal_is_a_close(consoles: FakeHypervisor):
    vm = running_vm(consoles)

    async def scenario() -> dict[str, Any]:
        async with ws_session(application, f"/ws/consoles/{vm.pk}/vnc?ticket=nope", http_response_extension=False) as ws:
            return await ws.next()

    assert run(scenario()) == {"type": "websocket.close", "code": 1008}


# --- consoles that end ------------------------------------------------------------------------------------


def _session_until_closed(path: str, during: Any) -> dict[str, Any]:
    async def scenario() -> dict[str, Any]:
        async with ws_session(application, path) as ws:
            assert (await ws.next())["type"] == "websocket.accept"
            # In the thread the websocket's own database work runs in: the test database (SQLite in memory,
            # shared cache) has table locks that fail at once instead of waiting.
            await sync_to_async(during)()
            while True:
                message = await ws.next(timeout=5)
                if message["type"] == "websocket.close":
                    return message

    result: dict[str, Any] = run(scenario())
    return result


@pytest.mark.parametrize("type", ["vnc", "serial"])
def test_a_console_closes_when_its_vm_stops(consoles: FakeHypervisor, type: str):
    admin = AdminFactory.create()
    vm = running_vm(consoles)
    closed = _session_until_closed(ticket_for(admin, vm, type)["websocket"], lambda: consoles.destroy_domain(vm.name))
    assert closed["code"] == 1000 and "VM stopped" in closed["reason"]
    assert "VM stopped" in VmEvent.objects.filter(vm=vm, step=f"console {type}").last().message  # type: ignore[union-attr]


def test_a_console_closes_when_its_vm_is_deleted(consoles: FakeHypervisor):
    admin = AdminFactory.create()
    vm = running_vm(consoles)
    path = ticket_for(admin, vm, "serial")["websocket"]
    closed = _session_until_closed(path, lambda: _delete_row(vm))
    assert (closed["code"], closed["reason"]) == (4004, "the VM was deleted")


def test_a_console_closes_when_its_user_is_deactivated(consoles: FakeHypervisor):
    operator = UserFactory.create()
    join(operator, Role.OPERATOR)
    vm = running_vm(consoles)
    path = ticket_for(operator, vm)["websocket"]
    closed = _session_until_closed(path, lambda: User.objects.filter(pk=operator.pk).update(is_active=False))
    assert (closed["code"], closed["reason"]) == (4001, "the user was deactivated")
    assert "the user was deactivated" in VmEvent.objects.filter(vm=vm, step="console vnc").last().message  # type: ignore[union-attr]


def test_a_console_closes_when_its_user_loses_the_role(consoles: FakeHypervisor):
    operator = UserFactory.create()
    membership = join(operator, Role.OPERATOR)
    vm = running_vm(consoles)
    path = ticket_for(operator, vm, "serial")["websocket"]
    closed = _session_until_closed(path, lambda: membership.delete())
    assert closed["code"] == 4001


def test_the_server_shutting_down_closes_open_consoles(consoles: FakeHypervisor):
    admin = AdminFactory.create()
    vm = running_vm(consoles)
    path = ticket_for(admin, vm)["websocket"]

    async def scenario() -> dict[str, Any]:
        async with ws_session(application, path) as ws:
            assert (await ws.next())["type"] == "websocket.accept"
            assert len(websocket.open_consoles()) == 1
            await websocket.aclose()
            while (message := await ws.next())["type"] != "websocket.close":
                pass
            return message

    assert run(scenario())["code"] == 1001
    assert websocket.open_consoles() == []


def test_an_operator_elsewhere_is_only_a_viewer_here(consoles: FakeHypervisor):
    """Roles grant vms.use_console everywhere a user is an operator; the VM's own project decides."""
    user = UserFactory.create()
    join(user, Role.OPERATOR, "elsewhere")
    join(user, Role.VIEWER)
    vm = running_vm(consoles)
    assert user.has_perm("vms.use_console")
    response = api_as(user).post(f"/api/v1/virtualmachines/{vm.pk}/console", {"type": "vnc"}, format="json")
    assert response.status_code == 403


def test_the_ticket_admin_lists_tickets_without_their_secret(consoles: FakeHypervisor):
    admin = AdminFactory.create()
    vm = running_vm(consoles)
    ticket = ticket_for(admin, vm)["ticket"]
    browser = Client()
    browser.force_login(admin)
    listing = browser.get("/admin/vms/consoleticket/")
    page = browser.get(f"/admin/vms/consoleticket/{ConsoleTicket.objects.get().pk}/change/")
    assert listing.status_code == page.status_code == 200
    assert vm.name in listing.content.decode()
    for body in (listing.content, page.content):
        assert ticket.encode() not in body and hashlib.sha256(ticket.encode()).hexdigest().encode() not in body
    assert browser.post("/admin/vms/consoleticket/add/").status_code == 403
