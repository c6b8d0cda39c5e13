"""Snapshots on the real daemon (libvirt 9.0, QEMU 7.2), through Vapor's API.

A marker is written into the VM's disk image with qemu-io while the VM is shut off, a snapshot taken, the
marker overwritten, the snapshot reverted: the marker is back; for a BIOS and a UEFI VM (whose UEFI
variables come back too). A running BIOS guest is snapshotted with its memory and resumes after a revert.
The refusals leave `virsh dumpxml` (live and --inactive) byte-identical; deleting the VM leaves no file in
its pool and no snapshot. VMs are named `snapshots-...`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import virsh
from tests.integration.guest_vm import vapor_guest
from tests.integration.vm_support import VmEnv
from tests.support.api import post_create
from vms.hypervisor.documents.snapshot import parse_nvram_path
from vms.models import VirtualMachine

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]
BASE = "/api/v1/virtualmachines"


@pytest.fixture(autouse=True)
def drop_snapshot_metadata() -> Iterator[None]:
    """A failed test may leave snapshots, which make vm_env's plain `virsh undefine` fail: drop them first."""
    yield
    for name in virsh("list", "--all", "--name").stdout.split():
        if name.startswith("snapshots-"):
            for snapshot in virsh("snapshot-list", name, "--name", check=False).stdout.split():
                virsh("snapshot-delete", name, snapshot, "--metadata", check=False)


def create(vm_api, run_tasks, vm_env: VmEnv, name: str, **extra: Any) -> VirtualMachine:
    body = {"name": name, "memory": 256, "vcpus": 1, "graphics": {"type": "none"}, "storage_pool": vm_env.pool, "disks": [{"size": 1}]}
    response = post_create(vm_api, run_tasks, {**body, **extra})
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(pk=response.json()["id"])
    assert vm.status == "running", vm.error
    return vm


def qemu_io(image: Path, command: str) -> str:
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(image)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def has_pattern(image: Path, byte: int) -> bool:
    return "verification failed" not in qemu_io(image, f"read -P {byte:#x} 1M 64k")


def dumpxml(name: str) -> tuple[str, str]:
    return virsh("dumpxml", name).stdout, virsh("dumpxml", "--inactive", name).stdout


def stop(vm_api, vm: VirtualMachine) -> None:
    assert vm_api.post(f"{BASE}/{vm.pk}/force-stop").status_code == 200


def take(vm_api, vm: VirtualMachine, **body: Any) -> Any:
    return vm_api.post(f"{BASE}/{vm.pk}/snapshots", body, format="json")


def snapshot_revert_delete(vm_api, vm_env: VmEnv, vm: VirtualMachine) -> None:
    """Marker, snapshot, overwrite, revert: the marker is back. Then the refusals, then delete the VM."""
    image = vm_env.pool_dir / f"{vm.name}-disk0.qcow2"
    stop(vm_api, vm)
    qemu_io(image, "write -P 0xaa 1M 64k")
    response = take(vm_api, vm, name="before", description="marker 0xaa")
    assert response.status_code == 201, response.json()
    assert "before" in virsh("snapshot-list", vm.name, "--name").stdout
    qemu_io(image, "write -P 0xbb 1M 64k")
    assert has_pattern(image, 0xBB)

    reverted = vm_api.post(f"{BASE}/{vm.pk}/snapshots/before/revert")
    assert reverted.status_code == 200, reverted.json()
    assert (reverted.json()["state"], reverted.json()["vm"]["status"]) == ("shutoff", "stopped")
    assert has_pattern(image, 0xAA), "the revert brought the marker back"

    xml = dumpxml(vm.name)
    assert take(vm_api, vm, name="before").json()["code"] == "snapshot_exists"
    assert vm_api.post(f"{BASE}/{vm.pk}/snapshots/ghost/revert").json()["code"] == "snapshot_not_found"
    assert take(vm_api, vm, name="mem", memory=True).json()["code"] == "vm_not_running"
    assert dumpxml(vm.name) == xml


def delete_leaves_nothing(vm_api, vm_env: VmEnv, vm: VirtualMachine) -> None:
    assert vm_api.delete(f"{BASE}/{vm.pk}").status_code == 204
    assert vm.name not in virsh("list", "--all", "--name").stdout.split()
    subprocess.run(["virsh", "pool-refresh", vm_env.pool], capture_output=True, timeout=60)
    assert vm_env.volumes() == set(), "no disk and no snapshot file is left in the pool"


