"""Disks and CD-ROMs changed on a running Vapor guest (real libvirtd, TCG): what the guest sees, and refusals that change nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import unique, virsh
from tests.integration.guest_vm import VaporGuest, vapor_guest
from tests.integration.vm_support import VmEnv
from tests.support.isos import make_iso
from vms.hypervisor.libvirt_driver import LibvirtDriver

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db, pytest.mark.slow]

BASE = "/api/v1/virtualmachines"
GIB = 1024**3


def eventually(guest: VaporGuest, command: str, wanted: str, timeout: float = 90.0) -> str:
    """`command`'s output in the guest once it holds `wanted` (hot-plug and resize reach the guest's kernel a little later)."""
    deadline = time.monotonic() + timeout
    output = ""
    while time.monotonic() < deadline:
        output = guest.run(command).output
        if wanted in output:
            return output
        time.sleep(1)
    raise AssertionError(f"`{command}` never showed {wanted!r} in {guest.name}; last:\n{output}")


def definitions(hv: LibvirtDriver, name: str) -> tuple[str, str]:
    return hv.domain_xml(name), hv.domain_xml(name, inactive=True)


def test_hot_attach_grow_detach_and_cdrom_change_reach_the_guest_and_refusals_change_nothing(
    vm_api, run_tasks, vm_env: VmEnv, shell_iso: Path, hypervisor: LibvirtDriver
):
    guest = vapor_guest(vm_api, run_tasks, vm_env, shell_iso, name=unique("disks-guest"))
    vm = guest.vm
    try:
        # A new 1 GB virtio disk, attached while the guest runs: the guest's kernel finds vdb.
        attached = vm_api.post(f"{BASE}/{vm.pk}/disks", {"size": 1}, format="json")
        assert attached.status_code == 201, attached.json()
        assert attached.json()["target_dev"] == "vdb"
        eventually(guest, "ls /sys/block", "vdb")
        live, inactive = definitions(hypervisor, vm.name)
        assert f"{vm.name}-disk1.qcow2" in live and f"{vm.name}-disk1.qcow2" in inactive  # live and persistent

        # Refusals: a SATA disk on the running VM, a shrink; the definitions stay byte-identical.
        before = definitions(hypervisor, vm.name)
        sata = vm_api.post(f"{BASE}/{vm.pk}/disks", {"size": 1, "bus": "sata"}, format="json")
        assert (sata.status_code, sata.json()["code"]) == (409, "not_hotpluggable")
        assert definitions(hypervisor, vm.name) == before
        grown = vm_api.patch(f"{BASE}/{vm.pk}/disks/vdb", {"size_gb": 2}, format="json")
        assert grown.status_code == 200, grown.json()
        eventually(guest, "cat /sys/block/vdb/size", str(2 * GIB // 512))
        before = definitions(hypervisor, vm.name)
        shrink = vm_api.patch(f"{BASE}/{vm.pk}/disks/vdb", {"size_gb": 1}, format="json")
        assert (shrink.status_code, shrink.json()["field"]) == (400, "size_gb")
        assert definitions(hypervisor, vm.name) == before
        assert f"{vm.name}-disk2" not in " ".join(vm_env.volumes())

        # The CD-ROM: a new medium, live; the guest reads its volume label from the descriptor at 32808.
        make_iso(vm_env.isos / "drivers.iso", label="VAPORDRIVERS")
        (vm_env.isos / "drivers.iso").chmod(0o644)
        changed = vm_api.put(f"{BASE}/{vm.pk}/cdroms/sda", {"iso": "drivers.iso"}, format="json")
        assert changed.status_code == 200, changed.json()
        eventually(guest, "dd if=/dev/sr0 bs=1 skip=32808 count=32 2>/dev/null", "VAPORDRIVERS")
        assert "drivers.iso" in hypervisor.domain_xml(vm.name, inactive=True)

        # Detach live, the volume deleted with it: gone from the guest, the definitions and the pool.
        detached = vm_api.delete(f"{BASE}/{vm.pk}/disks/vdb?delete_volume=true")
        assert detached.status_code == 204, detached.content
        eventually(guest, "ls /sys/block; echo; test -e /sys/block/vdb || echo vdb-gone", "vdb-gone")
        assert all(f"{vm.name}-disk1" not in xml for xml in definitions(hypervisor, vm.name))
        assert f"{vm.name}-disk1.qcow2" not in vm_env.volumes()

        # With a snapshot of the domain (libvirt's list), detaching is a 409 and nothing changes.
        overlay = vm_env.pool_dir / f"{vm.name}-disk0.snap1"
        virsh("snapshot-create-as", vm.name, "snap1", "--disk-only", "--atomic",
              "--diskspec", f"vda,snapshot=external,file={overlay}", "--diskspec", "sda,snapshot=no")  # fmt: skip
        before = definitions(hypervisor, vm.name)
        refused = vm_api.delete(f"{BASE}/{vm.pk}/disks/vda")
        assert (refused.status_code, refused.json()["code"]) == (409, "has_snapshots")
        assert definitions(hypervisor, vm.name) == before
    finally:
        guest.close()
        virsh("snapshot-delete", vm.name, "snap1", "--metadata", check=False)  # vm_env's undefine keeps snapshot metadata
