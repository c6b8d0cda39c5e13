"""Disk size against the pool (issue 11, point 4): the new disks of one request (new
volumes and clones, at their virtual size) fit in the pool's free space plus
(VAPOR_POOL_OVERCOMMIT - 1) x its capacity; past that a 400 on the disk where the
total passes, nothing created. The real daemon's pool: tests/integration/test_bounds_libvirt.py."""

from __future__ import annotations

import dataclasses

import pytest

from tests.support.api import post_create
from tests.support.images import make_image
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db
GIB = 1024**3
BASE = {"name": "big", "memory": 1024, "vcpus": 1}


@pytest.fixture
def small_pool(hv, settings):
    """100 GiB, 40 GiB of it free; overcommit 1.5: room for 40 + 50 = 90 GiB of new disks."""
    hv.pool_capacity, hv.pool_available = 100 * GIB, 40 * GIB
    settings.VAPOR = dataclasses.replace(settings.VAPOR, pool_overcommit=1.5)
    return hv


def refused(response, field: str, *words: str) -> None:
    body = response.json()
    assert (response.status_code, body["field"]) == (400, field), body
    for word in words:
        assert word in body["detail"], body


def nothing_created(hv) -> None:
    assert not VirtualMachine.objects.exists()
    assert list(hv.pool_dir.iterdir()) == [] and hv.domains == {}


def test_new_disks_past_the_pools_room_are_400_on_the_disk_that_passes_it(vm_api, hv, run_tasks, small_pool):
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 91}]}), "disks.0.size", "91 GB", "90 GB", "VAPOR_POOL_OVERCOMMIT")
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 50}, {"size": 41}]}), "disks.1.size", "91 GB")
    nothing_created(hv)
    assert post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 50}, {"size": 40}]}).status_code == 202


def test_existing_disks_take_no_room(vm_api, hv, run_tasks, small_pool, disk_root):
    existing = make_image(disk_root / "big.qcow2", "200G")
    response = post_create(vm_api, run_tasks, {**BASE, "disks": [{"path": str(existing)}, {"size": 90}]})
    assert response.status_code == 202, response.json()


def test_a_clone_counts_at_its_virtual_size(vm_api, hv, run_tasks, small_pool, disk_root):
    base = make_image(disk_root / "base.qcow2", "80G")  # a few hundred kB on disk
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 20}, {"clone_from": str(base)}]}), "disks.1.clone_from", "100 GB")
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"clone_from": str(base), "size": 91}]}), "disks.0.size")
    nothing_created(hv)


def test_a_ratio_below_one_keeps_part_of_the_pool_free(vm_api, hv, run_tasks, small_pool, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, pool_overcommit=0.8)  # 40 - 20: 20 GiB
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 21}]}), "disks.0.size", "20 GB")
    hv.pool_available = 10 * GIB  # fuller than the reserve: no room at all
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 1}]}), "disks.0.size", "may take: 0 GB")
    nothing_created(hv)


def test_the_default_ratio_is_four(settings):
    from vaporsite.env import load

    assert load({}).pool_overcommit == 4.0
    assert load({"VAPOR_POOL_OVERCOMMIT": "1"}).pool_overcommit == 1.0


def test_a_template_asking_more_than_the_pool_is_refused_when_a_vm_is_made_from_it(vm_api, hv, run_tasks, small_pool):
    assert vm_api.post("/api/v1/virtualmachines/templates", {"name": "huge", "disks": [{"size": 500}]}, format="json").status_code == 201
    refused(post_create(vm_api, run_tasks, {"name": "from-huge", "template": "huge"}), "disks.0.size", "VAPOR_POOL_OVERCOMMIT")
    nothing_created(hv)
