"""The console pages (/consoles/ID/vnc/, /consoles/ID/serial/, the serial log) and the Console buttons
in the VM admin, against the in-memory hypervisor. The ticket API and the websocket are tested where
they live; these pages only decide what to show."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.test import Client

from projects.choices import Role
from tests.fakes import FakeDomain, FakeHypervisor
from tests.support.factories import AdminFactory, UserFactory, VirtualMachineFactory
from tests.support.projects import join
from vms.hypervisor.documents.domain import domain_xml
from vms.models import VirtualMachine
from vms.services.design import domain_spec

pytestmark = pytest.mark.django_db
PASSWORD = "vnc-S3cret-pw"


def console_permission(codename: str) -> Permission:
    """The lead's migration adds these; until then (and harmlessly after) the test makes the row."""
    content_type = ContentType.objects.get_for_model(VirtualMachine)
    return Permission.objects.get_or_create(codename=codename, content_type=content_type, defaults={"name": codename})[0]


def user_with(*codenames: str, staff: bool = True, project: str | None = None) -> User:
    user = UserFactory.create(is_staff=staff)
    user.user_permissions.add(*(console_permission(c) for c in codenames))
    # The operator role grants vms.use_console itself (projects.backends): without it, a viewer.
    join(user, Role.OPERATOR if "use_console" in codenames else Role.VIEWER, project)
    return user


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def on_host(hv: FakeHypervisor, vm: VirtualMachine, *, password: str | None = None, serial_log: str = "") -> VirtualMachine:
    """Define `vm`'s domain on the fake host, running, with the graphics and serial log its row says."""
    spec = domain_spec(vm, password=password)
    spec = dataclasses.replace(spec, serial_log=serial_log or vm.serial_log)
    hv.domains[vm.name] = FakeDomain(xml=domain_xml(spec), state="running")
    return vm


def make_vm(hv: FakeHypervisor, *, status: str = "running", graphics: str = "vnc", password: str | None = None, **fields) -> VirtualMachine:
    vm = VirtualMachineFactory.create(status=status, graphics_type=graphics, graphics_password_set=password is not None, **fields)
    return on_host(hv, vm, password=password)


@pytest.fixture
def log_dir(tmp_path: Path, settings) -> Path:
    directory = tmp_path / "serial-logs"
    directory.mkdir()
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, serial_log_dir=directory)
    return directory


# --- login, scoping, permissions ------------------------------------------------------------------


@pytest.mark.parametrize("page", ["vnc/", "serial/", "serial/log"])
def test_pages_send_an_anonymous_user_to_the_admin_login_with_next(client, hv, page):
    vm = make_vm(hv)
    url = f"/consoles/{vm.pk}/{page}"
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={url}"


@pytest.mark.parametrize("page", ["vnc/", "serial/", "serial/log"])
def test_a_vm_of_another_project_is_not_found(hv, page):
    vm = make_vm(hv)  # in the default project
    outsider = client_for(user_with("use_console", project="elsewhere"))
    assert outsider.get(f"/consoles/{vm.pk}/{page}").status_code == 404
    assert client_for(user_with("use_console")).get(f"/consoles/{vm.pk}/serial/").status_code == 200


def test_an_unknown_vm_is_not_found(admin_client, hv):
    assert admin_client.get("/consoles/999999/vnc/").status_code == 404


def test_without_a_console_permission_the_pages_refuse(hv):
    vm = make_vm(hv)
    member = client_for(user_with())
    assert member.get(f"/consoles/{vm.pk}/vnc/").status_code == 403
    assert member.get(f"/consoles/{vm.pk}/serial/").status_code == 403


def test_a_watcher_gets_the_serial_page_read_only_and_no_graphical_console(hv):
    vm = make_vm(hv)
    watcher = client_for(user_with("watch_console"))
    assert watcher.get(f"/consoles/{vm.pk}/vnc/").status_code == 403
    page = watcher.get(f"/consoles/{vm.pk}/serial/").content.decode()
    assert 'id="serial-read-only"' in page and 'id="serial-read-only" hidden' not in page
    assert '"readOnly": true' in page and f"/consoles/{vm.pk}/vnc/" not in page


