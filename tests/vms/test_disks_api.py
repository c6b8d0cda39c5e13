"""Disks and CD-ROM drives of an existing VM through the API, against the in-memory hypervisor."""

from __future__ import annotations

import dataclasses

import pytest

from isos.models import IsoImage
from isos.services import IsoMetadata, iso_register_path
from projects.models import AuditEntry
from tests.fakes import FakeHypervisor
from tests.support.images import make_image
from tests.support.isos import make_iso
from vms.models import Disk, VirtualMachine, VmEvent

GIB = 1024**3
BASE = "/api/v1/virtualmachines"


@pytest.fixture
def web(vm_api, hv: FakeHypervisor, run_tasks) -> VirtualMachine:
    with run_tasks():
        response = vm_api.post(f"{BASE}/create-enhanced", {"name": "web", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]}, format="json")
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="web")
    assert hv.domains["web"].state == "running"
    return vm


def stop(hv: FakeHypervisor, name: str = "web") -> None:
    hv.domains[name].state = "shutoff"


def volumes(hv: FakeHypervisor) -> list[str]:
    return sorted(p.name for p in hv.pool_dir.iterdir())


def test_list_and_get_show_the_vms_disks(vm_api, web):
    body = vm_api.get(f"{BASE}/{web.pk}/disks").json()
    assert [(d["target_dev"], d["bus"], d["size_gb"], d["created_by_vapor"]) for d in body] == [("vda", "virtio", 1, True)]
    assert vm_api.get(f"{BASE}/{web.pk}/disks/vda").json()["volume_name"] == "web-disk0.qcow2"
    missing = vm_api.get(f"{BASE}/{web.pk}/disks/vdz")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


def test_attach_a_new_disk_to_a_running_vm_is_live_and_persistent(vm_api, hv, web):
    response = vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 10}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["target_dev"], body["size_gb"], body["source"]) == ("vdb", 10, "new")
    assert response["Location"].endswith(f"/{web.pk}/disks/vdb")
    assert hv.device_changes == [("attach", "web", "vdb", True)]
    assert 'dev="vdb"' in hv.domains["web"].xml and "web-disk1.qcow2" in hv.domains["web"].xml
    assert volumes(hv) == ["web-disk0.qcow2", "web-disk1.qcow2"]
    web.refresh_from_db()
    assert web.disk_gb == 11
    assert VmEvent.objects.filter(vm=web, step="attach disk vdb", status="done").exists()
    assert AuditEntry.objects.filter(action="vm.disk_attach", vm_id=web.pk).count() == 1


def test_attach_to_a_stopped_vm_changes_the_definition_only(vm_api, hv, web):
    stop(hv)
    response = vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 2, "bus": "sata"}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["target_dev"] == "sda"
    assert hv.device_changes == [("attach", "web", "sda", False)]


def test_a_scsi_disk_gets_a_virtio_scsi_controller_first(vm_api, hv, web):
    response = vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 2, "bus": "scsi"}, format="json")
    assert response.status_code == 201, response.json()
    assert '<controller type="scsi" index="0" model="virtio-scsi"/>' in hv.domains["web"].xml


@pytest.mark.parametrize(
    ("body", "status", "field", "code"),
    [
        ({"size": 2, "bus": "sata"}, 409, "bus", "not_hotpluggable"),
        ({"size": 2, "bus": "ide"}, 400, "bus", "invalid"),
        ({"size": 0}, 400, "size", "invalid"),
        ({"size": 100000}, 400, "size", "invalid"),
        ({}, 400, None, "invalid"),
        ({"size": 2, "readonly": True}, 400, "readonly", "invalid"),
        ({"size": 2, "boot_order": 1}, 400, "boot_order", "invalid"),
        ({"path": "relative/disk.img"}, 400, "path", "invalid"),
    ],
)
def test_refused_attaches_leave_nothing_behind(vm_api, hv, web, body, status, field, code):
    before = hv.domains["web"].xml
    response = vm_api.post(f"{BASE}/{web.pk}/disks", body, format="json")
    assert response.status_code == status, response.json()
    assert (response.json().get("field"), response.json()["code"]) == (field, code)
    assert hv.domains["web"].xml == before
    assert volumes(hv) == ["web-disk0.qcow2"]
    assert list(web.disks.values_list("target_dev", flat=True)) == ["vda"]


