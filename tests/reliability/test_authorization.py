"""The authorization matrix: anonymous, viewer, operator and admin against every API and admin action.

A denied cell must answer 401/403 (API) or send to the login page / 403
(admin), with no call on the hypervisor (a spy counts every method, reads
included, and every connection asked for) and no row changed. An allowed cell
must not answer 401/403. Also: CSRF on session-authenticated writes, the VNC
password kept out of every response, page, log line and queued task, and
`manage.py check --deploy` with production settings.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django_q.conf import Conf
from django_q.models import OrmQ, Task
from django_q.signing import SignedPackage
from rest_framework.test import APIClient

from isos.hashing import hash_file
from isos.services import IsoMetadata, iso_register_path
from tests.conftest import IsoDirs
from tests.fakes import FakeHypervisor
from tests.reliability.authz import HypervisorSpy, changed_rows, make_role, rows
from tests.reliability.conftest import Tally
from tests.support.isos import make_iso
from tests.test_settings import manage
from vms.models import VirtualMachine

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

SUITE = "authorization"
ROLES = ("anonymous", "viewer", "operator", "admin")
API = "/api/v1/virtualmachines/"
ADMIN = "/admin/"


@dataclass(frozen=True)
class Action:
    name: str
    method: str
    url: str  # with {vm}, {iso}, {template} for the seeded objects
    kind: str  # "view", "add", "change" or "delete": what the viewer may do is "view" only
    data: dict[str, Any] = field(default_factory=dict)
    api: bool = True


def _rows_form(prefix: str, items: list[dict[str, str]]) -> dict[str, str]:
    data = {f"{prefix}-TOTAL_FORMS": str(len(items)), f"{prefix}-INITIAL_FORMS": "0",
            f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"}  # fmt: skip
    for index, item in enumerate(items):
        data.update({f"{prefix}-{index}-{key}": value for key, value in item.items()})
    return data


VM_FORM = {
    "name": "made-in-admin", "memory": "512", "vcpus": "1", "architecture": "x86_64", "graphics_type": "vnc", "graphics_port": "-1",
    "storage_pool": "default", **_rows_form("disks", [{"size": "1", "format": "qcow2", "bus": "virtio"}]),
    **_rows_form("networks", [{"type": "nat", "source": "default", "model": "virtio"}]), "_create": "Create",
}  # fmt: skip
TEMPLATE_FORM = {
    "name": "tpl-admin", "description": "", "memory_mb": "512", "vcpus": "1", "architecture": "x86_64", "storage_pool": "default",
    "os_type": "", "os_variant": "", "graphics_type": "vnc", **_rows_form("disks", []), **_rows_form("nics", []),
}  # fmt: skip
VM_CREATE = {"name": "made-by-api", "memory": 512, "vcpus": 1}


def _vm_action(action: str, kind: str = "change") -> Action:
    return Action(f"admin VM action {action}", "POST", ADMIN + "vms/virtualmachine/", kind,
                  {"action": action, "_selected_action": "{vm}", "index": "0"}, api=False)  # fmt: skip


def _iso_action(action: str) -> Action:
    return Action(f"admin ISO action {action}", "POST", ADMIN + "isos/isoimage/", "change",
                  {"action": action, "_selected_action": "{iso}", "index": "0"}, api=False)  # fmt: skip


ACTIONS = [
    # --- API: ISO library (isos/api/urls.py)
    Action("API GET isos", "GET", API + "isos", "view"),
    Action("API POST isos (register)", "POST", API + "isos", "add", {"path": "{spare_iso}"}),
    Action("API POST isos (download)", "POST", API + "isos", "add", {"url": "http://127.0.0.1:9/x.iso"}),
    Action("API GET iso", "GET", API + "isos/{iso}", "view"),
    Action("API PATCH iso", "PATCH", API + "isos/{iso}", "change", {"description": "changed"}),
    Action("API DELETE iso", "DELETE", API + "isos/{iso}", "delete"),
    Action("API POST iso cancel", "POST", API + "isos/{iso}/cancel", "change"),
    Action("API POST iso retry", "POST", API + "isos/{iso}/retry", "change"),
    Action("API POST iso rehash", "POST", API + "isos/{iso}/rehash", "change"),
    # --- API: VMs and templates (vms/api/urls.py)
    Action("API GET vms", "GET", API, "view"),
    Action("API POST vms (legacy create)", "POST", API, "add", VM_CREATE),
    Action("API POST create-enhanced", "POST", API + "create-enhanced", "add", VM_CREATE),
    Action("API GET vm", "GET", API + "{vm}", "view"),
    Action("API DELETE vm", "DELETE", API + "{vm}", "delete"),
    *[Action(f"API POST vm {a}", "POST", API + "{vm}/" + a, "change") for a in ("start", "stop", "force-stop", "reboot")],
    Action("API GET templates", "GET", API + "templates", "view"),
    Action("API POST templates", "POST", API + "templates", "add", {"name": "tpl-new", "memory": 512, "vcpus": 1}),
    Action("API GET template", "GET", API + "templates/{template}", "view"),
    Action("API PATCH template", "PATCH", API + "templates/{template}", "change", {"memory": 1024}),
    Action("API DELETE template", "DELETE", API + "templates/{template}", "delete"),
    # --- admin: VMs
    Action("admin VM list", "GET", ADMIN + "vms/virtualmachine/", "view", api=False),
    Action("admin VM change page", "GET", ADMIN + "vms/virtualmachine/{vm}/change/", "view", api=False),
    Action("admin VM history", "GET", ADMIN + "vms/virtualmachine/{vm}/history/", "view", api=False),
    Action("admin VM ISO picker", "GET", ADMIN + "vms/virtualmachine/iso-picker/?term=seed", "view", api=False),
    Action("admin VM add page", "GET", ADMIN + "vms/virtualmachine/add/", "add", api=False),
    Action("admin VM add (create)", "POST", ADMIN + "vms/virtualmachine/add/", "add", VM_FORM, api=False),
    Action("admin VM delete page", "GET", ADMIN + "vms/virtualmachine/{vm}/delete/", "delete", api=False),
    Action("admin VM delete (confirm)", "POST", ADMIN + "vms/virtualmachine/{vm}/delete/", "delete", {"post": "yes"}, api=False),
    _vm_action("action_start"),
    _vm_action("action_stop"),
    _vm_action("action_force_stop"),
    _vm_action("action_delete", "delete"),
    _vm_action("refresh_states"),
    # --- admin: templates
    Action("admin template list", "GET", ADMIN + "vms/vmtemplate/", "view", api=False),
    Action("admin template change page", "GET", ADMIN + "vms/vmtemplate/{template_pk}/change/", "view", api=False),
    Action("admin template add page", "GET", ADMIN + "vms/vmtemplate/add/", "add", api=False),
    Action("admin template add (save)", "POST", ADMIN + "vms/vmtemplate/add/", "add", TEMPLATE_FORM, api=False),
    Action(
        "admin template change (save)",
        "POST",
        ADMIN + "vms/vmtemplate/{template_pk}/change/",
        "change",
        {**TEMPLATE_FORM, "name": "{template}", "memory_mb": "2048"},
        api=False,
    ),
    Action("admin template delete (confirm)", "POST", ADMIN + "vms/vmtemplate/{template_pk}/delete/", "delete", {"post": "yes"}, api=False),
    # --- admin: ISOs
    Action("admin ISO list", "GET", ADMIN + "isos/isoimage/", "view", api=False),
    Action("admin ISO change page", "GET", ADMIN + "isos/isoimage/{iso}/change/", "view", api=False),
    Action("admin ISO add page", "GET", ADMIN + "isos/isoimage/add/", "add", api=False),
    Action("admin ISO add (register)", "POST", ADMIN + "isos/isoimage/add/", "add", {"path": "{spare_iso}"}, api=False),
    Action(
        "admin ISO change (save)",
        "POST",
        ADMIN + "isos/isoimage/{iso}/change/",
        "change",
        {"name": "renamed", "architecture": "x86_64", "os_type": "", "os_variant": "", "description": ""},
        api=False,
    ),
    Action("admin ISO delete (confirm)", "POST", ADMIN + "isos/isoimage/{iso}/delete/", "delete", {"post": "yes"}, api=False),
    _iso_action("action_iso_rehash"),
    _iso_action("action_iso_retry"),
    _iso_action("action_iso_cancel"),
]


def expected_allowed(role: str, action: Action) -> bool:
    return role in ("operator", "admin") or (role == "viewer" and action.kind == "view")


@pytest.fixture(scope="module")
def iso_bytes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iso(tmp_path_factory.mktemp("authz") / "seed.iso", label="Seed 1.0 amd64")


@pytest.fixture
def spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HypervisorSpy:
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    watcher = HypervisorSpy(FakeHypervisor(pool_dir=pool_dir))
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", watcher.get)
    return watcher


@pytest.fixture
def seeded(spy: HypervisorSpy, iso_dirs: IsoDirs, iso_bytes: Path, django_capture_on_commit_callbacks: Any) -> dict[str, str]:
    """A ready ISO, a template, a running VM and a spare ISO file; the spy's counter starts at 0."""
    seed_iso = shutil.copyfile(iso_bytes, iso_dirs.search[0] / "seed.iso")
    spare = shutil.copyfile(iso_bytes, iso_dirs.search[0] / "spare.iso")
    iso = iso_register_path(path=str(seed_iso), meta=IsoMetadata(name="seed"), digests=hash_file(seed_iso))
    root = APIClient()
    root.force_authenticate(User.objects.create_superuser("seeder", password=None))
    template = root.post(API + "templates", {"name": "seed-tpl", "memory": 512, "vcpus": 1}, format="json")
    assert template.status_code == 201, template.content
    with django_capture_on_commit_callbacks(execute=True):
        vm = root.post(API + "create-enhanced", {"name": "seed-vm", "memory": 512, "vcpus": 1}, format="json")
    assert vm.status_code == 202, vm.content
    assert VirtualMachine.objects.get(name="seed-vm").status == "running"
    spy.calls.clear()
    return {
        "vm": str(vm.json()["id"]),
        "iso": iso.pk,
        "template": "seed-tpl",
        "template_pk": str(template.json()["id"]),
        "spare_iso": str(spare),
    }


