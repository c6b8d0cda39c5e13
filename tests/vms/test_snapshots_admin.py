"""The VM page's Snapshots panel and "Take snapshot" form (issue 14 item 4), on the in-memory hypervisor: an operator
takes, reverts and deletes snapshots through the same services as the API, each through a POST (revert and delete
after a confirmation page); a viewer sees the list and neither the form nor the links, and a POST of theirs is 403."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.support.api import create_vm
from tests.support.projects import join
from vms.models import VirtualMachine, VmSnapshot

pytestmark = pytest.mark.django_db
BASE = "/api/v1/virtualmachines"


def member(role: str) -> Client:
    user = User.objects.create_user(username=f"snap-{role}", password="pw", is_staff=True)
    join(user, role)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def vm(vm_api, hv, run_tasks) -> VirtualMachine:
    vm = create_vm(vm_api, run_tasks, {"name": "snap-admin", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})
    assert vm_api.post(f"{BASE}/{vm.pk}/force-stop").status_code == 200
    return vm


def page(vm: VirtualMachine) -> str:
    return f"/admin/vms/virtualmachine/{vm.pk}/change/"


def test_an_operator_takes_reverts_and_deletes_a_snapshot_from_the_vm_page(vm, hv):
    client = member("operator")
    html = client.get(page(vm)).content.decode()
    assert 'id="vapor-snapshots"' in html and "No snapshots." in html and 'id="vapor-snapshot-take"' in html
    disk = hv.pool_dir / "snap-admin-disk0.qcow2"
    disk.write_bytes(b"marker")
    response = client.post(f"/admin/vms/virtualmachine/{vm.pk}/snapshots/take/", {"name": "first", "description": "clean"}, follow=True)
    assert "Snapshot first of snap-admin taken." in response.content.decode()
    assert 'data-name="first"' in response.content.decode()
    disk.write_bytes(b"changed")

    revert = f"/admin/vms/virtualmachine/{vm.pk}/snapshots/first/revert/"
    confirm = client.get(revert).content.decode()
    assert "Revert snapshot first of snap-admin?" in confirm and disk.read_bytes() == b"changed", "a GET changes nothing"
    done = client.post(revert, follow=True).content.decode()
    assert "VM snap-admin reverted to snapshot first, now shutoff." in done and disk.read_bytes() == b"marker"

    refused = client.post(f"/admin/vms/virtualmachine/{vm.pk}/snapshots/take/", {"name": "first"}, follow=True).content.decode()
    assert "Snapshot refused: VM snap-admin already has a snapshot named" in refused

    delete = f"/admin/vms/virtualmachine/{vm.pk}/snapshots/first/delete/"
    assert "Delete snapshot first of snap-admin?" in client.get(delete).content.decode()
    assert "Snapshot first of snap-admin deleted." in client.post(delete, follow=True).content.decode()
    assert not VmSnapshot.objects.exists() and hv.list_snapshots("snap-admin") == []


def test_a_viewer_sees_the_list_but_may_not_take_revert_or_delete(vm, vm_api):
    assert vm_api.post(f"{BASE}/{vm.pk}/snapshots", {"name": "s"}, format="json").status_code == 201
    client = member("viewer")
    html = client.get(page(vm)).content.decode()
    assert 'data-name="s"' in html
    assert 'id="vapor-snapshot-take"' not in html and "Revert…" not in html
    assert client.post(f"/admin/vms/virtualmachine/{vm.pk}/snapshots/take/", {"name": "t"}).status_code == 403
    assert client.get(f"/admin/vms/virtualmachine/{vm.pk}/snapshots/s/revert/").status_code == 403
    assert client.post(f"/admin/vms/virtualmachine/{vm.pk}/snapshots/s/delete/").status_code == 403
    assert VmSnapshot.objects.filter(vm=vm).count() == 1
