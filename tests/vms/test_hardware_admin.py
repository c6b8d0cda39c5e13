"""The VM's "Change hardware" admin page: the same services as the API, refusals on the field they name."""

from __future__ import annotations

import pytest

from tests.support.api import create_vm
from tests.support.factories import UserFactory
from tests.support.projects import join
from vms.hypervisor.documents.hardware import read_hardware
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db
CHANGE = "/admin/vms/virtualmachine/{}/change/"
PAGE = "/admin/vms/virtualmachine/{}/hardware/"


@pytest.fixture
def vm(vm_api, hv, run_tasks) -> VirtualMachine:
    return create_vm(vm_api, run_tasks, {"name": "hw-admin", "memory": 1024, "vcpus": 1, "max_memory": 2048, "max_vcpus": 2})


def form(vm: VirtualMachine, **fields) -> dict:
    data = {"what": "hardware", "memory": vm.memory_mb, "max_memory": vm.memory_maximum, "vcpus": vm.vcpus,
            "max_vcpus": vm.vcpus_maximum, "boot_order": ""}  # fmt: skip
    data.update(fields)
    return data


def test_the_vm_page_links_the_hardware_page_which_shows_the_values(admin_client, vm):
    assert PAGE.format(vm.pk) in admin_client.get(CHANGE.format(vm.pk)).content.decode()
    page = admin_client.get(PAGE.format(vm.pk)).content.decode()
    assert 'name="max_memory" value="2048"' in page and 'name="memory" value="1024"' in page
    assert vm.nics.get().mac in page and "Add NIC" in page


def test_the_form_changes_memory_live_through_the_service(admin_client, hv, vm):
    response = admin_client.post(PAGE.format(vm.pk), form(vm, memory=1536, vcpus=2), follow=True)
    assert response.status_code == 200
    assert "Changed memory, vcpus; live: memory, vcpus." in response.content.decode()
    hw = read_hardware(hv.domains["hw-admin"].xml)
    assert (hw.memory_mib, hw.vcpus) == (1536, 2)
    assert vm.events.filter(step="change hardware", user__isnull=False).exists()


def test_a_refusal_is_shown_on_its_field_and_changes_nothing(admin_client, hv, vm):
    before = hv.domains["hw-admin"].xml
    response = admin_client.post(PAGE.format(vm.pk), form(vm, max_memory=4096))
    page = response.content.decode()
    assert response.status_code == 200
    assert 'class="form-row field-max_memory errors"' in page and "stop the VM to change it" in page
    response = admin_client.post(PAGE.format(vm.pk), form(vm, boot_order="floppy"))
    assert 'class="form-row field-boot_order errors"' in response.content.decode()
    assert hv.domains["hw-admin"].xml == before


def test_nics_are_added_and_removed(admin_client, hv, vm):
    response = admin_client.post(PAGE.format(vm.pk), {"what": "add_nic", "type": "bridge", "source": "br0", "model": "virtio",
                                                       "mac": "52:54:00:01:02:03"}, follow=True)  # fmt: skip
    assert "Changed networks; live: networks." in response.content.decode()
    assert "52:54:00:01:02:03" in read_hardware(hv.domains["hw-admin"].xml).macs
    response = admin_client.post(PAGE.format(vm.pk), {"what": "add_nic", "type": "nat", "source": "nowhere", "model": "virtio"})
    assert 'class="form-row field-source errors"' in response.content.decode()
    admin_client.post(PAGE.format(vm.pk), {"what": "remove_nic", "mac": "52:54:00:01:02:03"})
    assert "52:54:00:01:02:03" not in read_hardware(hv.domains["hw-admin"].xml).macs
    assert vm.nics.count() == 1


def test_a_viewer_gets_no_button_and_no_page(client, hv, vm):
    from django.contrib.auth.models import Permission

    user = UserFactory.create(is_staff=True, permissions=Permission.objects.filter(codename__startswith="view_"))
    join(user, "viewer")
    client.force_login(user)
    assert PAGE.format(vm.pk) not in client.get(CHANGE.format(vm.pk)).content.decode()
    assert client.get(PAGE.format(vm.pk)).status_code == 403
    assert client.post(PAGE.format(vm.pk), form(vm, memory=2048)).status_code == 403
    vm.refresh_from_db()
    assert vm.memory_mb == 1024


def test_the_template_admin_takes_maxima_and_shows_a_refusal_on_the_field(admin_client, hv):
    from vms.models import VmTemplate

    data = {"name": "tpl-max", "description": "", "memory_mb": "512", "max_memory_mb": "1024", "vcpus": "1", "max_vcpus": "4",
            "architecture": "x86_64", "storage_pool": "", "os_type": "", "os_variant": "", "graphics_type": "vnc"}  # fmt: skip
    for prefix in ("disks", "nics"):
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0", f"{prefix}-MIN_NUM_FORMS": "0",
                     f"{prefix}-MAX_NUM_FORMS": "1000"})  # fmt: skip
    response = admin_client.post("/admin/vms/vmtemplate/add/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert VmTemplate.objects.values_list("max_memory_mb", "max_vcpus").get(name="tpl-max") == (1024, 4)
    response = admin_client.post("/admin/vms/vmtemplate/add/", {**data, "name": "tpl-low", "max_memory_mb": "256"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "errors field-max_memory_mb" in page and "must be from memory (512)" in page