def test_bios_snapshot_revert_brings_the_disk_bytes_back(vm_api, run_tasks, vm_env: VmEnv):
    vm = create(vm_api, run_tasks, vm_env, "snapshots-bios")
    snapshot_revert_delete(vm_api, vm_env, vm)
    delete_leaves_nothing(vm_api, vm_env, vm)


def test_uefi_snapshot_revert_brings_the_disk_bytes_and_the_uefi_variables_back(vm_api, run_tasks, vm_env: VmEnv):
    vm = create(vm_api, run_tasks, vm_env, "snapshots-uefi", uefi=True)
    xml = dumpxml(vm.name)
    refused = take(vm_api, vm, name="live", memory=True)
    assert (refused.status_code, refused.json()["code"]) == (409, "vm_running")
    assert take(vm_api, vm, name="live").json()["code"] == "vm_running"
    assert dumpxml(vm.name) == xml, "a refused snapshot leaves the domain as it was"

    nvram = Path(parse_nvram_path(virsh("dumpxml", vm.name).stdout))
    stop(vm_api, vm)
    original = nvram.read_bytes()
    snapshot_revert_delete_uefi = vm_env.pool_dir / f"{vm.name}.snapshot-before.VARS.fd"
    snapshot_revert_delete(vm_api, vm_env, vm)
    assert snapshot_revert_delete_uefi.read_bytes() == original

    nvram.write_bytes(b"\0" * len(original))  # the variables as a guest might leave them
    assert vm_api.post(f"{BASE}/{vm.pk}/snapshots/before/revert").status_code == 200
    assert nvram.read_bytes() == original, "the revert restored the UEFI variables"
    assert vm_api.post(f"{BASE}/{vm.pk}/start").status_code == 200, "the VM starts from what the revert left"
    qemu_io_blocked = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read 0 512", str(vm_env.pool_dir / f"{vm.name}-disk0.qcow2")],
                                     capture_output=True, text=True, timeout=60)  # fmt: skip
    assert qemu_io_blocked.returncode != 0, "QEMU holds the image while the VM runs"
    running_revert = vm_api.post(f"{BASE}/{vm.pk}/snapshots/before/revert")
    assert running_revert.status_code == 200, running_revert.json()
    assert running_revert.json()["state"] == "shutoff", "a disk-only snapshot leaves the VM off: libvirt stopped it first"
    assert nvram.read_bytes() == original and has_pattern(vm_env.pool_dir / f"{vm.name}-disk0.qcow2", 0xAA)
    delete_leaves_nothing(vm_api, vm_env, vm)
    assert not nvram.exists(), "the VM's own UEFI variables went with it"


@pytest.mark.slow
def test_a_running_guest_snapshotted_with_its_memory_resumes_from_it(vm_api, run_tasks, vm_env: VmEnv, shell_iso: Path):
    guest = vapor_guest(vm_api, run_tasks, vm_env, shell_iso, name="snapshots-live")
    vm = guest.vm
    try:
        guest.check("printf 'before-snapshot' | dd of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null")
        response = take(vm_api, vm, name="live", memory=True)
        assert response.status_code == 201, response.json()
        assert (response.json()["memory"], response.json()["state"]) == (True, "running")
        guest.check("printf 'after--snapshot' | dd of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null")
        assert "after--snapshot" in guest.check("dd if=/dev/vda bs=15 count=1 2>/dev/null")
        guest.close()

        xml = dumpxml(vm.name)
        assert take(vm_api, vm, name="disks-only").json()["code"] == "vm_running"
        assert dumpxml(vm.name) == xml

        reverted = vm_api.post(f"{BASE}/{vm.pk}/snapshots/live/revert")
        assert reverted.status_code == 200, reverted.json()
        assert reverted.json()["state"] == "running"
        assert "before-snapshot" in guest.check("dd if=/dev/vda bs=15 count=1 2>/dev/null"), "the disk is as it was"
    finally:
        guest.close()
    delete_leaves_nothing(vm_api, vm_env, vm)
