"""Console misuse against the production server and the real daemon: every way to open a console one
should not, tried over real HTTP and real websockets on `manage.py serve`.

Each refusal must come before any byte reaches the guest: after each one, QEMU's own list of VNC
clients (`info vnc` on the monitor) is empty and the VM's event log has no console session. The allowed
cells (the owner's ticket, from the site's own origin) show their effect: the RFB banner from the guest's
VNC server, the guest's serial output. Domains are named `cm-...` and removed with virsh.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.integration.conftest import unique, virsh
from tests.integration.test_consoles_real import _domain_xml
from tests.reliability.authz import record_allowed
from tests.reliability.conftest import Tally
from tests.support.serving import Served, manage, prepare_data_dir, serve_env, start_serve

pytestmark = [pytest.mark.reliability, pytest.mark.libvirt]

SUITE = "console misuse"
PASSWORD = "cmPass12"[:8]
ENV = {"DJANGO_SETTINGS_MODULE": "vaporsite.settings", "VAPOR_LIBVIRT_URI": "qemu:///system", "VAPOR_CONSOLE_CHECK_INTERVAL": "0.5"}

SETUP = """
import json, os
from django.contrib.auth.models import Permission, User
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, BACKEND_SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from rest_framework.authtoken.models import Token
from projects.models import Membership, Project, default_project_pk
from vms.models import VirtualMachine

names = json.loads(os.environ["CM_VMS"])
vms = {name: VirtualMachine.objects.create(name=name, memory_mb=64, vcpus=1, status="running").pk for name in names}
other = Project.objects.create(name="cm-elsewhere")
out = {"vms": vms, "tokens": {}, "sessions": {}, "users": {}}
for name, role, project in [("owner", "operator", None), ("viewer", "viewer", None), ("stranger", "operator", other.pk),
                            ("watcher", "viewer", None), ("mallory", "operator", None), ("leaver", "operator", None)]:
    user = User.objects.create_user(name, password=None)
    Membership.objects.create(user=user, project_id=project or default_project_pk(), role=role)
    out["tokens"][name] = Token.objects.create(user=user).key
    out["users"][name] = user.pk
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    out["sessions"][name] = session.session_key
User.objects.get(username="watcher").user_permissions.add(Permission.objects.get(codename="watch_console"))
print(json.dumps(out))
"""


@dataclass
class Portal:
    served: Served
    db: Path
    vms: dict[str, int]
    tokens: dict[str, str]
    sessions: dict[str, str]

    @property
    def origin(self) -> str:
        return self.served.url

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.served.port}{path}"

    def ticket(self, user: str, vm: str, type: str, **body: Any) -> tuple[int, dict[str, Any]]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.served.port, timeout=30)
        try:
            connection.request(
                "POST",
                f"/api/v1/virtualmachines/{self.vms[vm]}/console",
                body=json.dumps({"type": type, **body}),
                headers={"Authorization": f"Token {self.tokens[user]}", "Content-Type": "application/json"},
            )
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def console_events(self) -> int:
        with sqlite3.connect(self.db) as db:
            return int(db.execute("select count(*) from vms_vmevent where step like 'console %'").fetchone()[0])

    def sql(self, statement: str, *args: Any) -> None:
        with sqlite3.connect(self.db, timeout=30) as db:
            db.execute(statement, args)


def vnc_clients(domain: str) -> int:
    """How many VNC clients QEMU has right now (its monitor's own account)."""
    text = virsh("qemu-monitor-command", domain, "--hmp", "info vnc").stdout
    return text.count("Client:")


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    base = tmp_path_factory.mktemp("console-misuse")
    data_dir = base / "data"
    prepare_data_dir(data_dir)
    names = [unique("cm"), unique("cm")]
    for name in names:
        path = base / f"{name}.xml"
        path.write_text(_domain_xml(name, password=PASSWORD))
        virsh("define", str(path))
        virsh("start", name)
    try:
        env = serve_env(data_dir, **ENV, CM_VMS=json.dumps(names))
        made = manage(env, "shell", "-v", "0", "-c", SETUP)
        assert made.returncode == 0, made.stderr
        ids = json.loads(made.stdout.strip().splitlines()[-1])
        with start_serve(data_dir, base / "serve.log", **ENV) as served:
            yield Portal(served, data_dir / "vapor.sqlite3", ids["vms"], ids["tokens"], ids["sessions"])
            log = served.output()
        assert PASSWORD not in log, "the VNC password reached the server's log"
    finally:
        for name in names:
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)


