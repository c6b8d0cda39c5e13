"""The VM page's Disks & CD-ROMs panel: the same services as the API, through the admin's forms."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages

from isos.models import IsoImage
from isos.services import IsoMetadata, iso_register_path
from tests.support.isos import make_iso
from vms.models import VirtualMachine

BASE = "/api/v1/virtualmachines"


@pytest.fixture
def vm(vm_api, hv, run_tasks, iso_dirs) -> VirtualMachine:
    iso = iso_register_path(path=str(make_iso(iso_dirs.search[0] / "install.iso")), meta=IsoMetadata(), digests=None)
    IsoImage.objects.filter(pk=iso.pk).update(status="ready")
    with run_tasks():
        response = vm_api.post(
            f"{BASE}/create-enhanced", {"name": "pan", "memory": 512, "vcpus": 1, "disks": [{"size": 1}], "iso_path": iso.pk}, format="json"
        )
    assert response.status_code == 202, response.json()
    return VirtualMachine.objects.get(name="pan")


def page(vm: VirtualMachine) -> str:
    return f"/admin/vms/virtualmachine/{vm.pk}/change/"


def post(client, vm: VirtualMachine, op: str, data: dict[str, str]) -> str:
    """The message the operation left (the page is not followed: earlier messages are still queued before it)."""
    response = client.post(f"/admin/vms/virtualmachine/{vm.pk}/disks/{op}/", data)
    assert response.status_code == 302 and response["Location"] == page(vm), response
    return [str(m) for m in get_messages(response.wsgi_request)][-1]


def test_the_panel_lists_disks_and_drives_and_offers_the_forms(admin_client, vm):
    body = admin_client.get(page(vm)).content.decode()
    assert "Disks &amp; CD-ROMs" in body and "<code>vda</code>" in body and "ISO install.iso" in body
    for form in ("vapor-disk-attach", "vapor-disk-grow", "vapor-disk-detach", "vapor-cdrom-change"):
        assert f'id="{form}"' in body


def test_attach_grow_detach_and_eject_from_the_page(admin_client, hv, vm):
    assert post(admin_client, vm, "attach", {"size": "3", "bus": "virtio"}) == "Disk vdb attached (3 GB, virtio)."
    assert post(admin_client, vm, "grow", {"target_dev": "vdb", "size_gb": "5"}) == "Disk vdb is now 5 GB."
    assert hv.resized == {"vdb": 5 * 1024**3}
    assert post(admin_client, vm, "detach", {"target_dev": "vdb", "delete_volume": "on"}) == "Disk vdb detached and its volume deleted."
    assert post(admin_client, vm, "cdrom", {"target_dev": "sda", "iso": ""}) == "CD-ROM sda ejected."
    assert post(admin_client, vm, "cdrom", {"target_dev": "sda", "iso": "install.iso"}) == "CD-ROM sda: install.iso inserted."
    assert list(vm.disks.values_list("target_dev", flat=True)) == ["vda"]


def test_refusals_are_messages_and_change_nothing(admin_client, hv, vm):
    before = hv.domains["pan"].xml
    assert post(admin_client, vm, "attach", {"size": "2", "bus": "sata"}).startswith("Refused (bus): VM pan is running")
    assert post(admin_client, vm, "grow", {"target_dev": "vda", "size_gb": "x"}) == "Refused (size_gb): must be a whole number of GB"
    assert hv.domains["pan"].xml == before


def test_a_viewer_sees_the_panel_without_forms_and_cannot_post(client, vm, django_user_model):
    from tests.support.projects import join

    viewer = django_user_model.objects.create_user("watcher", password="pw", is_staff=True)
    join(viewer, "viewer")
    client.force_login(viewer)
    body = client.get(page(vm)).content.decode()
    assert "Disks &amp; CD-ROMs" in body and 'id="vapor-disk-attach"' not in body
    assert client.post(f"/admin/vms/virtualmachine/{vm.pk}/disks/attach/", {"size": "1"}).status_code == 403
    assert list(vm.disks.values_list("target_dev", flat=True)) == ["vda"]
