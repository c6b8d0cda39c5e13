"""The rules that keep a request from touching data it must not, each cell on its own.

- Two VMs must never write one image (`validation._check_not_shared`): of the
  four pairings of an existing holder and a new attachment, only read-only +
  read-only is allowed.
- A volume name a new disk would take that is already in the pool belongs to
  someone else: the request is refused (409) and the file is left as it was,
  and a worker that finds the name taken after validation fails rather than
  clearing it away.
- `secondary_iso` may not be the file `iso_path` already attaches, whichever
  way (id, name, path, file name) each one names it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from isos.hashing import hash_file
from isos.models import IsoImage
from isos.services import IsoMetadata, iso_register_path
from tests.support.images import make_image
from tests.support.isos import make_iso
from vms.models import Disk, VirtualMachine

URL = "/api/v1/virtualmachines/create-enhanced"
pytestmark = pytest.mark.django_db


def payload(name: str, **extra) -> dict:
    return {"name": name, "memory": 512, "vcpus": 1, **extra}


def post(vm_api, run_tasks, payload: dict):
    with run_tasks():
        return vm_api.post(URL, payload, format="json")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- two VMs on one image ------------------------------------------------------------


@pytest.mark.parametrize(
    ("holder_readonly", "new_readonly", "allowed"),
    [
        (False, False, False),  # two writers
        (False, True, False),  # a reader would see a disk changing under it
        (True, False, False),  # a writer under a reader that trusts it not to change
        (True, True, True),  # two readers: the only sharing allowed
    ],
    ids=["rw-then-rw", "rw-then-ro", "ro-then-rw", "ro-then-ro"],
)
def test_an_image_is_shared_only_between_readers(vm_api, hv, run_tasks, disk_root, holder_readonly, new_readonly, allowed):
    shared = make_image(disk_root / "shared.qcow2")
    first = post(vm_api, run_tasks, payload("holder", disks=[{"path": str(shared), "readonly": holder_readonly}]))
    assert first.status_code == 202, first.json()
    assert VirtualMachine.objects.get(name="holder").status == "running"

    second = post(vm_api, run_tasks, payload("second", disks=[{"path": str(shared), "readonly": new_readonly}]))

    if allowed:
        assert second.status_code == 202, second.json()
        assert VirtualMachine.objects.get(name="second").status == "running"
        assert sorted(Disk.objects.filter(path=str(shared)).values_list("vm__name", "readonly")) == [("holder", True), ("second", True)]
    else:
        body = second.json()
        assert (second.status_code, body["code"], body["field"]) == (409, "disk_in_use", "disks.0.path"), body
        assert "already attached to holder" in body["detail"]  # the database says so, before the host
        assert not VirtualMachine.objects.filter(name="second").exists()
        assert "second" not in hv.domains
        assert Disk.objects.filter(path=str(shared)).count() == 1


@pytest.mark.parametrize("status", ["failed", "deleting"])
def test_a_failed_or_departing_vm_holds_its_image_until_it_is_deleted(vm_api, hv, run_tasks, disk_root, status):
    """Its domain may still be defined (a delete that failed half-way), and the
    database's one-writer constraint counts every stored row: the image is
    free once the VM is deleted, not before."""
    shared = make_image(disk_root / "shared.qcow2")
    assert post(vm_api, run_tasks, payload("old", disks=[{"path": str(shared)}])).status_code == 202
    VirtualMachine.objects.filter(name="old").update(status=status)
    response = post(vm_api, run_tasks, payload("new", disks=[{"path": str(shared)}]))
    body = response.json()
    assert (response.status_code, body["code"], body["field"]) == (409, "disk_in_use", "disks.0.path"), body
    assert f"old ({status}; delete it to free the disk)" in body["detail"]
    assert not VirtualMachine.objects.filter(name="new").exists()

    VirtualMachine.objects.filter(name="old").update(status="failed")
    assert vm_api.delete(f"/api/v1/virtualmachines/{VirtualMachine.objects.get(name='old').pk}").status_code == 204
    assert post(vm_api, run_tasks, payload("new", disks=[{"path": str(shared)}])).status_code == 202


# --- a volume Vapor never made -------------------------------------------------------


@pytest.mark.parametrize(
    ("disks", "taken", "field"),
    [
        ([{"size": 1}], "vx-disk0.qcow2", "disks.0"),
        ([{"size": 1, "format": "raw"}], "vx-disk0.img", "disks.0"),
        ([{"size": 1}, {"clone_from": "BASE"}], "vx-disk1.qcow2", "disks.1"),
    ],
    ids=["new", "new-raw", "clone"],
)
def test_a_foreign_volume_under_the_name_a_disk_would_take_is_409_and_left_alone(vm_api, hv, run_tasks, disk_root, disks, taken, field):
    base = make_image(disk_root / "base.qcow2")
    foreign = hv.pool_dir / taken
    foreign.write_bytes(b"someone's data, not Vapor's\n" * 1000)
    before = digest(foreign)
    disks = [{"clone_from": str(base)} if d.get("clone_from") else d for d in disks]

    response = post(vm_api, run_tasks, payload("vx", disks=disks))

    body = response.json()
    assert (response.status_code, body["code"], body["field"]) == (409, "volume_exists", field), body
    assert taken in body["detail"]
    assert digest(foreign) == before
    assert sorted(p.name for p in hv.pool_dir.iterdir()) == [taken]
    assert hv.calls["delete_volume"] == hv.calls["create_volume"] == hv.calls["clone_volume"] == 0
    assert not VirtualMachine.objects.exists() and hv.domains == {}


def test_a_volume_name_taken_after_validation_fails_the_vm_and_is_never_cleared_away(
    vm_api, hv, django_capture_on_commit_callbacks, disk_root
):
    """Between the request and the worker someone else makes the volume: the
    first delivery of the task cannot have left it, so it is not Vapor's."""
    with django_capture_on_commit_callbacks() as queued:
        response = vm_api.post(URL, payload("late", disks=[{"size": 1}, {"size": 1}]), format="json")
    assert response.status_code == 202, response.json()
    foreign = hv.pool_dir / "late-disk1.qcow2"
    foreign.write_bytes(b"made by hand after the request was accepted\n")
    before = digest(foreign)

    for callback in queued:
        callback()

    vm = VirtualMachine.objects.get(name="late")
    assert vm.status == "failed"
    assert vm.error == "create volume late-disk1.qcow2 failed: storage volume 'late-disk1.qcow2' exists already"
    assert [(e.step, e.status) for e in vm.events.exclude(step="accepted")] == [
        ("create volume late-disk0.qcow2", "done"),
        ("create volume late-disk1.qcow2", "failed"),
        ("create volume late-disk0.qcow2", "undone"),
    ]
    assert digest(foreign) == before
    assert sorted(p.name for p in hv.pool_dir.iterdir()) == ["late-disk1.qcow2"]
    assert hv.calls["delete_volume"] == 1  # disk0's undo, nothing else


