"""Bounds against the real libvirtd (issue 11, point 4): disk size against the pool's
room (VAPOR_POOL_OVERCOMMIT), and the most PCI devices a VM may ask for, which
libvirt defines and QEMU starts."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tests.integration.conftest import virsh
from tests.integration.vm_support import VmEnv
from tests.support.api import post_create
from vms.hypervisor.libvirt_driver import LibvirtDriver
from vms.models import VirtualMachine
from vms.services.validation import MAX_PCI_DEVICES

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]
GIB = 1024**3


def quiet(env: VmEnv, **extra) -> dict:
    return {"memory": 128, "vcpus": 1, "graphics": {"type": "none"}, "storage_pool": env.pool, **extra}


def test_new_disks_fit_the_real_pools_room(vm_api, run_tasks, vm_env: VmEnv, hypervisor: LibvirtDriver, settings):
    pool = hypervisor.pool(vm_env.pool)
    free_gb = math.ceil(pool.available / GIB)
    settings.VAPOR = dataclasses.replace(settings.VAPOR, pool_overcommit=1.0)  # no overcommit: the free space
    response = post_create(vm_api, run_tasks, {"name": "it-room", **quiet(vm_env, disks=[{"size": 1}, {"size": free_gb}])})
    body = response.json()
    assert (response.status_code, body["field"]) == (400, "disks.1.size"), body
    assert f"pool {vm_env.pool}" in body["detail"] and "VAPOR_POOL_OVERCOMMIT" in body["detail"]
    assert vm_env.volumes() == set() and not VirtualMachine.objects.exists()
    assert virsh("dominfo", "it-room", check=False).returncode != 0

    # Twice the capacity: the thin volume promises more than the disk has free, and the guest runs.
    settings.VAPOR = dataclasses.replace(settings.VAPOR, pool_overcommit=2.0)
    response = post_create(vm_api, run_tasks, {"name": "it-room", **quiet(vm_env, disks=[{"size": free_gb + 1}])})
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="it-room")
    assert vm.status == "running", vm.error
    assert hypervisor.volume(vm_env.pool, "it-room-disk0.qcow2").capacity == (free_gb + 1) * GIB


def test_the_most_pci_devices_allowed_are_defined_and_started(vm_api, run_tasks, vm_env: VmEnv, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, max_disks=256, max_nics=256)
    # 180 virtio disks, 8 SCSI disks (sdi..sdp after 8 SATA: controllers 1 and 2, so 0-2: 3), 8 SATA (2 controllers), 15 NICs = 200.
    disks = [{"size": 1}] * 180 + [{"size": 1, "bus": "sata"}] * 8 + [{"size": 1, "bus": "scsi"}] * 8
    payload = quiet(vm_env, disks=disks, networks=[{}] * 15, graphics={"type": "vnc"})
    refused = post_create(vm_api, run_tasks, {"name": "it-wide", **payload, "networks": [{}] * 16})
    assert (refused.status_code, refused.json()["field"]) == (400, "networks"), refused.json()
    assert f"needs {MAX_PCI_DEVICES + 1}" in refused.json()["detail"]

    response = post_create(vm_api, run_tasks, {"name": "it-wide", **payload})
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="it-wide")
    assert vm.status == "running", vm.error
    live = virsh("dumpxml", "it-wide").stdout
    assert live.count("<controller type='scsi'") == 3 and "lsilogic" not in live
    assert live.count("model='virtio-scsi'") == 3
