"""Event rows on PostgreSQL, which enforces column lengths (SQLite does not)."""

from __future__ import annotations

import pytest

from tests.support.images import make_image
from vms.models import VirtualMachine

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_a_clone_from_a_long_path_is_provisioned_and_its_step_recorded(vm_api, hv, run_tasks, disk_root):
    deep = disk_root / ("templates-" + "x" * 60) / "ubuntu-22.04-server-cloudimg-amd64-base.qcow2"
    deep.parent.mkdir()
    make_image(deep, "64M")
    with run_tasks():
        response = vm_api.post(
            "/api/v1/virtualmachines/create-enhanced",
            {"name": "long", "memory": 256, "vcpus": 1, "disks": [{"clone_from": str(deep)}]},
            format="json",
        )
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get()
    assert vm.status == "running", vm.error
    step = vm.events.get(step__startswith="clone ").step
    assert str(deep) in step and len(step) > 64
