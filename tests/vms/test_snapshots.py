"""VM snapshots (issue 14 item 4) through the API on the in-memory hypervisor, whose volumes are real files:
take, list, read, revert (the disk's bytes come back), delete; the refusals (409 with a code, 400 on the
field, 404) leave the domain as it was; a UEFI VM's snapshot owns a copy of its NVRAM; deleting the VM
deletes its snapshots and their files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeHypervisor
from tests.support.api import create_vm
from vms.models import VirtualMachine, VmEvent, VmSnapshot
from vms.services.lifecycle import vm_delete, vm_delete_plan
from vms.services.snapshots import vm_snapshot_names

pytestmark = pytest.mark.django_db
BASE = "/api/v1/virtualmachines"


def make(vm_api, run_tasks, name: str, *, running: bool = False, **extra: Any) -> VirtualMachine:
    payload = {"name": name, "memory": 512, "vcpus": 1, "disks": [{"size": 1}, {"size": 1}], **extra}
    vm = create_vm(vm_api, run_tasks, payload)
    assert vm.status == "running", vm.error
    if not running:
        assert vm_api.post(f"{BASE}/{vm.pk}/force-stop").status_code == 200
    vm.refresh_from_db()
    return vm


@pytest.fixture
def bios(vm_api, hv, run_tasks) -> VirtualMachine:
    return make(vm_api, run_tasks, "snap-bios")


@pytest.fixture
def uefi(vm_api, hv, run_tasks) -> VirtualMachine:
    vm = make(vm_api, run_tasks, "snap-uefi", uefi=True)
    hv.nvram[vm.name] = b"variables as they were"
    return vm


def disk(hv: FakeHypervisor, vm: VirtualMachine, n: int = 0) -> Path:
    return hv.pool_dir / f"{vm.name}-disk{n}.qcow2"


def take(vm_api, vm: VirtualMachine, **body: Any) -> Any:
    return vm_api.post(f"{BASE}/{vm.pk}/snapshots", body, format="json")


def test_a_snapshot_is_taken_listed_and_read(vm_api, bios, hv):
    response = take(vm_api, bios, name="before-upgrade", description="kernel 6.1")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert {k: body[k] for k in ("name", "description", "kind", "memory", "state", "disks", "files")} == {
        "name": "before-upgrade", "description": "kernel 6.1", "kind": "internal", "memory": False, "state": "shutoff",
        "disks": ["vda", "vdb"], "files": [],
    }  # fmt: skip
    assert body["created_at"]
    assert [s.name for s in hv.list_snapshots("snap-bios")] == ["before-upgrade"]
    listed = vm_api.get(f"{BASE}/{bios.pk}/snapshots").json()
    assert [s["name"] for s in listed] == ["before-upgrade"]
    assert vm_api.get(f"{BASE}/{bios.pk}/snapshots/before-upgrade").json() == body
    assert VmEvent.objects.filter(vm=bios, step="snapshot before-upgrade").exists()


def test_revert_brings_the_disks_bytes_back_and_answers_state_snapshot_and_vm(vm_api, bios, hv):
    disk(hv, bios).write_bytes(b"marker one")
    assert take(vm_api, bios, name="one").status_code == 201
    disk(hv, bios).write_bytes(b"changed afterwards")
    response = vm_api.post(f"{BASE}/{bios.pk}/snapshots/one/revert")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["state"], body["snapshot"]["name"], body["vm"]["name"]) == ("shutoff", "one", "snap-bios")
    assert disk(hv, bios).read_bytes() == b"marker one"
    assert VmEvent.objects.filter(vm=bios, step="revert to snapshot one").exists()


def test_a_running_bios_vm_is_snapshotted_with_its_memory_and_reverted_running(vm_api, vm_api_run_tasks_vm):
    vm, hv = vm_api_run_tasks_vm
    response = take(vm_api, vm, name="live", memory=True)
    assert response.status_code == 201, response.json()
    assert (response.json()["memory"], response.json()["state"]) == (True, "running")
    hv.destroy_domain(vm.name)
    body = vm_api.post(f"{BASE}/{vm.pk}/snapshots/live/revert").json()
    assert (body["state"], body["vm"]["status"]) == ("running", "running")


@pytest.fixture
def vm_api_run_tasks_vm(vm_api, hv, run_tasks) -> tuple[VirtualMachine, FakeHypervisor]:
    return make(vm_api, run_tasks, "snap-live", running=True), hv


def refused(vm_api, hv: FakeHypervisor, vm: VirtualMachine, response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.json()
    assert response.json()["code"] == code
    return response.json()


def test_refusals_are_clear_and_leave_the_domain_as_it_was(vm_api, vm_api_run_tasks_vm, run_tasks):
    vm, hv = vm_api_run_tasks_vm
    xml = hv.domain_xml(vm.name)
    calls = hv.calls["create_snapshot"]
    body = refused(vm_api, hv, vm, take(vm_api, vm, name="disks-only"), 409, "vm_running")
    assert body["field"] == "memory"
    refused(vm_api, hv, vm, take(vm_api, vm, name="bad name!"), 400, "invalid")
    refused(vm_api, hv, vm, take(vm_api, vm, name="x", surprise=1), 400, "invalid")
    refused(vm_api, hv, vm, vm_api.post(f"{BASE}/{vm.pk}/snapshots/ghost/revert"), 404, "snapshot_not_found")
    refused(vm_api, hv, vm, vm_api.delete(f"{BASE}/{vm.pk}/snapshots/ghost"), 404, "snapshot_not_found")
    assert take(vm_api, vm, name="s1", memory=True).status_code == 201
    calls += 1
    xml = hv.domain_xml(vm.name)
    body = refused(vm_api, hv, vm, take(vm_api, vm, name="s1", memory=True), 409, "snapshot_exists")
    assert body["field"] == "name"
    assert (hv.domain_xml(vm.name), hv.calls["create_snapshot"]) == (xml, calls)
    assert VmSnapshot.objects.filter(vm=vm).count() == 1
    vm_api.post(f"{BASE}/{vm.pk}/force-stop")
    refused(vm_api, hv, vm, take(vm_api, vm, name="s2", memory=True), 409, "vm_not_running")
    raw = make(vm_api, run_tasks, "snap-raw", disks=[{"size": 1, "format": "raw"}])
    refused(vm_api, hv, raw, take(vm_api, raw, name="s"), 409, "disk_not_qcow2")
    assert hv.calls["create_snapshot"] == calls


def test_a_running_uefi_vm_is_refused_and_a_shut_off_one_keeps_its_nvram(vm_api, uefi, hv):
    vm_api.post(f"{BASE}/{uefi.pk}/start")
    refused(vm_api, hv, uefi, take(vm_api, uefi, name="s", memory=True), 409, "vm_running")
    assert not any(hv.pool_dir.glob("*VARS*"))
    vm_api.post(f"{BASE}/{uefi.pk}/force-stop")
    disk(hv, uefi).write_bytes(b"uefi marker")
    body = take(vm_api, uefi, name="s").json()
    assert body["files"] == ["snap-uefi.snapshot-s.VARS.fd"]
    assert (hv.pool_dir / "snap-uefi.snapshot-s.VARS.fd").read_bytes() == b"variables as they were"
    hv.nvram[uefi.name] = b"variables changed"
    disk(hv, uefi).write_bytes(b"overwritten")
    assert vm_api.post(f"{BASE}/{uefi.pk}/snapshots/s/revert").status_code == 200
    assert (disk(hv, uefi).read_bytes(), hv.nvram[uefi.name]) == (b"uefi marker", b"variables as they were")
    assert vm_api.delete(f"{BASE}/{uefi.pk}/snapshots/s").status_code == 204
    assert not (hv.pool_dir / "snap-uefi.snapshot-s.VARS.fd").exists()
    assert hv.list_snapshots(uefi.name) == [] and not VmSnapshot.objects.exists()


def test_a_failed_snapshot_leaves_no_row_and_no_nvram_copy(vm_api, uefi, hv):
    from vaporsite.errors import HypervisorError

    hv.fail["create_snapshot"] = HypervisorError("libvirt said no")
    assert take(vm_api, uefi, name="s").status_code == 500
    assert not VmSnapshot.objects.exists() and not any(hv.pool_dir.glob("*VARS*"))


def test_deleting_the_vm_deletes_its_snapshots_and_their_files(vm_api, uefi, hv):
    assert take(vm_api, uefi, name="a").status_code == 201
    assert take(vm_api, uefi, name="b").status_code == 201
    plan = vm_delete_plan(vm=uefi)
    assert "snap-uefi.snapshot-a.VARS.fd" in plan.volumes and "snap-uefi.snapshot-b.VARS.fd" in plan.volumes
    assert [f.what for f in plan.erased if "snapshot" in f.what] == [
        "snapshot a (inside disk(s) vda, vdb)",
        "the UEFI variables of snapshot a (volume snap-uefi.snapshot-a.VARS.fd of pool default)",
        "snapshot b (inside disk(s) vda, vdb)",
        "the UEFI variables of snapshot b (volume snap-uefi.snapshot-b.VARS.fd of pool default)",
    ]
    vm_delete(vm=uefi)
    assert list(hv.pool_dir.iterdir()) == []
    assert not VmSnapshot.objects.exists()


def test_deleting_a_vm_with_kept_disks_still_deletes_the_snapshots_inside_them(vm_api, bios, hv):
    assert take(vm_api, bios, name="a").status_code == 201
    deleted = hv.calls["delete_snapshot"]
    vm_delete(vm=bios, keep_disks=True)
    assert hv.calls["delete_snapshot"] == deleted + 1


def test_snapshot_names_by_disk(vm_api, bios, hv):
    assert take(vm_api, bios, name="a").status_code == 201
    assert vm_snapshot_names(vm=bios) == ["a"]
    assert vm_snapshot_names(vm=bios, target_dev="vdb") == ["a"]
    assert vm_snapshot_names(vm=bios, target_dev="vdz") == []


def test_the_nvram_file_is_the_stated_one_else_libvirts_default_for_autoselected_uefi_and_none_for_bios():
    from vms.hypervisor.documents.snapshot import parse_nvram_path

    stated = "<domain><name>a</name><os><loader type='pflash'>/c.fd</loader><nvram>/x/a.fd</nvram></os></domain>"
    assert parse_nvram_path(stated, "/d") == "/x/a.fd"
    assert parse_nvram_path("<domain><name>a</name><os firmware='efi'><type>hvm</type></os></domain>", "/d") == "/d/a_VARS.fd"
    assert parse_nvram_path("<domain><name>a</name><os><type>hvm</type></os></domain>", "/d") == ""


def test_a_revert_is_refused_when_the_hardware_changed_since_the_snapshot(vm_api, bios, hv):
    """libvirt's revert brings back the definition saved with the snapshot: Vapor's rows would no longer say what the VM is."""
    assert take(vm_api, bios, name="small").status_code == 201
    VirtualMachine.objects.filter(pk=bios.pk).update(memory_mb=1024)  # as a memory change by the hardware service stores it
    bios.disks.filter(target_dev="vdb").update(size_gb=5)  # a grown disk
    xml, reverts = hv.domain_xml(bios.name), hv.calls["revert_snapshot"]
    body = refused(vm_api, hv, bios, vm_api.post(f"{BASE}/{bios.pk}/snapshots/small/revert"), 409, "hardware_changed")
    assert "memory_mb, disks changed since snapshot small" in body["detail"]
    assert (hv.domain_xml(bios.name), hv.calls["revert_snapshot"]) == (xml, reverts)
    VirtualMachine.objects.filter(pk=bios.pk).update(memory_mb=512)
    bios.disks.filter(target_dev="vdb").update(size_gb=1)
    assert vm_api.post(f"{BASE}/{bios.pk}/snapshots/small/revert").status_code == 200