def _first_vm(portal: Portal) -> str:
    return sorted(portal.vms)[0]


def _refused(portal: Portal, tally: Tally, case: str, path: str, **headers: str) -> None:
    vm = _first_vm(portal)
    events = portal.console_events()
    origin = headers.pop("origin", portal.origin)
    status, detail = 0, ""
    try:
        with connect(portal.ws_url(path), origin=Origin(origin) if origin else None, additional_headers=headers, open_timeout=20) as ws:
            ws.close()
    except InvalidStatus as exc:
        status, detail = exc.response.status_code, (exc.response.body or b"").decode(errors="replace")
    leftovers = vnc_clients(vm) + (portal.console_events() - events)
    tally.record(SUITE, case, refused=status == 403, leftovers=leftovers, detail=f"{status}: {detail[:160]}")
    assert status == 403, f"{case}: {status} {detail}"
    assert leftovers == 0, f"{case}: something reached the guest"


def _opens(portal: Portal, path: str, *, expect: bytes, send: bytes = b"", **headers: str) -> bytes:
    seen = b""
    with connect(portal.ws_url(path), origin=Origin(portal.origin), additional_headers=headers, open_timeout=20) as ws:
        if send:
            ws.send(send)
        deadline = time.monotonic() + 30
        while expect not in seen and time.monotonic() < deadline:
            message = ws.recv(timeout=deadline - time.monotonic())
            seen += message if isinstance(message, bytes) else message.encode()
    return seen


def test_the_owners_ticket_opens_the_guests_vnc_server(portal: Portal, tally: Tally):
    status, body = portal.ticket("owner", _first_vm(portal), "vnc")
    assert status == 201, body
    banner = _opens(portal, body["websocket"], expect=b"RFB 003.008\n")
    record_allowed(
        tally, SUITE, "the owner's VNC ticket from the site's origin", effect=banner.startswith(b"RFB 003.008\n"), detail="the RFB banner"
    )
    assert banner.startswith(b"RFB 003.008\n")
    assert PASSWORD not in json.dumps(body)


def test_the_owners_ticket_opens_the_serial_port(portal: Portal, tally: Tally):
    vm = _first_vm(portal)
    status, body = portal.ticket("owner", vm, "serial")
    assert status == 201, body
    seen = b""
    with connect(portal.ws_url(body["websocket"]), origin=Origin(portal.origin), open_timeout=20) as ws:
        virsh("reset", vm)  # SeaBIOS prints its banner on the port again, now that someone listens
        deadline = time.monotonic() + 30
        while b"SeaBIOS" not in seen and time.monotonic() < deadline:
            message = ws.recv(timeout=deadline - time.monotonic())
            seen += message if isinstance(message, bytes) else message.encode()
    record_allowed(tally, SUITE, "the owner's serial ticket", effect=b"SeaBIOS" in seen, detail=f"{len(seen)} bytes of the guest's output")
    assert b"SeaBIOS" in seen


def test_a_used_ticket_is_refused(portal: Portal, tally: Tally):
    _, body = portal.ticket("owner", _first_vm(portal), "vnc")
    _opens(portal, body["websocket"], expect=b"RFB")
    time.sleep(0.5)  # the first session's end is recorded
    _refused(portal, tally, "a ticket used a second time", body["websocket"])


def test_an_expired_ticket_is_refused(portal: Portal, tally: Tally):
    _, body = portal.ticket("owner", _first_vm(portal), "vnc")
    portal.sql("update vms_consoleticket set expires_at = datetime('now', '-1 second')")
    _refused(portal, tally, "an expired ticket", body["websocket"])