def _fill(value: Any, seeds: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, seed in seeds.items():
            value = value.replace("{" + key + "}", seed)
    return value


def _client(role: str, user: User | None, api: bool) -> Any:
    if api:
        client: Any = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _send(client: Any, action: Action, seeds: dict[str, str]) -> Any:
    url = _fill(action.url, seeds)
    data = {key: _fill(value, seeds) for key, value in action.data.items()}
    method = getattr(client, action.method.lower())
    if action.api:
        return method(url, data, format="json") if action.method != "GET" else method(url)
    return method(url, data) if action.method == "POST" else method(url)


def _denied(role: str, action: Action, response: Any) -> bool:
    if action.api:
        return response.status_code == (401 if role == "anonymous" else 403)
    if role == "anonymous":
        return response.status_code == 302 and response["Location"].startswith("/admin/login/")
    return response.status_code == 403


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a.name)
def test_cell(role: str, action: Action, spy: HypervisorSpy, seeded: dict[str, str], tally: Tally) -> None:
    client = _client(role, make_role(role), action.api)
    before = rows()
    response = _send(client, action, seeded)
    allowed = expected_allowed(role, action)
    case = f"{role} x {action.name}"
    if allowed:
        ok = response.status_code not in (401, 403) and not (
            response.status_code == 302 and response["Location"].startswith("/admin/login/")
        )
        tally.record(SUITE, case, refused=ok, detail=f"allowed: {response.status_code}")
        assert ok, (case, response.status_code, response.content[:500])
        return
    leftovers = spy.total() + changed_rows(before, rows())
    refused = _denied(role, action, response)
    tally.record(
        SUITE, case, refused=refused, leftovers=leftovers, detail=f"denied: {response.status_code}; hypervisor calls {dict(spy.calls)}"
    )
    assert refused and leftovers == 0, (case, response.status_code, dict(spy.calls), leftovers, response.content[:300])


