"""Against the real libvirtd: a VM whose volume backs another VM's linked
clone is not deleted with its disks (issue 11, point 3)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import virsh
from tests.integration.vm_support import VmEnv
from tests.support.api import post_create
from tests.support.images import qemu_img_info
from vms.models import VirtualMachine

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]


def test_deleting_the_base_of_a_linked_clone_is_409_and_the_clone_keeps_its_backing_file(vm_api, run_tasks, vm_env: VmEnv):
    quiet = {"memory": 256, "vcpus": 1, "graphics": {"type": "none"}, "storage_pool": vm_env.pool}
    response = post_create(vm_api, run_tasks, {"name": "it-base-a", "disks": [{"size": 1}], **quiet})
    assert response.status_code == 202, response.json()
    base = VirtualMachine.objects.get(name="it-base-a")
    assert base.status == "running", base.error
    # A golden image is off: QEMU holds a write lock on a running guest's disk, so B could not open it as a backing file.
    assert vm_api.post(f"/api/v1/virtualmachines/{base.pk}/force-stop").status_code == 200
    base_path = vm_env.pool_dir / "it-base-a-disk0.qcow2"
    response = post_create(vm_api, run_tasks, {"name": "it-clone-b", "disks": [{"clone_from": str(base_path), "linked": True}], **quiet})
    assert response.status_code == 202, response.json()
    clone = VirtualMachine.objects.get(name="it-clone-b")
    assert clone.status == "running", clone.error
    overlay = vm_env.pool_dir / "it-clone-b-disk0.qcow2"
    assert qemu_img_info(overlay, "-f", "qcow2", "-U")["backing-filename"] == str(base_path)

    response = vm_api.delete(f"/api/v1/virtualmachines/{base.pk}?keep_disks=false")

    assert response.status_code == 409, response.content
    assert response.json()["code"] == "disk_in_use" and "it-clone-b" in response.json()["detail"]
    assert base_path.exists()  # B's backing file is still there
    assert virsh("domstate", "it-base-a", check=False).stdout.strip() == "shut off"  # still defined
    assert virsh("domstate", "it-clone-b", check=False).stdout.strip() == "running"
    assert VirtualMachine.objects.get(pk=base.pk).status == "stopped"

    assert vm_api.delete(f"/api/v1/virtualmachines/{clone.pk}").status_code == 204
    assert vm_api.delete(f"/api/v1/virtualmachines/{base.pk}").status_code == 204
    assert not base_path.exists() and not overlay.exists()
    assert virsh("dominfo", "it-base-a", check=False).returncode != 0