def test_an_existing_disk_is_attached_once_writable(vm_api, hv, web, run_tasks, disk_root):
    shared = make_image(disk_root / "data.qcow2", "1G")
    with run_tasks():
        vm_api.post(f"{BASE}/create-enhanced", {"name": "db", "memory": 512, "vcpus": 1, "disks": [{"size": 1}]}, format="json")
    db = VirtualMachine.objects.get(name="db")
    attached = vm_api.post(f"{BASE}/{db.pk}/disks", {"path": str(shared)}, format="json")
    assert attached.status_code == 201, attached.json()
    assert (attached.json()["source"], attached.json()["created_by_vapor"]) == ("existing", False)
    before = hv.domains["web"].xml
    response = vm_api.post(f"{BASE}/{web.pk}/disks", {"path": str(shared)}, format="json")
    assert (response.status_code, response.json()["code"], response.json()["field"]) == (409, "disk_in_use", "path")
    assert hv.domains["web"].xml == before
    assert vm_api.delete(f"{BASE}/{db.pk}/disks/vdb?delete_volume=true").status_code == 204
    assert shared.exists()  # not Vapor's volume: kept whatever delete_volume says


def test_attach_outside_the_disk_roots_is_refused(vm_api, hv, web, tmp_path):
    outside = make_image(tmp_path / "elsewhere.qcow2", "1G")
    response = vm_api.post(f"{BASE}/{web.pk}/disks", {"path": str(outside)}, format="json")
    assert (response.status_code, response.json()["field"]) == (400, "path")


def test_attach_beyond_the_pools_room_is_refused(vm_api, hv, web, settings):
    settings.VAPOR = dataclasses.replace(settings.VAPOR, pool_overcommit=1.0)
    hv.pool_available = 5 * GIB
    hv.pool_capacity = 10 * GIB
    response = vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 20}, format="json")
    body = response.json()
    assert (response.status_code, body.get("code"), body.get("field")) == (400, "pool_too_small", "size"), body


def test_a_failed_attach_removes_the_volume_it_created(vm_api, hv, web):
    from vaporsite.errors import HypervisorError

    hv.fail["attach_device"] = HypervisorError("No more available PCI slots")
    before = hv.domains["web"].xml
    response = vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 3}, format="json")
    assert response.status_code == 500
    assert volumes(hv) == ["web-disk0.qcow2"]
    assert hv.domains["web"].xml == before
    assert list(Disk.objects.filter(vm=web).values_list("target_dev", flat=True)) == ["vda"]
    web.refresh_from_db()
    assert web.disk_gb == 1
    assert VmEvent.objects.filter(vm=web, step="attach disk vdb", status="failed").exists()


def test_grow_running_uses_block_resize_and_stopped_resizes_the_volume(vm_api, hv, web):
    response = vm_api.patch(f"{BASE}/{web.pk}/disks/vda", {"size_gb": 4}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["size_gb"] == 4
    assert hv.resized == {"vda": 4 * GIB}
    stop(hv)
    assert vm_api.patch(f"{BASE}/{web.pk}/disks/vda", {"size_gb": 6}, format="json").status_code == 200
    assert hv.resized[str(hv.pool_dir / "web-disk0.qcow2")] == 6 * GIB
    web.refresh_from_db()
    assert web.disk_gb == 6


def test_shrinking_is_a_400_on_size_gb(vm_api, hv, web):
    vm_api.patch(f"{BASE}/{web.pk}/disks/vda", {"size_gb": 4}, format="json")
    response = vm_api.patch(f"{BASE}/{web.pk}/disks/vda", {"size_gb": 3}, format="json")
    assert (response.status_code, response.json()["field"]) == (400, "size_gb")
    assert hv.resized == {"vda": 4 * GIB}
    assert Disk.objects.get(vm=web).size_gb == 4


def test_detach_keeps_or_deletes_the_volume(vm_api, hv, web):
    vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 2}, format="json")
    vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 2}, format="json")
    assert vm_api.delete(f"{BASE}/{web.pk}/disks/vdb").status_code == 204
    assert "web-disk1.qcow2" in volumes(hv)
    assert vm_api.delete(f"{BASE}/{web.pk}/disks/vdc?delete_volume=true").status_code == 204
    assert "web-disk2.qcow2" not in volumes(hv)
    assert 'dev="vdb"' not in hv.domains["web"].xml and 'dev="vdc"' not in hv.domains["web"].xml
    assert hv.device_changes[-1] == ("detach", "web", "vdc", True)
    assert list(web.disks.values_list("target_dev", flat=True)) == ["vda"]


