"""The VM page as a control panel (issue 13, points 2 and 7): power buttons by state and by the user's
role in the VM's project, POST-only, a message after each; the title and breadcrumb; inline rows without
internal labels; the console's real port only; times to the second with the zone; the VM list's columns."""

from __future__ import annotations

import html as htmllib
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.support.api import create_vm
from tests.support.projects import join
from vms.models import VirtualMachine, VmEvent

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/vms/virtualmachine/"
BUTTON = re.compile(r'class="vapor-power-button vapor-power-([a-z-]+)">([^<]+)</button>')
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def found(pattern: str, html: str, flags: int = 0) -> str:
    """The first group of `pattern`'s first match in `html` (the test fails when there is none)."""
    match = re.search(pattern, html, flags)
    assert match is not None, pattern
    return match[1]


def page(vm: VirtualMachine) -> str:
    return f"{CHANGELIST}{vm.pk}/change/"


def action_url(vm: VirtualMachine, action: str) -> str:
    return f"{CHANGELIST}{vm.pk}/action/{action}/"


def buttons(client: Client, vm: VirtualMachine) -> list[tuple[str, str]]:
    response = client.get(page(vm))
    assert response.status_code == 200
    return BUTTON.findall(response.content.decode())


def text(html: str) -> str:
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def breadcrumbs(html: str) -> str:
    return text(found(r'<div class="breadcrumbs">(.*?)</div>', html, re.S))


def member(role: str, project: str | None = None) -> Client:
    """A staff user whose only rights come from `role` in `project` (None: the default project)."""
    user = User.objects.create_user(f"{role}-{project or 'default'}", password=None, is_staff=True)
    join(user, role, project)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def vm(vm_api, hv, run_tasks) -> VirtualMachine:
    made = create_vm(vm_api, run_tasks, {"name": "web", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})
    assert made.status == "running"
    return made


# --- buttons by state ----------------------------------------------------------------------------


def test_a_running_vm_offers_shut_down_force_off_and_reboot_and_a_stopped_one_start(admin_client, vm, hv):
    assert buttons(admin_client, vm) == [("stop", "Shut down"), ("force-stop", "Force off"), ("reboot", "Reboot")]

    response = admin_client.post(action_url(vm, "force-stop"), follow=True)

    assert response.redirect_chain == [(page(vm), 302)]
    assert "Force off: web, now stopped." in response.content.decode()
    assert hv.domains["web"].state == "shutoff" and VirtualMachine.objects.get(pk=vm.pk).status == "stopped"
    assert BUTTON.findall(response.content.decode()) == [("start", "Start")]

    response = admin_client.post(action_url(vm, "start"), follow=True)
    assert "Start: web, now running." in response.content.decode() and hv.domains["web"].state == "running"
    assert [action for action, _ in BUTTON.findall(response.content.decode())] == ["stop", "force-stop", "reboot"]


def test_reboot_and_shut_down_reach_the_hypervisor_and_the_event_log(admin_client, vm, hv):
    hv.calls.clear()
    assert "the guest was asked to reboot" in admin_client.post(action_url(vm, "reboot"), follow=True).content.decode()
    assert "the guest was asked to shut down" in admin_client.post(action_url(vm, "stop"), follow=True).content.decode()
    assert (hv.calls["reboot_domain"], hv.calls["shutdown_domain"]) == (1, 1)
    assert list(VmEvent.objects.filter(vm=vm, step__in=["reboot", "stop"]).values_list("step", flat=True)) == ["reboot", "stop"]


@pytest.mark.parametrize("status", ["provisioning", "deleting", "failed", "missing"])
def test_a_vm_being_worked_on_failed_or_missing_offers_no_power_button(admin_client, vm, status):
    VirtualMachine.objects.filter(pk=vm.pk).update(status=status)
    assert buttons(admin_client, vm) == []


def test_an_action_the_state_does_not_allow_is_a_message_and_no_call(admin_client, vm, hv):
    hv.calls.clear()
    response = admin_client.post(action_url(vm, "start"), follow=True)
    assert response.status_code == 200 and "Start is not possible: VM web is running." in response.content.decode()
    assert hv.calls["start_domain"] == 0


def test_a_refusal_from_the_service_is_a_message_not_a_500(admin_client, vm, hv):
    del hv.domains["web"]  # gone behind Vapor's back: the hypervisor answers "not found"
    response = admin_client.post(action_url(vm, "reboot"), follow=True)
    assert response.status_code == 200
    assert "Reboot refused: Domain not found" in response.content.decode()


def test_a_get_to_an_action_does_nothing(admin_client, vm, hv):
    hv.calls.clear()
    assert admin_client.get(action_url(vm, "force-stop")).status_code == 405
    assert hv.domains["web"].state == "running" and sum(hv.calls.values()) == 0
    assert admin_client.post(action_url(vm, "explode")).status_code == 404


def test_the_action_needs_the_csrf_token(vm, hv):
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("root", password=None))
    assert client.post(action_url(vm, "force-stop")).status_code == 403
    assert hv.domains["web"].state == "running"


# --- buttons by permission -----------------------------------------------------------------------


def test_an_operator_of_the_project_gets_the_buttons_and_may_press_them(vm, hv):
    operator = member("operator")
    assert [action for action, _ in buttons(operator, vm)] == ["stop", "force-stop", "reboot"]
    assert operator.post(action_url(vm, "force-stop")).status_code == 302
    assert hv.domains["web"].state == "shutoff"