def test_an_operator_with_use_console_types(hv):
    vm = make_vm(hv)
    page = client_for(user_with("use_console")).get(f"/consoles/{vm.pk}/serial/").content.decode()
    assert 'id="serial-read-only" hidden' in page and '"readOnly": false' in page


# --- the graphical page ---------------------------------------------------------------------------


def test_vnc_page_loads_novnc_from_static_files_and_names_the_api_and_websocket(admin_client, hv):
    vm = make_vm(hv)
    page = admin_client.get(f"/consoles/{vm.pk}/vnc/").content.decode()
    assert 'data-rfb="/static/vendor/novnc/core/rfb.js"' in page
    assert '<script type="module" src="/static/vms/consoles/vnc.js">' in page
    assert f'"api": "/api/v1/virtualmachines/{vm.pk}/console"' in page and f'"websocket": "/ws/consoles/{vm.pk}/vnc"' in page
    for button in ("vnc-cad", "vnc-fullscreen", "vnc-scale"):
        assert f'id="{button}"' in page
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    assert "csrftoken" in admin_client.cookies


@pytest.mark.parametrize("page", ["vnc/", "serial/"])
def test_console_pages_link_vaporsite_favicon(admin_client, hv, page):
    vm = make_vm(hv)
    html = admin_client.get(f"/consoles/{vm.pk}/{page}").content.decode()
    assert '<link rel="icon" href="/static/vaporsite/favicon.svg" type="image/svg+xml">' in html


def test_vnc_password_hint_never_holds_the_password(admin_client, hv):
    vm = make_vm(hv, password=PASSWORD)
    assert PASSWORD in hv.domains[vm.name].xml  # the host has it...
    response = admin_client.get(f"/consoles/{vm.pk}/vnc/")
    page = response.content.decode()
    assert 'id="vnc-password-hint"' in page and "VNC password required" in page
    assert PASSWORD not in page and PASSWORD not in str(response.headers)  # ...the page does not
    # The password field is typed as one and has no name: a form submission could not carry it.
    field = page[page.index('<input type="password"') :].split(">", 1)[0]
    assert "name=" not in field


def test_no_hint_without_a_password(admin_client, hv):
    vm = make_vm(hv)
    assert "VNC password required" not in admin_client.get(f"/consoles/{vm.pk}/vnc/").content.decode()


def test_a_spice_vm_says_what_is_available(admin_client, hv):
    vm = make_vm(hv, graphics="spice")
    page = admin_client.get(f"/consoles/{vm.pk}/vnc/").content.decode()
    assert "has a SPICE display, which the browser console does not show" in page
    assert f'href="/consoles/{vm.pk}/serial/"' in page and "vnc.js" not in page and "vnc-screen" not in page


def test_a_headless_vm_says_it_has_no_graphical_display(admin_client, hv):
    vm = make_vm(hv, graphics="none")
    page = admin_client.get(f"/consoles/{vm.pk}/vnc/").content.decode()
    assert "has no graphical display" in page and f'href="/consoles/{vm.pk}/serial/"' in page and "vnc.js" not in page


def test_the_host_decides_the_display_of_a_running_vm(admin_client, hv):
    vm = make_vm(hv, graphics="vnc")
    hv.domains[vm.name].xml = hv.domains[vm.name].xml.replace('type="vnc"', 'type="spice"')  # changed outside Vapor
    assert "SPICE display" in admin_client.get(f"/consoles/{vm.pk}/vnc/").content.decode()
    assert hv.calls["console"] == 1 and hv.calls["close"] == 1