def test_detach_with_snapshots_is_a_409_and_changes_nothing(vm_api, hv, web):
    hv.snapshots["web"] = ["before-upgrade"]
    before = hv.domains["web"].xml
    response = vm_api.delete(f"{BASE}/{web.pk}/disks/vda?delete_volume=true")
    assert (response.status_code, response.json()["code"]) == (409, "has_snapshots")
    assert hv.domains["web"].xml == before
    assert volumes(hv) == ["web-disk0.qcow2"]


def test_detach_a_sata_disk_of_a_running_vm_is_not_hotpluggable(vm_api, hv, web):
    stop(hv)
    vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 2, "bus": "sata"}, format="json")
    hv.domains["web"].state = "running"
    before = hv.domains["web"].xml
    response = vm_api.delete(f"{BASE}/{web.pk}/disks/sda")
    assert (response.status_code, response.json()["code"]) == (409, "not_hotpluggable")
    assert hv.domains["web"].xml == before


# --- CD-ROMs ------------------------------------------------------------------------------------


@pytest.fixture
def isos(iso_dirs) -> tuple[IsoImage, IsoImage]:
    made = []
    for name in ("install.iso", "drivers.iso"):
        iso = iso_register_path(path=str(make_iso(iso_dirs.search[0] / name, label=name[:7].upper())), meta=IsoMetadata(), digests=None)
        IsoImage.objects.filter(pk=iso.pk).update(status="ready")
        made.append(IsoImage.objects.get(pk=iso.pk))
    return made[0], made[1]


@pytest.fixture
def box(vm_api, hv, run_tasks, isos) -> VirtualMachine:
    install, _ = isos
    with run_tasks():
        response = vm_api.post(
            f"{BASE}/create-enhanced",
            {"name": "box", "memory": 512, "vcpus": 1, "disks": [{"size": 1}], "iso_path": install.pk},
            format="json",
        )
    assert response.status_code == 202, response.json()
    return VirtualMachine.objects.get(name="box")


def test_cdroms_list_the_drives_with_their_iso(vm_api, box, isos):
    body = vm_api.get(f"{BASE}/{box.pk}/cdroms").json()
    assert [(d["target_dev"], d["iso"]["id"], d["slot"], d["empty"]) for d in body] == [("sda", isos[0].pk, "primary", False)]


def test_eject_and_insert_live_record_the_use(vm_api, hv, box, isos):
    _, drivers = isos
    uses = IsoImage.objects.get(pk=drivers.pk).use_count
    ejected = vm_api.put(f"{BASE}/{box.pk}/cdroms/sda", {"iso": None}, format="json")
    assert ejected.status_code == 200, ejected.json()
    assert (ejected.json()["empty"], ejected.json()["iso"]) == (True, None)
    assert isos[0].path not in hv.domains["box"].xml
    assert not box.cdroms.exists()
    inserted = vm_api.put(f"{BASE}/{box.pk}/cdroms/sda", {"iso": "drivers.iso"}, format="json")
    assert inserted.status_code == 200, inserted.json()
    assert inserted.json()["iso"]["id"] == drivers.pk
    assert drivers.path in hv.domains["box"].xml
    assert hv.device_changes == [("update", "box", "sda", True), ("update", "box", "sda", True)]
    assert IsoImage.objects.get(pk=drivers.pk).use_count == uses + 1
    assert box.cdroms.get().iso_id == drivers.pk


def test_insert_refusals_leave_the_domain_alone(vm_api, hv, box, isos):
    IsoImage.objects.filter(pk=isos[1].pk).update(status="hashing")
    before = hv.domains["box"].xml
    for body, status, code in [({"iso": isos[1].pk}, 409, "iso_not_ready"), ({"iso": "nothere.iso"}, 404, None), ({}, 400, None)]:
        response = vm_api.put(f"{BASE}/{box.pk}/cdroms/sda", body, format="json")
        assert response.status_code == status, response.json()
        if code:
            assert response.json()["code"] == code
    assert hv.domains["box"].xml == before
    assert box.cdroms.get().iso_id == isos[0].pk
    assert vm_api.put(f"{BASE}/{box.pk}/cdroms/sdq", {"iso": None}, format="json").status_code == 404