def test_a_viewer_sees_no_button_and_is_refused(vm, hv):
    viewer = member("viewer")
    assert buttons(viewer, vm) == []
    hv.calls.clear()
    assert viewer.post(action_url(vm, "force-stop")).status_code == 403
    assert hv.domains["web"].state == "running" and sum(hv.calls.values()) == 0


def test_a_user_of_another_project_does_not_see_the_vm(vm, hv):
    stranger = member("operator", "other")
    assert stranger.get(page(vm)).status_code == 302
    hv.calls.clear()
    response = stranger.post(action_url(vm, "force-stop"))
    assert (response.status_code, response["Location"]) == (302, "/admin/")
    assert hv.domains["web"].state == "running" and sum(hv.calls.values()) == 0


# --- what the page says ----------------------------------------------------------------------------


def test_the_page_says_what_it_is_with_the_breadcrumb_and_no_save_button(admin_client, vm):
    html = admin_client.get(page(vm)).content.decode()
    assert "<h1>Virtual machine: web</h1>" in html and "<title>Virtual machine: web |" in html
    assert "Change virtual machine" not in html and 'name="_save"' not in html
    assert breadcrumbs(html) == " \u203a ".join(["Home", "Compute", "Virtual machines", "web"])


def test_no_page_says_virtual_machines_twice_and_the_add_button_says_create(admin_client, vm):
    for url in ("/admin/", "/admin/vms/", CHANGELIST, page(vm), f"{CHANGELIST}{vm.pk}/delete/", f"{CHANGELIST}{vm.pk}/history/"):
        html = text(admin_client.get(url).content.decode())
        assert "Virtual machines \u203a Virtual machines" not in html, url
        assert "Add virtual machine" not in html, url
    listing = admin_client.get(CHANGELIST).content.decode()
    assert re.search(r'class="addlink">Create virtual machine</a>', listing)
    assert "<title>Virtual machines |" in listing and "<h1>Virtual machines</h1>" in listing  # not "Select virtual machine to change"
    assert "<h1>Create virtual machine</h1>" in admin_client.get(CHANGELIST + "add/").content.decode()


def test_inline_rows_carry_no_internal_labels(admin_client, vm):
    html = admin_client.get(page(vm)).content.decode()
    assert "vda" in html and "accepted" in html  # the columns still say it
    assert "web vda" not in html and "web accepted info" not in html and "web nat:default" not in html
    assert html.count('<td class="original">') >= 3 and not re.search(r'<td class="original">\s*<p>', html)


def test_the_console_shows_the_real_port_only(admin_client, vm, hv):
    html = admin_client.get(page(vm)).content.decode()
    assert "Graphics port" not in html and "Graphics listen" not in html
    domain = hv.domains["web"]
    domain.xml = domain.xml.replace("port='-1'", "port='5907'").replace('port="-1"', 'port="5907"')
    assert "VNC on 127.0.0.1:5907" in admin_client.get(page(vm)).content.decode()
    VirtualMachine.objects.filter(pk=vm.pk).update(status="stopped")
    html = admin_client.get(page(vm)).content.decode()
    console = text(found(r'<fieldset class="module aligned[^"]*" aria-labelledby="fieldset-0-3-heading">(.*?)</fieldset>', html, re.S))
    assert console == "Console Console: VNC on 127.0.0.1, port assigned at start Graphics password set:", console


def test_times_are_to_the_second_with_the_zone(admin_client, vm, settings):
    html = admin_client.get(page(vm)).content.decode()
    created = found(r'field-created_at">.*?<div class="readonly">([^<]+)</div>', html, re.S)
    assert re.fullmatch(TIME + " UTC", created), created
    event_times = re.findall(r'<td class="field-at">\s*<p>([^<]+)</p>', html)
    assert event_times and all(re.fullmatch(TIME + " UTC", t) for t in event_times), event_times
    listing = admin_client.get(CHANGELIST).content.decode()
    assert re.search(r'<td class="field-checked">\d{4}-\d\d-\d\d<br>\d\d:\d\d:\d\d UTC</td>', listing)

    settings.TIME_ZONE = "Europe/Berlin"
    html = admin_client.get(page(vm)).content.decode()
    assert re.search(r'field-created_at">.*?<div class="readonly">' + TIME + " CET</div>", html, re.S)


# --- the list -------------------------------------------------------------------------------------


def test_the_list_has_few_combined_columns_and_every_power_action(admin_client, vm):
    html = admin_client.get(CHANGELIST).content.decode()
    columns = re.findall(r'<th scope="col" class="(?:sortable )?column-([a-z_]+)', html)
    assert columns == ["name", "placed", "status_badge", "console_link", "size", "os", "checked"]
    assert "512 MB · 1 vCPU" in html
    for action in ("action_start", "action_stop", "action_force_stop", "action_reboot", "action_delete", "refresh_states"):
        assert f'value="{action}"' in html, action


def test_the_status_column_adds_the_live_state_only_when_it_says_more(admin_client, vm):
    assert "vapor-state" not in admin_client.get(CHANGELIST).content.decode()
    VirtualMachine.objects.filter(pk=vm.pk).update(state="paused")
    assert '<small class="vapor-state">paused</small>' in admin_client.get(CHANGELIST).content.decode()