# --- CSRF on session-authenticated writes ---------------------------------------------


CSRF_WRITES = [
    ("API POST templates", API + "templates", {"name": "tpl-csrf", "memory": 512, "vcpus": 1}, True),
    ("API POST vm stop", API + "{vm}/stop", {}, True),
    ("API DELETE iso", API + "isos/{iso}", {}, True),
    ("admin template add (save)", ADMIN + "vms/vmtemplate/add/", {**TEMPLATE_FORM, "name": "tpl-csrf"}, False),
    ("admin VM action stop", ADMIN + "vms/virtualmachine/", {"action": "action_stop", "_selected_action": "{vm}", "index": "0"}, False),
]


@pytest.mark.parametrize(("name", "url", "data", "api"), CSRF_WRITES, ids=[w[0] for w in CSRF_WRITES])
def test_session_writes_need_the_csrf_token(
    name: str, url: str, data: dict[str, Any], api: bool, spy: HypervisorSpy, seeded: dict[str, str], tally: Tally
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_role("operator"))  # type: ignore[arg-type]
    url = _fill(url, seeded)
    data = {key: _fill(value, seeded) for key, value in data.items()}
    method = client.delete if url.endswith(seeded["iso"]) else client.post

    def send(**headers: Any) -> Any:
        if api:
            return method(url, data, content_type="application/json", **headers)
        return method(url, data, **headers)

    before = rows()
    refused = send()
    leftovers = spy.total() + changed_rows(before, rows())
    tally.record(SUITE, f"operator (session, no CSRF token) x {name}", refused=refused.status_code == 403, leftovers=leftovers,
                 detail=f"{refused.status_code}")  # fmt: skip
    assert refused.status_code == 403 and leftovers == 0, (name, refused.status_code, leftovers, refused.content[:300])

    client.get(ADMIN)  # any page with a form sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    accepted = send(HTTP_X_CSRFTOKEN=token) if api else method(url, {**data, "csrfmiddlewaretoken": token})
    ok = accepted.status_code not in (401, 403)
    tally.record(SUITE, f"operator (session, CSRF token) x {name}", refused=ok, detail=f"allowed: {accepted.status_code}")
    assert ok, (name, accepted.status_code, accepted.content[:300])
    assert changed_rows(before, rows()) > 0, name  # the write happened this time


