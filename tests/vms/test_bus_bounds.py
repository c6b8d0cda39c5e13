"""Disks per bus as the machine allows (issue 11, point 4).

Each virtio disk, each NIC, each SATA controller (6 drives, CD-ROMs included)
and each SCSI controller (7 drives) is a PCI device; past MAX_PCI_DEVICES
(200) libvirt could not place them all, so the request is a 400 on `disks`
(or on `networks` when the NICs tip it over), nothing created. The defaults
(64 disks, 16 NICs) stay far below it; the bound matters once
VAPOR_MAX_DISKS and VAPOR_MAX_NICS are raised. The real daemon defines and
starts the largest VM allowed: tests/integration/test_bounds_libvirt.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.support.api import post_create
from vms.models import VirtualMachine
from vms.services.validation import MAX_PCI_DEVICES

pytestmark = pytest.mark.django_db
BASE = {"name": "wide", "memory": 1024, "vcpus": 1}


@pytest.fixture(autouse=True)
def raised_counts(settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, max_disks=256, max_nics=256)


def refused(response, field: str, *words: str) -> None:
    body = response.json()
    assert (response.status_code, body["field"]) == (400, field), body
    for word in words:
        assert word in body["detail"], body
    assert not VirtualMachine.objects.filter(name=BASE["name"]).exists()


def test_the_bound_is_two_hundred():
    assert MAX_PCI_DEVICES == 200


def test_virtio_disks_past_the_pci_devices_are_400_on_disks(vm_api, hv, run_tasks):
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 1}] * 201, "networks": []}), "disks", "needs 201", "201 virtio")
    assert hv.domains == {} and list(hv.pool_dir.iterdir()) == []
    assert post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 1}] * 200, "networks": []}).status_code == 202


def test_nics_that_tip_it_over_are_400_on_networks(vm_api, hv, run_tasks):
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 1}] * 190, "networks": [{}] * 11}), "networks", "11 NICs")


def test_sata_and_scsi_drives_count_by_controller(vm_api, hv, run_tasks):
    # 156 virtio disks + 42 SATA disks (7 controllers) + 1 SCSI disk (sdaq, index 42: controller 6, so 7) = 170 ...
    sata, scsi = [{"size": 1, "bus": "sata"}], [{"size": 1, "bus": "scsi"}]
    fits = [{"size": 1}] * 156 + sata * 42 + scsi  # 156 + 7 + 7 = 170
    assert post_create(vm_api, run_tasks, {**BASE, "name": "fits", "disks": fits, "networks": [{}] * 30}).status_code == 202
    # ... one NIC more than 200 - 170: 400, the controllers counted in the message.
    response = post_create(vm_api, run_tasks, {**BASE, "disks": fits, "networks": [{}] * 31})
    refused(response, "networks", "needs 201", "156 virtio disks, 7 SATA controllers", "7 SCSI controllers", "31 NICs")


def test_cdroms_are_sata_drives_too(vm_api, hv, run_tasks, iso_dirs):
    from tests.support.isos import make_iso, register_ready

    iso = register_ready(make_iso(iso_dirs.search[0] / "a.iso"))
    # 155 virtio + 6 SATA disks (1 controller) + 44 NICs = 200; the CD-ROM is the 7th SATA drive: a 2nd controller.
    disks = [{"size": 1}] * 155 + [{"size": 1, "bus": "sata"}] * 6
    request = {**BASE, "disks": disks, "networks": [{}] * 44}
    assert post_create(vm_api, run_tasks, {**request, "name": "fits"}).status_code == 202
    refused(post_create(vm_api, run_tasks, {**request, "iso_path": iso.pk}), "networks", "needs 201", "2 SATA controllers")


def test_templates_have_the_same_bound(vm_api, hv):
    response = vm_api.post("/api/v1/virtualmachines/templates", {"name": "t", "disks": [{"size": 1}] * 201, "networks": []}, format="json")
    assert (response.status_code, response.json()["field"]) == (400, "disks"), response.json()