def test_a_stopped_vm_says_so_and_asks_the_host_nothing(admin_client, hv):
    vm = make_vm(hv, status="stopped")
    for kind in ("vnc", "serial"):
        page = admin_client.get(f"/consoles/{vm.pk}/{kind}/").content.decode()
        assert "is not running (stopped" in page and f"{kind}.js" not in page
    assert hv.calls["console"] == 0 and hv.calls["close"] == 0


# --- the serial page and its log -------------------------------------------------------------------


def test_serial_page_loads_xterm_from_static_files(admin_client, hv):
    vm = make_vm(hv)
    page = admin_client.get(f"/consoles/{vm.pk}/serial/").content.decode()
    assert 'data-xterm="/static/vendor/xterm/lib/xterm.mjs"' in page and "/static/vendor/xterm/css/xterm.css" in page
    assert 'data-fit="/static/vendor/xterm-addon-fit/lib/addon-fit.mjs"' in page
    assert f'"websocket": "/ws/consoles/{vm.pk}/serial"' in page and "serial-log-link" not in page


def test_the_serial_log_link_and_its_last_64_kib(admin_client, hv, log_dir: Path):
    log = log_dir / "web.serial.log"
    log.write_bytes(b"early boot line\n" + b"x" * 70_000 + b"\nlogin: \xff\n")
    vm = make_vm(hv, name="web", serial_log=str(log))
    page = admin_client.get(f"/consoles/{vm.pk}/serial/").content.decode()
    assert f'href="/consoles/{vm.pk}/serial/log"' in page
    response = admin_client.get(f"/consoles/{vm.pk}/serial/log")
    assert response.status_code == 200 and response["Content-Type"] == "text/plain; charset=utf-8"
    text = response.content.decode()
    assert (
        text.startswith(f"[the last 65536 of {log.stat().st_size} bytes]\nlogin: ")
        and text.endswith("login: \ufffd\n")
        and "early boot" not in text
    )


def test_the_log_is_read_from_the_domain_definition(admin_client, hv, log_dir: Path):
    log = log_dir / "other.log"
    log.write_text("from the host's definition\n")
    vm = make_vm(hv)  # Vapor's row names no log; the domain, changed on the host, does
    on_host(hv, vm, serial_log=str(log))
    assert admin_client.get(f"/consoles/{vm.pk}/serial/log").content.decode() == "from the host's definition\n"


def test_a_log_outside_the_serial_log_dir_is_not_read(admin_client, hv, log_dir: Path, tmp_path: Path):
    secret = tmp_path / "elsewhere.log"
    secret.write_text("not for the portal\n")
    vm = make_vm(hv, serial_log=str(secret))
    response = admin_client.get(f"/consoles/{vm.pk}/serial/log")
    assert response.status_code == 404 and "not for the portal" not in response.content.decode()
    assert "outside the allowed directories" in response.content.decode()


def test_a_symlink_out_of_the_serial_log_dir_is_not_followed(admin_client, hv, log_dir: Path, tmp_path: Path):
    secret = tmp_path / "elsewhere.log"
    secret.write_text("not for the portal\n")
    (log_dir / "vm.serial.log").symlink_to(secret)
    vm = make_vm(hv, serial_log=str(log_dir / "vm.serial.log"))
    response = admin_client.get(f"/consoles/{vm.pk}/serial/log")
    assert response.status_code == 404 and "not for the portal" not in response.content.decode()


def test_without_a_serial_log_dir_no_log_is_read(admin_client, hv, tmp_path: Path, settings):
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, serial_log_dir=None)
    log = tmp_path / "vm.log"
    log.write_text("boot\n")
    vm = make_vm(hv, serial_log=str(log))
    response = admin_client.get(f"/consoles/{vm.pk}/serial/log")
    assert response.status_code == 404 and "VAPOR_SERIAL_LOG_DIR is not set" in response.content.decode()