@pytest.mark.parametrize(
    ("case", "mangle"),
    [
        ("a ticket for another VM", "other-vm"),
        ("a VNC ticket on the serial console", "other-type"),
        ("no ticket", "none"),
        ("a forged ticket", "forged"),
        ("a ticket on a path that is no console", "bad-path"),
    ],
)
def test_a_ticket_used_elsewhere_is_refused(portal: Portal, tally: Tally, case: str, mangle: str):
    first, second = sorted(portal.vms)
    _, body = portal.ticket("owner", first, "vnc")
    ticket = body["ticket"]
    path = {
        "other-vm": f"/ws/consoles/{portal.vms[second]}/vnc?ticket={ticket}",
        "other-type": f"/ws/consoles/{portal.vms[first]}/serial?ticket={ticket}",
        "none": f"/ws/consoles/{portal.vms[first]}/vnc",
        "forged": f"/ws/consoles/{portal.vms[first]}/vnc?ticket={'A' * 43}",
        "bad-path": f"/ws/consoles/{portal.vms[first]}/spice?ticket={ticket}",
    }[mangle]
    _refused(portal, tally, case, path)


@pytest.mark.parametrize(
    ("case", "origin"),
    [
        ("another site's Origin", "http://evil.example"),
        ("a look-alike Origin", "http://127.0.0.1.evil.example"),
        ("the site's host on another port", "http://127.0.0.1:1"),
        ("Origin null (a sandboxed page)", "null"),
        ("no Origin at all", ""),
    ],
)
def test_a_foreign_origin_is_refused(portal: Portal, tally: Tally, case: str, origin: str):
    _, body = portal.ticket("owner", _first_vm(portal), "vnc")
    _refused(portal, tally, case, body["websocket"], origin=origin)


def test_a_ticket_with_another_users_session_is_refused(portal: Portal, tally: Tally):
    _, body = portal.ticket("owner", _first_vm(portal), "vnc")
    _refused(
        portal,
        tally,
        "the owner's ticket with mallory's session cookie",
        body["websocket"],
        Cookie=f"sessionid={portal.sessions['mallory']}",
    )


def test_a_session_cookie_without_a_ticket_is_refused(portal: Portal, tally: Tally):
    vm = portal.vms[_first_vm(portal)]
    _refused(portal, tally, "the owner's session cookie alone", f"/ws/consoles/{vm}/vnc", Cookie=f"sessionid={portal.sessions['owner']}")


def test_a_ticket_of_a_user_deactivated_since_is_refused(portal: Portal, tally: Tally):
    _, body = portal.ticket("leaver", _first_vm(portal), "vnc")
    portal.sql("update auth_user set is_active = 0 where username = 'leaver'")
    _refused(portal, tally, "a ticket whose user was deactivated after it was issued", body["websocket"])


@pytest.mark.parametrize(
    ("case", "user", "type", "status"),
    [
        ("a viewer asks for a console", "viewer", "vnc", 403),
        ("a viewer asks for a serial console", "viewer", "serial", 403),
        ("a watcher asks for the graphical console", "watcher", "vnc", 403),
        ("an operator of another project asks", "stranger", "vnc", 404),
    ],
)
def test_tickets_are_refused_to_who_may_not_type(portal: Portal, tally: Tally, case: str, user: str, type: str, status: int):
    events = portal.console_events()
    got, body = portal.ticket(user, _first_vm(portal), type)
    tally.record(
        SUITE, case, refused=got == status, leftovers=portal.console_events() - events, detail=f"{got}: {body.get('detail', '')[:160]}"
    )
    assert got == status, body


def test_a_watchers_keys_never_reach_the_serial_port(portal: Portal, tally: Tally):
    """The watcher's session opens (read-only) but what it sends is dropped: the guest's firmware menu
    would react to a key; here the bytes typed are counted on the session's record instead."""
    status, body = portal.ticket("watcher", _first_vm(portal), "serial")
    assert status == 201 and body["read_only"] is True
    with connect(portal.ws_url(body["websocket"]), origin=Origin(portal.origin), open_timeout=20) as ws:
        ws.send(b"reboot\r")
        time.sleep(0.3)
    time.sleep(0.5)
    with sqlite3.connect(portal.db) as db:
        message = db.execute("select message from vms_vmevent where message like 'watcher%closed%' order by id desc").fetchone()[0]
    typed = "0 bytes typed" in message
    tally.record(SUITE, "a watcher types into a read-only serial console", refused=typed, leftovers=0 if typed else 1, detail=message[:160])
    assert typed, message
