"""Bounds on every number and list of a VM request (issue 11, point 4): always a 400 naming the field, nothing left behind."""

from __future__ import annotations

import dataclasses
import json

import pytest

from isos.models import IsoImage
from tests.support.api import post_create
from tests.vms.test_admin import form_data
from vms.models import VirtualMachine, VmTemplate

pytestmark = pytest.mark.django_db
TEMPLATES = "/api/v1/virtualmachines/templates"
ADMIN_ADD = "/admin/vms/virtualmachine/add/"
BASE = {"name": "big", "memory": 1024, "vcpus": 1}
HUGE = 100000000000000000000  # 10^20: overflowed the database column (a 500) before the bound


def nothing_created(hv) -> None:
    assert not VirtualMachine.objects.exists()
    assert not IsoImage.objects.exists()
    assert list(hv.pool_dir.iterdir()) == []
    assert hv.domains == {}


def refused(response, field: str, *words: str) -> None:
    body = response.json()
    assert response.status_code == 400, body
    assert body["field"] == field, body
    for word in words:
        assert word in body["detail"], body


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"disks": [{"size": HUGE}]}, "disks.0.size", ("at most 65536 GB", "VAPOR_MAX_DISK_GB")),
        ({"disks": [{"size": 65537}]}, "disks.0.size", ("at most 65536 GB",)),
        ({"disks": [{"size": 1}, {"size": HUGE}]}, "disks.1.size", ("VAPOR_MAX_DISK_GB",)),
        ({"disk_size": HUGE}, "disks.0.size", ("VAPOR_MAX_DISK_GB",)),
        ({"disks": [{"size": 1, "boot_order": 2**40}]}, "disks.0.boot_order", ("1-258",)),
        ({"memory": HUGE}, "memory", ("at most",)),
        ({"vcpus": HUGE}, "vcpus", ("at most",)),
        ({"graphics": {"port": HUGE}}, "graphics.port", ("5900-65535",)),
    ],
)
def test_numbers_past_their_bound_are_400_on_the_field(vm_api, hv, run_tasks, change, field, words):
    refused(post_create(vm_api, run_tasks, {**BASE, **change}), field, *words)
    nothing_created(hv)


def test_the_legacy_endpoint_has_the_same_disk_bound(vm_api, hv, run_tasks):
    with run_tasks():
        response = vm_api.post("/api/v1/virtualmachines/", {**BASE, "disk_size": HUGE}, format="json")
    refused(response, "disks.0.size", "VAPOR_MAX_DISK_GB")
    nothing_created(hv)


def test_the_disk_bound_follows_the_setting(vm_api, hv, run_tasks, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, max_disk_gb=100)
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 101}]}), "disks.0.size", "at most 100 GB")
    nothing_created(hv)
    assert post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 100}]}).status_code == 202


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"disks": [{"size": HUGE}]}, "disks.0.size"),
        ({"disks": [{"size": 1, "boot_order": 2**40}]}, "disks.0.boot_order"),
        ({"memory": HUGE}, "memory"),
        ({"vcpus": HUGE}, "vcpus"),
    ],
)
def test_templates_have_the_same_bounds(vm_api, hv, change, field):
    response = vm_api.post(TEMPLATES, {"name": "t", **change}, format="json")
    refused(response, field)
    assert not VmTemplate.objects.exists()


def test_the_admin_create_form_reaches_the_same_rule(admin_client, hv, run_tasks):
    with run_tasks():
        response = admin_client.post(ADMIN_ADD, form_data(disks=[{"size": str(HUGE), "format": "qcow2", "bus": "virtio"}]))
    assert response.status_code == 200  # the form again, with the error
    assert "VAPOR_MAX_DISK_GB" in response.content.decode()
    nothing_created(hv)


# The fake host: 16 GiB (16384 MB) and 8 CPUs.


def test_memory_past_the_host_times_the_ratio_is_400(vm_api, hv, run_tasks, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, memory_overcommit=1.5)
    refused(post_create(vm_api, run_tasks, {**BASE, "memory": 1000000000000}), "memory", "at most")  # the request
    refused(post_create(vm_api, run_tasks, {**BASE, "memory": 1000000000}), "memory", "the host has 16384 MB", "1.5")
    refused(post_create(vm_api, run_tasks, {**BASE, "memory": 24577}), "memory", "at most 24576 MB", "VAPOR_MEMORY_OVERCOMMIT")
    nothing_created(hv)
    assert post_create(vm_api, run_tasks, {**BASE, "memory": 24576}).status_code == 202


