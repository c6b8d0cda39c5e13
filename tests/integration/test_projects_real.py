"""Against the real libvirtd: projects and quotas (issue 11, point 6).

A quota refusal and a pool not open to the project leave no domain and no
volume; another project's VM is neither shown, started, stopped nor deleted:
the domain keeps running.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from projects.models import AuditEntry, Project
from tests.integration.conftest import virsh
from tests.integration.vm_support import VmEnv
from tests.support.api import post_create
from tests.support.projects import join
from vms.models import VirtualMachine

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]

API = "/api/v1/virtualmachines/"


def _member(name: str, project: str) -> APIClient:
    user = User.objects.create_user(name, password=None)
    join(user, "operator", project)
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_quotas_and_project_boundaries_on_the_real_host(run_tasks, vm_env: VmEnv):
    Project.objects.create(name="it-a", max_vms=1, max_disk_gb=2)
    Project.objects.create(name="it-b", allowed_pools="it-none")
    alice, bob = _member("it-alice", "it-a"), _member("it-bob", "it-b")
    quiet = {"memory": 256, "vcpus": 1, "graphics": {"type": "none"}, "storage_pool": vm_env.pool}

    first = post_create(alice, run_tasks, {"name": "it-proj-a1", "disks": [{"size": 1}], **quiet})
    assert first.status_code == 202, first.json()
    vm = VirtualMachine.objects.get(name="it-proj-a1")
    assert vm.status == "running", vm.error
    assert vm.project.name == "it-a" and vm.disk_gb == 1
    volumes = vm_env.volumes()

    # Over the VM quota: 409 with the use and the limit; no domain, no volume.
    second = post_create(alice, run_tasks, {"name": "it-proj-a2", "disks": [{"size": 1}], **quiet})
    assert second.status_code == 409, second.json()
    assert (second.json()["quota"], second.json()["use"], second.json()["limit"]) == ("max_vms", 1, 1)
    assert virsh("dominfo", "it-proj-a2", check=False).returncode != 0 and vm_env.volumes() == volumes

    # Bob's project may not use this pool: 400 on storage_pool, nothing made.
    refused = post_create(bob, run_tasks, {"name": "it-proj-b1", "disks": [{"size": 1}], **quiet})
    assert refused.status_code == 400 and refused.json()["field"] == "storage_pool", refused.json()
    assert virsh("dominfo", "it-proj-b1", check=False).returncode != 0 and vm_env.volumes() == volumes

    # Bob cannot see, stop or delete Alice's VM: 404, and the domain runs on.
    assert bob.get(API + str(vm.pk)).status_code == 404
    assert bob.post(API + f"{vm.pk}/force-stop").status_code == 404
    assert bob.delete(API + str(vm.pk)).status_code == 404
    assert virsh("domstate", "it-proj-a1").stdout.strip() == "running"
    assert vm_env.volumes() == volumes

    # Alice can, and each action is on the audit trail with her name.
    assert alice.post(API + f"{vm.pk}/force-stop").status_code == 200
    assert virsh("domstate", "it-proj-a1").stdout.strip() == "shut off"
    assert alice.delete(API + str(vm.pk)).status_code == 204
    assert virsh("dominfo", "it-proj-a1", check=False).returncode != 0
    actions = list(AuditEntry.objects.filter(username="it-alice").order_by("id").values_list("action", flat=True))
    assert actions == ["vm.create", "vm.force-stop", "vm.delete"]
