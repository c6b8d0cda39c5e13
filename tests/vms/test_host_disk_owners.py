"""Files that domains on the host use, and one writer per file in the database (issue 11, point 1).

- A domain on the host, Vapor's or not (one defined with virsh), owns the
  files its definition names: a writable attachment of its disk, CD-ROM or
  a backing file of its disks is 409 naming the domain; a read-only
  attachment is 409 only when the domain writes the file (two readers may
  share). Read through the adapter (`Hypervisor.disk_uses`), once per request
  and only when an existing disk asks.
- Writable attachment of one path is exclusive in the database
  (`disk_writable_path_unique`): a request that passed validation while
  another attached the file meanwhile gets the same 409 from the constraint.
- ISO directories are never a writable disk's location: an existing disk
  there is 400 unless read-only, and a pool in one takes no new volume.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import IntegrityError, transaction

from tests.fakes import FakeDomain, FakeHypervisor
from tests.support.images import make_image
from vms.hypervisor.documents.domain import parse_disk_files
from vms.hypervisor.specs import DiskFile
from vms.models import Disk, VirtualMachine

URL = "/api/v1/virtualmachines/create-enhanced"
pytestmark = pytest.mark.django_db


def post(vm_api, run_tasks, name: str, *disks: dict, **extra):
    with run_tasks():
        return vm_api.post(URL, {"name": name, "memory": 512, "vcpus": 1, "disks": list(disks), **extra}, format="json")


def foreign_xml(name: str, disks: str) -> str:
    return f"<domain type='kvm'><name>{name}</name><uuid>{uuid.uuid4()}</uuid><devices>{disks}</devices></domain>"


def file_disk(path: Path | str, dev: str, *, readonly: bool = False, device: str = "disk", backing: str = "") -> str:
    chain = f"<backingStore type='file'><format type='qcow2'/><source file='{backing}'/><backingStore/></backingStore>" if backing else ""
    return (
        f"<disk type='file' device='{device}'><driver name='qemu' type='qcow2'/><source file='{path}'/>{chain}"
        f"<target dev='{dev}' bus='virtio'/>{'<readonly/>' if readonly else ''}</disk>"
    )


def define_foreign(hv: FakeHypervisor, name: str, *disks: str) -> None:
    """A domain Vapor has no row for, as `virsh define` would leave it."""
    hv.domains[name] = FakeDomain(foreign_xml(name, "".join(disks)))


def assert_refused(response, code: str, *words: str, field: str = "disks.0.path", status: int = 409) -> None:
    body = response.json()
    assert (response.status_code, body["code"], body["field"]) == (status, code, field), body
    for word in words:
        assert word in body["detail"], body
    assert not VirtualMachine.objects.exists() or not VirtualMachine.objects.filter(name="vapor").exists()


# --- reading a definition ---------------------------------------------------------------


def test_every_file_a_definition_names_is_read_with_who_writes_it():
    xml = foreign_xml(
        "other",
        file_disk("/d/root.qcow2", "vda", backing="/d/base.qcow2")
        + file_disk("/d/data.qcow2", "vdb", readonly=True)
        + "<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/></disk>"
        + "<disk type='file' device='cdrom'><target dev='sdb' bus='sata'/></disk>"  # an empty drive
        + "<disk type='block' device='disk'><source dev='/dev/vg/lv'/><target dev='vdc' bus='virtio'/></disk>"
        + "<disk type='volume' device='disk'><source pool='p' volume='v.qcow2'/><target dev='vdd' bus='virtio'/></disk>"
        + "<disk type='network' device='disk'><source protocol='nbd' name='x'/><target dev='vde' bus='virtio'/></disk>",
    )
    assert parse_disk_files(xml) == (
        DiskFile("/d/root.qcow2", "", "", readonly=False, backing=False),
        DiskFile("/d/base.qcow2", "", "", readonly=True, backing=True),
        DiskFile("/d/data.qcow2", "", "", readonly=True, backing=False),
        DiskFile("/iso/x.iso", "", "", readonly=True, backing=False),
        DiskFile("/dev/vg/lv", "", "", readonly=False, backing=False),
        DiskFile("", "p", "v.qcow2", readonly=False, backing=False),
    )


def test_the_fake_names_volume_sources_by_their_path(hv):
    define_foreign(hv, "other", "<disk type='volume' device='disk'><source pool='default' volume='v.qcow2'/><target dev='vda'/></disk>")
    [use] = hv.disk_uses()
    assert (use.domain, use.path, use.readonly, use.backing) == ("other", str(hv.pool_dir / "v.qcow2"), False, False)


# --- a domain on the host ----------------------------------------------------------------


@pytest.fixture
def image(disk_root: Path) -> Path:
    return make_image(disk_root / "theirs.qcow2")


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "read-only"])
def test_a_disk_a_foreign_domain_writes_is_409_naming_it(vm_api, hv, run_tasks, image, readonly):
    define_foreign(hv, "legacy-db", file_disk(image, "vda"))
    response = post(vm_api, run_tasks, "vapor", {"path": str(image), "readonly": readonly})
    assert_refused(response, "disk_in_use", "legacy-db", "on the host")
    assert (hv.calls["disk_uses"], hv.calls["define_domain"]) == (1, 0)  # one read of the host, nothing defined


def test_a_read_only_disk_of_a_foreign_domain_is_shared_only_read_only(vm_api, hv, run_tasks, image):
    define_foreign(hv, "legacy-db", file_disk(image, "vdb", readonly=True))
    assert_refused(post(vm_api, run_tasks, "vapor", {"path": str(image)}), "disk_in_use", "legacy-db", "attach it read-only")
    response = post(vm_api, run_tasks, "vapor", {"path": str(image), "readonly": True})
    assert response.status_code == 202, response.json()
    assert VirtualMachine.objects.get(name="vapor").status == "running"


def test_a_backing_file_of_a_foreign_domains_disk_is_shared_only_read_only(vm_api, hv, run_tasks, disk_root):
    base = make_image(disk_root / "base.qcow2")
    define_foreign(hv, "legacy-web", file_disk(disk_root / "overlay.qcow2", "vda", backing=str(base)))
    assert_refused(post(vm_api, run_tasks, "vapor", {"path": str(base)}), "disk_owned", "backing file", "legacy-web")
    assert post(vm_api, run_tasks, "vapor", {"path": str(base), "readonly": True}).status_code == 202


def test_a_foreign_cdrom_file_is_not_a_writable_disk(vm_api, hv, run_tasks, image):
    define_foreign(hv, "installer", file_disk(image, "sda", device="cdrom"))
    assert_refused(post(vm_api, run_tasks, "vapor", {"path": str(image)}), "disk_in_use", "installer")


def test_a_foreign_pool_volume_is_matched_by_its_path(vm_api, hv, run_tasks, disk_root, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, disk_roots=(disk_root, hv.pool_dir))
    make_image(hv.pool_dir / "vol.qcow2")
    define_foreign(hv, "pooled", "<disk type='volume' device='disk'><source pool='default' volume='vol.qcow2'/><target dev='vda'/></disk>")
    assert_refused(post(vm_api, run_tasks, "vapor", {"path": str(hv.pool_dir / "vol.qcow2")}), "disk_in_use", "pooled")


def test_paths_are_compared_resolved_on_both_sides(vm_api, hv, run_tasks, image, disk_root):
    (disk_root / "alias.qcow2").symlink_to(image)
    define_foreign(hv, "legacy-db", file_disk(disk_root / "alias.qcow2", "vda"))
    assert_refused(post(vm_api, run_tasks, "vapor", {"path": str(image)}), "disk_in_use", "legacy-db")
    (disk_root / "other.qcow2").symlink_to(image)
    assert_refused(post(vm_api, run_tasks, "vapor", {"path": str(disk_root / "other.qcow2")}), "disk_in_use", "legacy-db")


def test_a_vapor_domain_whose_row_is_gone_still_owns_its_disk(vm_api, hv, run_tasks, image):
    assert post(vm_api, run_tasks, "first", {"path": str(image)}).status_code == 202
    VirtualMachine.objects.filter(name="first").delete()  # the row is gone, the domain is not
    assert_refused(post(vm_api, run_tasks, "vapor", {"path": str(image)}), "disk_in_use", "domain first")


def test_the_host_is_asked_only_when_an_existing_disk_is(vm_api, hv, run_tasks, base_image):
    assert post(vm_api, run_tasks, "vapor", {"size": 1}, {"clone_from": str(base_image)}).status_code == 202
    assert hv.calls["disk_uses"] == 0


def test_an_unrelated_foreign_domain_changes_nothing(vm_api, hv, run_tasks, image, disk_root):
    define_foreign(hv, "legacy-db", file_disk(disk_root / "elsewhere.qcow2", "vda"))
    assert post(vm_api, run_tasks, "vapor", {"path": str(image)}).status_code == 202


# --- one writer per file in the database -------------------------------------------------


def _vm(name: str) -> VirtualMachine:
    return VirtualMachine.objects.create(name=name, memory_mb=256, vcpus=1)


def _disk(vm: VirtualMachine, path: str, *, readonly: bool = False) -> Disk:
    return Disk.objects.create(vm=vm, order=0, source="existing", path=path, readonly=readonly, target_dev="vda")


def test_the_database_holds_one_writer_per_path():
    _disk(_vm("a"), "/d/x.qcow2")
    with pytest.raises(IntegrityError), transaction.atomic():
        _disk(_vm("b"), "/d/x.qcow2")
    with pytest.raises(IntegrityError), transaction.atomic():
        _disk(_vm("b"), "/d/x.qcow2", readonly=False)
    # Readers, and rows with no file yet, are not counted.
    _disk(_vm("c"), "/d/x.qcow2", readonly=True)
    _disk(_vm("d"), "/d/y.qcow2", readonly=True)
    _disk(_vm("e"), "/d/y.qcow2", readonly=True)
    _disk(_vm("f"), "")
    _disk(_vm("g"), "")


def test_a_writer_stored_after_validation_is_the_same_409_from_the_constraint(vm_api, hv, run_tasks, image, monkeypatch):
    """What a request racing another one sees: both validated before either stored its rows."""
    assert post(vm_api, run_tasks, "first", {"path": str(image)}).status_code == 202
    monkeypatch.setattr("vms.services.validation._check_not_shared", lambda *args: None)
    monkeypatch.setattr("vms.services.validation._check_not_used_on_host", lambda *args: None)
    response = post(vm_api, run_tasks, "second", {"size": 1}, {"path": str(image)})
    body = response.json()
    assert (response.status_code, body["code"], body["field"]) == (409, "disk_in_use", "disks.1.path"), body
    assert "already attached to first" in body["detail"]
    assert not VirtualMachine.objects.filter(name="second").exists()
    assert sorted(hv.domains) == ["first"] and not (hv.pool_dir / "second-disk0.qcow2").exists()


def test_adopting_a_domain_that_writes_a_vapor_vms_disk_is_refused_with_the_reason(hv, image, vm_api, run_tasks):
    from vms.services.adoption import vm_sync

    assert post(vm_api, run_tasks, "first", {"path": str(image)}).status_code == 202
    define_foreign(hv, "legacy-db", file_disk(image, "vda"))
    report = vm_sync(hv=hv, adopt=True)
    assert report.adopted == []
    assert "is a writable disk of VM 'first' too" in report.not_adopted["legacy-db"]
    assert not VirtualMachine.objects.filter(name="legacy-db").exists()


# --- ISO directories are never writable disk locations -----------------------------------


@pytest.fixture
def iso_dir_in_disk_root(disk_root: Path, settings) -> Path:
    """An ISO search directory that lies inside a disk root (as /var/lib/libvirt/images/iso does in the default pool)."""
    iso_dir = disk_root / "iso"
    iso_dir.mkdir()
    settings.VAPOR = dataclasses.replace(settings.VAPOR, iso_dirs=(*django_settings.VAPOR.iso_dirs, iso_dir))
    return iso_dir


def test_a_file_in_an_iso_directory_is_never_a_writable_disk(vm_api, hv, run_tasks, iso_dir_in_disk_root):
    stray = make_image(iso_dir_in_disk_root / "not-in-the-library.qcow2")
    response = post(vm_api, run_tasks, "vapor", {"path": str(stray)})
    assert_refused(response, "path_in_iso_dir", str(iso_dir_in_disk_root), "read-only", status=400)
    assert hv.domains == {}
    assert post(vm_api, run_tasks, "vapor", {"path": str(stray), "readonly": True}).status_code == 202


def test_a_pool_in_an_iso_directory_takes_no_new_volume(vm_api, hv, run_tasks, iso_dir_in_disk_root, base_image):
    hv.pools["isos"] = iso_dir_in_disk_root
    for disk in ({"size": 1}, {"clone_from": str(base_image)}):
        response = post(vm_api, run_tasks, "vapor", disk, storage_pool="isos")
        assert_refused(response, "path_in_iso_dir", "pool isos", field="storage_pool", status=400)
    assert [p.name for p in iso_dir_in_disk_root.iterdir()] == []
    assert hv.calls["create_volume"] == hv.calls["clone_volume"] == 0