def test_vcpus_past_the_host_times_the_ratio_is_400(vm_api, hv, run_tasks, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, cpu_overcommit=2.0)
    refused(post_create(vm_api, run_tasks, {**BASE, "vcpus": 17}), "vcpus", "at most 16", "the host has 8 CPUs", "VAPOR_CPU_OVERCOMMIT")
    nothing_created(hv)
    assert post_create(vm_api, run_tasks, {**BASE, "vcpus": 16}).status_code == 202


def test_the_ratios_follow_the_settings(vm_api, hv, run_tasks, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, memory_overcommit=0.5, cpu_overcommit=0.5)
    refused(post_create(vm_api, run_tasks, {**BASE, "memory": 8193}), "memory", "at most 8192 MB")
    refused(post_create(vm_api, run_tasks, {**BASE, "vcpus": 5}), "vcpus", "at most 4")
    nothing_created(hv)


def test_a_template_asking_more_than_the_host_is_refused_when_a_vm_is_made_from_it(vm_api, hv, run_tasks):
    assert vm_api.post(TEMPLATES, {"name": "huge", "memory": 1000000}, format="json").status_code == 201
    refused(post_create(vm_api, run_tasks, {"name": "from-huge", "template": "huge"}), "memory", "the host has 16384 MB")
    nothing_created(hv)


# --- how many: disks, disks per bus, NICs ----------------------------------------


def test_more_disks_than_the_limit_is_400_on_disks(vm_api, hv, run_tasks):
    # 300 disks once ended in "database is locked"; the limit stops them before anything is written.
    response = post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 1}] * 300})
    refused(response, "disks", "at most 64 disks", "VAPOR_MAX_DISKS", "300 given")
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 1}] * 65}), "disks", "at most 64 disks")
    nothing_created(hv)


def test_the_disk_count_follows_the_setting(vm_api, hv, run_tasks, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, max_disks=2)
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 1}] * 3}), "disks", "at most 2 disks")
    nothing_created(hv)
    assert post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 1}] * 2}).status_code == 202


def test_at_most_four_ide_disks(vm_api, hv, run_tasks):
    refused(post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 1, "bus": "ide"}] * 5}), "disks", "at most 4 IDE disks")
    nothing_created(hv)
    assert post_create(vm_api, run_tasks, {**BASE, "disks": [{"size": 1, "bus": "ide"}] * 4}).status_code == 202


def test_more_nics_than_the_limit_is_400_on_networks(vm_api, hv, run_tasks, settings):
    refused(post_create(vm_api, run_tasks, {**BASE, "networks": [{}] * 200}), "networks", "at most 16", "VAPOR_MAX_NICS")
    refused(post_create(vm_api, run_tasks, {**BASE, "networks": [{}] * 17}), "networks", "at most 16")
    nothing_created(hv)
    settings.VAPOR = dataclasses.replace(settings.VAPOR, max_nics=1)
    refused(post_create(vm_api, run_tasks, {**BASE, "networks": [{}] * 2}), "networks", "at most 1 network")
    nothing_created(hv)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"disks": [{"size": 1}] * 65}, "disks"),
        ({"disks": [{"size": 1, "bus": "ide"}] * 5}, "disks"),
        ({"networks": [{}] * 17}, "networks"),
    ],
)
def test_templates_have_the_same_counts(vm_api, hv, change, field):
    refused(vm_api.post(TEMPLATES, {"name": "t", **change}, format="json"), field)
    assert not VmTemplate.objects.exists()


# --- the request body -------------------------------------------------------------


def test_a_body_past_the_limit_is_413_and_creates_nothing(vm_api, hv, run_tasks, settings):
    body = json.dumps({**BASE, "os_variant": "a" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)})
    with run_tasks():
        response = vm_api.post("/api/v1/virtualmachines/create-enhanced", body, content_type="application/json")
    assert response.status_code == 413, response.content[:200]
    assert "VAPOR_MAX_BODY_BYTES" in response.json()["detail"] and response.json()["code"] == "body_too_large"
    nothing_created(hv)


@pytest.mark.parametrize("fmt", ["multipart", "json"])
def test_every_body_format_has_the_limit_and_the_error_shape(vm_api, hv, settings, fmt):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    response = vm_api.post("/api/v1/virtualmachines/create-enhanced", {**BASE, "os_variant": "a" * 5000}, format=fmt)
    assert response.status_code == 413, response.content[:200]
    assert response.json()["code"] == "body_too_large"
    nothing_created(hv)


def test_a_body_within_the_limit_is_read_whole(vm_api, hv, run_tasks, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    padded = {**BASE, "disks": [{"size": 1}] * 40}  # about 600 bytes of JSON
    assert post_create(vm_api, run_tasks, padded).status_code == 202
    refused_body = json.dumps({**BASE, "os_variant": "a" * 5000})
    response = vm_api.post("/api/v1/virtualmachines/create-enhanced", refused_body, content_type="application/json")
    assert response.status_code == 413