# --- the VNC password ------------------------------------------------------------------

PASSWORD = "Qz7vNc9x"


def test_vnc_password_is_in_no_response_page_log_or_task(
    spy: HypervisorSpy, seeded: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any, tally: Tally,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    client = Client()
    client.force_login(make_role("admin"))  # type: ignore[arg-type]
    seen: dict[str, int] = {"API responses": 0, "admin pages": 0, "log records": 0, "task payloads": 0, "stored rows": 0}

    def look(where: str, text: str) -> None:
        seen[where] += text.count(PASSWORD)

    body = {"name": "vnc-vm", "memory": 512, "vcpus": 1, "graphics": {"type": "vnc", "password": PASSWORD}}
    with django_capture_on_commit_callbacks(execute=True):  # provisioning runs inline (Conf.SYNC)
        created = client.post(API + "create-enhanced", body, content_type="application/json")
    assert created.status_code == 202, created.content
    vm = VirtualMachine.objects.get(name="vnc-vm")
    assert f'passwd="{PASSWORD}"' in spy.inner.domains["vnc-vm"].xml  # libvirt was given it: the search below can fail
    look("API responses", created.content.decode())
    dry = client.post(API + "create-enhanced?dry_run=true", {**body, "name": "vnc-dry"}, content_type="application/json")
    assert dry.status_code == 200, dry.content
    look("API responses", dry.content.decode())
    for url in (API, API + str(vm.pk), API + "templates"):
        look("API responses", client.get(url).content.decode())

    # Queued, not run: the ORM broker's row holds the signed, pickled task.
    monkeypatch.setattr(Conf, "SYNC", False)
    with django_capture_on_commit_callbacks(execute=True):
        queued = client.post(API + "create-enhanced", {**body, "name": "vnc-queued"}, content_type="application/json")
    assert queued.status_code == 202, queued.content
    look("API responses", queued.content.decode())
    assert OrmQ.objects.exists()
    for package in OrmQ.objects.all():
        look("task payloads", package.payload + repr(SignedPackage.loads(package.payload)))
    assert Task.objects.exists()
    for task in Task.objects.all():
        look("task payloads", repr((task.name, task.func, task.args, task.kwargs, task.result, task.hook, task.group)))
    for row in VirtualMachine.objects.values():
        look("stored rows", repr(row))

    changelist = ADMIN + "vms/virtualmachine/"
    for url in (changelist, f"{changelist}{vm.pk}/change/", f"{changelist}{vm.pk}/history/", changelist + "add/"):
        page = client.get(url)
        assert page.status_code == 200, url
        look("admin pages", page.content.decode())
    with_errors = client.post(changelist + "add/", {**VM_FORM, "name": "bad name!", "graphics_password": PASSWORD})
    assert with_errors.status_code == 200 and b"errorlist" in with_errors.content
    look("admin pages", with_errors.content.decode())
    dry_page = client.post(changelist + "add/", {**VM_FORM, "name": "vnc-admin-dry", "graphics_password": PASSWORD, "_dryrun": "Dry run"})
    assert dry_page.status_code == 200
    look("admin pages", dry_page.content.decode())

    assert caplog.records  # the flow does log
    look("log records", caplog.text + "".join(repr(r.args) for r in caplog.records))
    for where, count in seen.items():
        tally.record(SUITE, f"VNC password x {where}", refused=count == 0, leftovers=count)
    assert all(count == 0 for count in seen.values()), seen


# --- deployment checks -------------------------------------------------------------------


def test_check_deploy_is_clean_with_production_settings(tally: Tally) -> None:
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING",
        VAPOR_DEBUG="0", VAPOR_SECRET_KEY="k3y-" + "Rm4tW8qZ2xB6nJ0cV5hL9sD3fG7kP1y" * 2, VAPOR_ALLOWED_HOSTS="vapor.example.com",
    )  # fmt: skip
    clean = result.returncode == 0 and "WARNINGS" not in result.stderr
    tally.record(SUITE, "manage.py check --deploy (production settings)", refused=clean, detail=(result.stderr + result.stdout)[-300:])
    assert clean, result.stderr + result.stdout