def test_a_vm_without_a_log_has_no_log(admin_client, hv, log_dir: Path):
    vm = make_vm(hv)
    response = admin_client.get(f"/consoles/{vm.pk}/serial/log")
    assert response.status_code == 404 and "has no serial log file" in response.content.decode()


def test_a_missing_log_file_is_not_found(admin_client, hv, log_dir: Path):
    vm = make_vm(hv, serial_log=str(log_dir / "never-written.log"))
    response = admin_client.get(f"/consoles/{vm.pk}/serial/log")
    assert response.status_code == 404 and "does not exist" in response.content.decode()


def test_the_log_needs_a_console_permission(hv, log_dir: Path):
    log = log_dir / "vm.log"
    log.write_text("boot\n")
    vm = make_vm(hv, serial_log=str(log))
    assert client_for(user_with()).get(f"/consoles/{vm.pk}/serial/log").status_code == 403
    assert client_for(user_with("watch_console")).get(f"/consoles/{vm.pk}/serial/log").content == b"boot\n"


# --- the Console buttons in the admin ---------------------------------------------------------------

CHANGELIST = "/admin/vms/virtualmachine/"


def test_vm_page_has_console_buttons_for_a_running_vm(admin_client, hv):
    vm = make_vm(hv)
    page = admin_client.get(f"{CHANGELIST}{vm.pk}/change/").content.decode()
    assert f'<a href="/consoles/{vm.pk}/vnc/" class="vapor-console-button"' in page
    assert f'<a href="/consoles/{vm.pk}/serial/" class="vapor-console-button"' in page


def test_vm_page_has_no_console_button_when_stopped(admin_client, hv):
    vm = make_vm(hv, status="stopped")
    assert "vapor-console-button" not in admin_client.get(f"{CHANGELIST}{vm.pk}/change/").content.decode()


def test_vm_page_buttons_follow_the_permissions(hv):
    vm = make_vm(hv)
    url = f"{CHANGELIST}{vm.pk}/change/"
    assert "vapor-console-button" not in client_for(user_with()).get(url).content.decode()
    watcher = client_for(user_with("watch_console")).get(url).content.decode()
    assert f"/consoles/{vm.pk}/serial/" in watcher and f"/consoles/{vm.pk}/vnc/" not in watcher
    user = client_for(user_with("use_console")).get(url).content.decode()
    assert f"/consoles/{vm.pk}/serial/" in user and f"/consoles/{vm.pk}/vnc/" in user


def test_vm_list_console_column_links_running_vms_only(admin_client, hv):
    running = make_vm(hv)
    stopped = make_vm(hv, status="stopped")
    page = admin_client.get(CHANGELIST).content.decode()
    assert 'class="column-console_link"' in page
    assert f'href="/consoles/{running.pk}/vnc/"' in page and f'href="/consoles/{running.pk}/serial/"' in page
    assert f"/consoles/{stopped.pk}/" not in page


def test_vm_list_has_no_console_column_without_the_permission(hv):
    make_vm(hv)
    page = client_for(user_with()).get(CHANGELIST).content.decode()
    assert "column-console_link" not in page and "/consoles/" not in page


def test_vm_list_console_column_costs_no_query_per_row(admin_client, hv, django_assert_max_num_queries):
    for _ in range(3):
        make_vm(hv)
    admin_client.get(CHANGELIST)  # warm caches
    with django_assert_max_num_queries(12) as few:
        admin_client.get(CHANGELIST)
    for _ in range(10):
        make_vm(hv)
    with django_assert_max_num_queries(len(few.captured_queries)):
        admin_client.get(CHANGELIST)
    assert hv.calls["console"] == 0  # the list asks the host nothing


def test_a_superuser_from_the_factory_sees_both(hv):
    vm = make_vm(hv)
    page = client_for(AdminFactory.create()).get(f"{CHANGELIST}{vm.pk}/change/").content.decode()
    assert f"/consoles/{vm.pk}/vnc/" in page and f"/consoles/{vm.pk}/serial/" in page