def test_drives_are_added_and_removed_only_while_stopped(vm_api, hv, box, isos):
    before = hv.domains["box"].xml
    refused = vm_api.post(f"{BASE}/{box.pk}/cdroms", {"iso": None}, format="json")
    assert (refused.status_code, refused.json()["code"]) == (409, "not_hotpluggable")
    assert vm_api.delete(f"{BASE}/{box.pk}/cdroms/sda").json()["code"] == "not_hotpluggable"
    assert hv.domains["box"].xml == before
    stop(hv, "box")
    added = vm_api.post(f"{BASE}/{box.pk}/cdroms", {"iso": isos[1].name}, format="json")
    assert added.status_code == 201, added.json()
    assert (added.json()["target_dev"], added.json()["slot"]) == ("sdb", "secondary")
    assert vm_api.delete(f"{BASE}/{box.pk}/cdroms/sda").status_code == 204
    assert [d["target_dev"] for d in vm_api.get(f"{BASE}/{box.pk}/cdroms").json()] == ["sdb"]
    assert IsoImage.objects.filter(pk=isos[0].pk).exists()


def test_a_busy_vm_refuses_changes(vm_api, hv, web):
    VirtualMachine.objects.filter(pk=web.pk).update(status="provisioning")
    response = vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 1}, format="json")
    assert (response.status_code, response.json()["code"]) == (409, "vm_busy")


def test_attach_and_grow_count_against_the_disk_quota(vm_api, hv, web):
    from projects.models import Project

    Project.objects.filter(pk=web.project_id).update(max_disk_gb=4)
    before = hv.domains["web"].xml
    response = vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 4}, format="json")
    assert (response.status_code, response.json()["code"]) == (409, "quota_exceeded")
    assert vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 3}, format="json").status_code == 201
    grow = vm_api.patch(f"{BASE}/{web.pk}/disks/vdb", {"size_gb": 4}, format="json")
    assert (grow.status_code, grow.json()["code"]) == (409, "quota_exceeded")
    assert volumes(hv) == ["web-disk0.qcow2", "web-disk1.qcow2"]
    assert hv.resized == {}
    assert 'dev="vdb"' in hv.domains["web"].xml and before != hv.domains["web"].xml


def test_attach_a_clone_of_a_base_image(vm_api, hv, web, base_image):
    response = vm_api.post(f"{BASE}/{web.pk}/disks", {"clone_from": str(base_image), "bus": "scsi"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["source"], body["target_dev"], body["source_path"]) == ("clone", "sda", str(base_image))
    assert "web-disk1.qcow2" in volumes(hv)
    web.refresh_from_db()
    assert web.disk_gb == 1 + 8  # the clone counts at the base's virtual size


def test_detach_checks_the_snapshots_that_hold_that_disk(vm_api, hv, web):
    """Vapor's own snapshots know their disks: one holding vda refuses vda's detach; one holding only
    vdb (taken after vdb was attached) refuses vdb's, not a disk it does not hold."""
    from vms.models import VmSnapshot

    vm_api.post(f"{BASE}/{web.pk}/disks", {"size": 2}, format="json")
    hv.snapshots["web"] = {"s1": None}  # libvirt lists it; Vapor's row says what it holds
    VmSnapshot.objects.create(vm=web, name="s1", vm_state="running", disks=["vdb"])
    before = hv.domains["web"].xml
    response = vm_api.delete(f"{BASE}/{web.pk}/disks/vdb")
    assert (response.status_code, response.json()["code"]) == (409, "has_snapshots")
    assert "s1" in response.json()["detail"] and hv.domains["web"].xml == before
    VmSnapshot.objects.filter(name="s1").update(disks=["vda"])
    assert vm_api.delete(f"{BASE}/{web.pk}/disks/vdb").status_code == 204


def test_shrinking_a_disk_its_snapshots_hold_is_a_409(vm_api, hv, web):
    """Shrinking is a 400 (disks only grow); under a snapshot that holds the disk it is a 409 has_snapshots."""
    from vms.models import VmSnapshot

    assert vm_api.patch(f"{BASE}/{web.pk}/disks/vda", {"size_gb": 3}, format="json").status_code == 200
    before = hv.domains["web"].xml
    assert vm_api.patch(f"{BASE}/{web.pk}/disks/vda", {"size_gb": 2}, format="json").json()["code"] == "shrink_refused"
    hv.snapshots["web"] = {"s1": None}
    VmSnapshot.objects.create(vm=web, name="s1", vm_state="running", disks=["vda"])
    response = vm_api.patch(f"{BASE}/{web.pk}/disks/vda", {"size_gb": 2}, format="json")
    assert (response.status_code, response.json()["code"], list(response.json()["errors"])) == (409, "has_snapshots", ["size_gb"])
    assert "s1" in response.json()["detail"] and hv.domains["web"].xml == before
