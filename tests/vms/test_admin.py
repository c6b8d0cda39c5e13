"""VMs in the admin."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/vms/virtualmachine/"


def add(admin_client, run_tasks, **fields):
    data = {"vm_name": "web", "memory": 1024, "cpus": 1, "disk_size": 5, "disk_bus": "virtio", "network_type": "nat",
            "network_source": "default", "network_model": "virtio", "pool": "default", **fields}  # fmt: skip
    with run_tasks():
        return admin_client.post(CHANGELIST + "add/", data)


def test_add_form_creates_through_the_service(admin_client, hv, run_tasks):
    response = add(admin_client, run_tasks, vnc_password="pw123", firmware_uefi="on")
    assert response.status_code == 302, response.content.decode()[-3000:]
    vm = VirtualMachine.objects.get()
    assert (vm.status, vm.uefi, vm.graphics_password_set) == ("running", True, True)
    assert "web-disk0.qcow2" in [p.name for p in hv.pool_dir.iterdir()]


def test_add_form_shows_service_errors_on_the_field(admin_client, hv, run_tasks):
    response = add(admin_client, run_tasks, network_source="nope")
    assert response.status_code == 200
    assert "libvirt network &#x27;nope&#x27; does not exist" in response.content.decode()
    assert not VirtualMachine.objects.exists()


def test_detail_shows_inlines_event_log_and_masked_xml(admin_client, hv, run_tasks):
    add(admin_client, run_tasks, vnc_password="pw123")
    vm = VirtualMachine.objects.get()
    page = admin_client.get(f"{CHANGELIST}{vm.pk}/change/").content.decode()
    assert "web-disk0.qcow2" in page and "event log" in page.lower() and "define domain" in page
    assert "&lt;domain" in page and "********" in page and "pw123" not in page


def test_actions_and_delete(admin_client, hv, run_tasks):
    add(admin_client, run_tasks)
    vm = VirtualMachine.objects.get()
    admin_client.post(CHANGELIST, {"action": "action_force_stop", "_selected_action": [vm.pk]})
    assert hv.domains["web"].state == "shutoff"
    admin_client.post(CHANGELIST, {"action": "action_start", "_selected_action": [vm.pk]})
    assert hv.domains["web"].state == "running"
    admin_client.post(CHANGELIST, {"action": "action_delete", "_selected_action": [vm.pk]})
    assert not VirtualMachine.objects.exists() and hv.domains == {} and list(hv.pool_dir.iterdir()) == []


def test_changelist_query_count_is_flat(admin_client, hv, run_tasks):
    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(CHANGELIST).status_code == 200
        return len(captured.captured_queries)

    add(admin_client, run_tasks, vm_name="a")
    few = count()
    for name in "bcdef":
        add(admin_client, run_tasks, vm_name=name)
    assert count() == few
