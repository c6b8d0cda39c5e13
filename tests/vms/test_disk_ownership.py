"""A file others only read may not be attached writable (`validation._check_not_owned`).

Three owners, each refused with 409 `disk_owned` on `disks.N.path`, the owner
named, nothing created; attaching the same file read-only stays allowed:

- an ISO of the library, whatever its status;
- the base image (`clone_from`) of a template;
- the backing file of a linked clone of a VM that is not failed or departing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from isos.choices import IsoStatus
from isos.models import IsoImage
from tests.support.images import make_image
from tests.support.isos import make_iso, register_ready
from vms.models import Disk, TemplateDisk, VirtualMachine, VmTemplate

URL = "/api/v1/virtualmachines/create-enhanced"
pytestmark = pytest.mark.django_db


def post(vm_api, run_tasks, name: str, disk: dict):
    with run_tasks():
        return vm_api.post(URL, {"name": name, "memory": 512, "vcpus": 1, "disks": [disk]}, format="json")


def assert_refused(response, hv, name: str, *owner: str) -> None:
    body = response.json()
    assert (response.status_code, body["code"], body["field"]) == (409, "disk_owned", "disks.0.path"), body
    for word in owner:
        assert word in body["detail"], body
    assert not VirtualMachine.objects.filter(name=name).exists()
    assert name not in hv.domains
    assert hv.calls["create_volume"] == hv.calls["clone_volume"] == 0
    assert not any(p.name.startswith(name) for p in hv.pool_dir.iterdir())


@pytest.fixture
def library_iso(disk_root: Path, settings) -> IsoImage:
    """A library ISO whose directory is also a disk root, so the path guard lets it through."""
    settings.VAPOR = dataclasses.replace(settings.VAPOR, iso_roots=(*django_settings.VAPOR.iso_roots, disk_root))
    return register_ready(make_iso(disk_root / "installer.iso"), name="Installer")


@pytest.mark.parametrize("status", IsoStatus.values)
def test_a_library_iso_is_not_a_writable_disk(vm_api, hv, run_tasks, library_iso, status):
    IsoImage.objects.filter(pk=library_iso.pk).update(status=status)
    response = post(vm_api, run_tasks, "vw", {"path": library_iso.path, "format": "raw"})
    assert_refused(response, hv, "vw", "Installer", f"id {library_iso.pk}")


def test_a_library_iso_may_be_attached_read_only(vm_api, hv, run_tasks, library_iso):
    response = post(vm_api, run_tasks, "vr", {"path": library_iso.path, "format": "raw", "readonly": True})
    assert response.status_code == 202, response.json()
    assert VirtualMachine.objects.get(name="vr").status == "running"


@pytest.fixture
def template_base(base_image: Path) -> Path:
    template = VmTemplate.objects.create(name="ubuntu-tpl")
    TemplateDisk.objects.create(template=template, clone_from=str(base_image), source_format="qcow2")
    return base_image


def test_a_template_base_is_not_a_writable_disk(vm_api, hv, run_tasks, template_base):
    response = post(vm_api, run_tasks, "vw", {"path": str(template_base)})
    assert_refused(response, hv, "vw", "ubuntu-tpl")


def test_a_template_base_named_through_a_symlink_is_still_its_base(vm_api, hv, run_tasks, base_image, disk_root):
    link = disk_root / "current.qcow2"
    link.symlink_to(base_image)
    template = VmTemplate.objects.create(name="via-link")
    TemplateDisk.objects.create(template=template, clone_from=str(link), source_format="qcow2")
    assert_refused(post(vm_api, run_tasks, "vw", {"path": str(base_image)}), hv, "vw", "via-link")


def test_a_template_base_may_be_attached_read_only(vm_api, hv, run_tasks, template_base):
    response = post(vm_api, run_tasks, "vr", {"path": str(template_base), "readonly": True})
    assert response.status_code == 202, response.json()
    assert VirtualMachine.objects.get(name="vr").status == "running"


@pytest.fixture
def clone_base(vm_api, hv, run_tasks, disk_root: Path) -> Path:
    base = make_image(disk_root / "gold.qcow2")
    response = post(vm_api, run_tasks, "clone", {"clone_from": str(base), "linked": True})
    assert response.status_code == 202, response.json()
    assert Disk.objects.get(vm__name="clone").source_path == str(base)
    hv.calls.clear()
    return base


def test_the_backing_file_of_a_linked_clone_is_not_a_writable_disk(vm_api, hv, run_tasks, clone_base):
    response = post(vm_api, run_tasks, "vw", {"path": str(clone_base)})
    assert_refused(response, hv, "vw", "clone")


def test_the_database_knows_a_clones_base_when_the_host_does_not_say(vm_api, hv, run_tasks, clone_base, monkeypatch):
    """The rows hold the rule on their own: a host read that shows no domain (the clone's stopped on another
    connection, or the read is wrong) does not free the base."""
    monkeypatch.setattr(hv, "disk_uses", lambda: [])
    response = post(vm_api, run_tasks, "vw", {"path": str(clone_base)})
    assert response.status_code == 409 and "clone" in response.json()["detail"], response.json()
    assert not VirtualMachine.objects.filter(name="vw").exists()


def test_the_backing_file_of_a_linked_clone_may_be_attached_read_only(vm_api, hv, run_tasks, clone_base):
    response = post(vm_api, run_tasks, "vr", {"path": str(clone_base), "readonly": True})
    assert response.status_code == 202, response.json()
    assert VirtualMachine.objects.get(name="vr").status == "running"


@pytest.mark.parametrize("status", ["failed", "deleting"])
def test_a_failed_or_departing_clone_does_not_own_its_base(vm_api, hv, run_tasks, clone_base, status):
    """Its row no longer holds the base; its domain does while it is on the host (the host's owners are read too)."""
    VirtualMachine.objects.filter(name="clone").update(status=status)
    held = post(vm_api, run_tasks, "vw", {"path": str(clone_base)})
    assert held.status_code == 409 and "domain clone" in held.json()["detail"], held.json()
    hv.undefine_domain("clone")
    response = post(vm_api, run_tasks, "vw", {"path": str(clone_base)})
    assert response.status_code == 202, response.json()


def test_a_full_copy_does_not_own_its_source(vm_api, hv, run_tasks, disk_root):
    base = make_image(disk_root / "copied.qcow2")
    assert post(vm_api, run_tasks, "copy", {"clone_from": str(base)}).status_code == 202
    assert post(vm_api, run_tasks, "vw", {"path": str(base)}).status_code == 202