# --- secondary_iso is not iso_path again ----------------------------------------------


@pytest.fixture
def installer(iso_dirs) -> IsoImage:
    path = make_iso(iso_dirs.search[0] / "debian-12.iso")
    (iso_dirs.extra_root / "debian-link.iso").symlink_to(path)
    return iso_register_path(path=str(path), meta=IsoMetadata(name="Debian 12"), digests=hash_file(path))


def forms(iso: IsoImage, iso_dirs) -> dict[str, str]:
    """Every way a request can name the one file."""
    return {
        "id": iso.pk,
        "name": iso.name,
        "loose name": "debian 12.ISO",  # case and a trailing .iso ignored
        "path": iso.path,
        "symlink": str(iso_dirs.extra_root / "debian-link.iso"),
        "file name": Path(iso.path).name,
    }


PAIRS = [
    ("id", "id"),
    ("name", "name"),
    ("path", "path"),
    ("file name", "file name"),
    ("id", "name"),
    ("name", "path"),
    ("path", "file name"),
    ("file name", "id"),
    ("loose name", "id"),
    ("symlink", "path"),
]


@pytest.mark.parametrize(("primary", "secondary"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_secondary_iso_naming_the_primary_file_again_is_refused(vm_api, hv, run_tasks, iso_dirs, installer, primary, secondary):
    named = forms(installer, iso_dirs)
    response = post(vm_api, run_tasks, payload("twice", iso_path=named[primary], secondary_iso=named[secondary]))
    body = response.json()
    assert (response.status_code, body["field"]) == (400, "secondary_iso"), body
    assert "same file" in body["detail"]
    assert not VirtualMachine.objects.exists() and hv.domains == {}
    assert IsoImage.objects.get().use_count == 0


def test_a_file_not_yet_in_the_library_named_twice_is_refused_as_the_same_file(vm_api, hv, run_tasks, iso_dirs):
    """The primary reference registers it, so the secondary finds it "hashing": still the same file (400), not "not ready"."""
    path = make_iso(iso_dirs.search[0] / "fresh.iso")
    response = post(vm_api, run_tasks, payload("twice", iso_path=str(path), secondary_iso="fresh.iso"))
    assert (response.status_code, response.json()["field"]) == (400, "secondary_iso"), response.json()
    dry = vm_api.post(URL + "?dry_run=true", payload("twice", iso_path=str(path), secondary_iso="fresh.iso"), format="json")
    assert (dry.status_code, dry.json()["field"]) == (400, "secondary_iso"), dry.json()
    assert not IsoImage.objects.exists()


def test_two_different_isos_are_accepted(vm_api, hv, run_tasks, iso_dirs, installer):
    drivers = make_iso(iso_dirs.search[1] / "drivers.iso")
    response = post(vm_api, run_tasks, payload("both", iso_path=installer.pk, secondary_iso=str(drivers)))
    assert response.status_code == 202, response.json()
    assert [c["slot"] for c in response.json()["cdroms"]] == ["primary", "secondary"]
