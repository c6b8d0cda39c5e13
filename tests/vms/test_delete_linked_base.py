"""Deleting a VM whose volume backs another VM's linked clone, or a template's
linked base, is refused (issue 11, point 3), on the in-memory hypervisor."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api import create_vm
from tests.support.images import make_image
from vms.models import TemplateDisk, VirtualMachine, VmTemplate

pytestmark = pytest.mark.django_db


def url(vm: VirtualMachine, keep_disks: bool = False) -> str:
    return f"/api/v1/virtualmachines/{vm.pk}" + ("?keep_disks=true" if keep_disks else "")


@pytest.fixture
def base_and_clone(vm_api, hv, run_tasks) -> tuple[VirtualMachine, VirtualMachine]:
    base = create_vm(vm_api, run_tasks, {"name": "base-a", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})
    base_path = base.disks.get().path
    # The in-memory hypervisor's volumes are placeholders; the create request reads the clone source's header.
    Path(base_path).unlink()
    make_image(Path(base_path))
    payload = {"name": "clone-b", "memory": 512, "vcpus": 1, "disks": [{"clone_from": base_path, "linked": True}]}
    clone = create_vm(vm_api, run_tasks, payload)
    assert (base.status, clone.status) == ("running", "running"), (base.error, clone.error)
    assert clone.disks.get().source_path == base_path
    return base, clone


def test_deleting_the_base_of_a_linked_clone_is_409_naming_the_clone_and_changes_nothing(vm_api, hv, base_and_clone):
    base, _ = base_and_clone
    base_path = base.disks.get().path
    before = set(hv.domains)

    response = vm_api.delete(url(base))

    assert response.status_code == 409, response.content
    assert response.json()["code"] == "disk_in_use"
    assert "clone-b" in response.json()["detail"]
    assert set(hv.domains) == before and "base-a" in hv.domains
    assert VirtualMachine.objects.get(pk=base.pk).status == "running"
    assert (hv.pool_dir / "base-a-disk0.qcow2").exists() and base_path == str(hv.pool_dir / "base-a-disk0.qcow2")


def test_keep_disks_still_deletes_the_base_and_keeps_its_volume(vm_api, hv, base_and_clone):
    base, clone = base_and_clone
    assert vm_api.delete(url(base, keep_disks=True)).status_code == 204
    assert not VirtualMachine.objects.filter(pk=base.pk).exists() and "base-a" not in hv.domains
    assert (hv.pool_dir / "base-a-disk0.qcow2").exists()
    assert "clone-b" in hv.domains


def test_the_base_can_be_deleted_once_the_clone_is_gone(vm_api, hv, base_and_clone):
    base, clone = base_and_clone
    assert vm_api.delete(url(clone)).status_code == 204
    assert vm_api.delete(url(base)).status_code == 204
    assert hv.domains == {} and list(hv.pool_dir.iterdir()) == []


def test_a_failed_clone_does_not_hold_the_base(vm_api, hv, base_and_clone):
    base, clone = base_and_clone
    VirtualMachine.objects.filter(pk=clone.pk).update(status="failed")
    assert vm_api.delete(url(base)).status_code == 204


def test_a_templates_linked_base_is_409_naming_the_template(vm_api, hv, run_tasks):
    base = create_vm(vm_api, run_tasks, {"name": "golden", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]})
    template = VmTemplate.objects.create(name="from-golden")
    TemplateDisk.objects.create(template=template, clone_from=base.disks.get().path, source_format="qcow2", linked=True)

    response = vm_api.delete(url(base))

    assert response.status_code == 409 and "from-golden" in response.json()["detail"]
    assert VirtualMachine.objects.get(pk=base.pk).status == "running" and "golden" in hv.domains
    assert (hv.pool_dir / "golden-disk0.qcow2").exists()
    template.delete()
    assert vm_api.delete(url(base)).status_code == 204
