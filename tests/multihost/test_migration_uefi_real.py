"""A UEFI VM with Secure Boot and a TPM (what Windows 11 asks for) migrates live with its UEFI variables and its
TPM state (issue 15 point 6), against real libvirt hosts (vh1..vh3 of scripts/hosts.sh, tests/multihost/conftest.py),
through Vapor's API.

The guest (TCG, OVMF with Secure Boot through the shell ISO's signed shim, an emulated TPM 2.0 that the firmware
measures the boot into) is created by Vapor on vh1. From its shell it writes a UEFI variable of its own (efivarfs:
the firmware stores it in its flash, so in vh1's NVRAM file). Then:

1. to vh3 whose `default` pool is stopped after the request: the migration fails, the VM runs on vh1, vh1's
   NVRAM file is still there unchanged and vh3 holds no NVRAM file of it;
2. to vh2 with copied storage: succeeded; the guest answers on vh2 and still reads its variable; vh2's NVRAM
   file holds the bytes vh1's held (the guest sat idle in its shell), vh1's is gone (Vapor removed it); vh2's
   swtpm keeps the TPM's permanent state file vh1's had, byte for byte (a TPM made anew there would have new
   seeds), and vh1's TPM state is gone (libvirt removed it);
3. stopped and started again on vh2 (a cold boot: the firmware reads the variables from vh2's file), the guest
   boots with Secure Boot on and reads its variable back.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.bootiso import SHELL_READY
from tests.multihost.conftest import LibvirtHost
from tests.multihost.test_hosts import RemoteGuest, driver, remove_guest, say_hello, serial_exchange
from tests.multihost.test_migration_api_real import poll, vapor_on_hosts, virsh  # noqa: F401 (vapor_on_hosts: a fixture)
from tests.support.api import post_create
from tests.support.guests import wait_for_text
from vms.models import VirtualMachine, VmEvent

pytestmark = [pytest.mark.libvirt, pytest.mark.multihost, pytest.mark.slow, pytest.mark.django_db]

API = "/api/v1/virtualmachines/"
BOOT_TIMEOUT = 400.0
MIGRATION_TIMEOUT = 300.0
VARIABLE = "VaporMark-5c3b7a52-8d1e-4f0a-9b6e-2f1d7c0e4a91"  # a name and GUID of our own
EFIVARS = "/sys/firmware/efi/efivars"


def nvram_file(host: LibvirtHost, name: str) -> Path:
    """libvirt's NVRAM file of domain `name` on `host` (its /var/lib/libvirt is host.data / lib)."""
    return host.data / "lib" / "qemu" / "nvram" / f"{name}_VARS.fd"


def tpm_permall(host: LibvirtHost, state_dir: str) -> Path:
    """swtpm's permanent state file of the TPM whose state directory (on the host) is `state_dir`."""
    return host.data / "lib" / "swtpm" / Path(state_dir).name / "tpm2" / "tpm2-00.permall"


def read_variable(hv: Any, name: str) -> str:
    """The guest's variable as its shell prints it (4 bytes of attributes, then the value)."""
    return serial_exchange(hv, name, f"cat {EFIVARS}/{VARIABLE}; echo; echo RE''AD", "READ")


def test_a_uefi_vm_migrates_with_its_variables_and_boots_from_them_there(
    vm_api: Any,
    run_tasks: Any,
    vapor_on_hosts: list[LibvirtHost],  # noqa: F811 (the imported fixture)
    shared_iso: Path,
) -> None:
    vh1, vh2, vh3 = vapor_on_hosts
    name = f"efimig-{uuid.uuid4().hex[:8]}"
    created = post_create(
        vm_api,
        run_tasks,
        {
            "name": name,
            "host": "vh1",
            "memory": 512,
            "vcpus": 1,
            "uefi": True,
            "secure_boot": True,
            "tpm": True,
            "graphics": {"type": "none"},
            "iso_path": str(shared_iso),
            "disks": [{"size": 1}],
            "networks": [],
        },
    )
    assert created.status_code == 202, created.json()
    vm = VirtualMachine.objects.get(pk=created.json()["id"])
    guest = RemoteGuest(name=name, disk=vm.disks.get().path, host=vh1)
    try:
        assert vm.status == "running" and vm.host.name == "vh1" and vm.uefi and vm.secure_boot and vm.tpm, vm.error
        booted = wait_for_text(vh1.serial_log(name), SHELL_READY, BOOT_TIMEOUT)
        print(f"\nmultihost: UEFI guest with Secure Boot ready on vh1 after {booted:.1f} s")
        assert "FIRMWARE=efi secureboot=1" in vh1.serial_log(name).read_text(errors="replace")
        source = driver(vh1)
        mark = f"VAPORVAR-{uuid.uuid4().hex[:12]}"
        # 4 bytes of attributes (non-volatile, boot service, runtime access), then the value; one write.
        serial_exchange(source, name, f"echo -ne '\\0007\\0000\\0000\\0000{mark}' > {EFIVARS}/{VARIABLE}; sync; echo WR''OTE", "WROTE")
        assert mark in read_variable(source, name)
        on_vh1 = nvram_file(vh1, name)
        before = on_vh1.read_bytes()
        assert mark.encode() in before, "the firmware stored the variable in vh1's NVRAM file"
        tpm_state = source.tpm_state_path(name)
        tpm_before = tpm_permall(vh1, tpm_state).read_bytes()
        assert source.host_file_exists(tpm_state) and not driver(vh2).host_file_exists(tpm_state)
        migrate_url = f"{API}{vm.pk}/migrate"

        # 1. A failed migration (vh3's pool gone after the request) keeps the variables on vh1 and leaves none on vh3.
        with run_tasks():
            accepted = vm_api.post(migrate_url, {"host": "vh3", "copy_storage": True}, format="json")
            assert accepted.status_code == 202, accepted.json()
            virsh(vh3, "pool-destroy", "default")
        try:
            failed = vm_api.get(accepted["Location"]).json()
        finally:
            virsh(vh3, "pool-start", "default")
        print(f"multihost: UEFI migration to a host without the pool: {failed['status']}: {failed['error']}")
        assert failed["status"] == "failed", failed
        assert VirtualMachine.objects.get(pk=vm.pk).host.name == "vh1" and source.domain_state(name) == "running"
        assert on_vh1.read_bytes() == before and not nvram_file(vh3, name).exists()
        assert not tpm_permall(vh3, tpm_state).parent.parent.exists()

        # 2. To vh2 with its disk copied: the variables come along in the migration stream.
        assert not nvram_file(vh2, name).exists()
        started = time.monotonic()
        with run_tasks():
            accepted = vm_api.post(migrate_url, {"host": "vh2", "copy_storage": True}, format="json")
            assert accepted.status_code == 202, accepted.json()
        done = poll(vm_api, accepted["Location"], MIGRATION_TIMEOUT)
        print(f"multihost: UEFI migration vh1 -> vh2 {done['status']} after {time.monotonic() - started:.2f} s: {done['progress']}")
        assert done["status"] == "succeeded", done
        vm.refresh_from_db()
        assert vm.host.name == "vh2" and vm.status == "running"
        guest.host = vh2
        dest = driver(vh2)
        assert dest.domain_state(name) == "running" and not source.domain_exists(name)
        say_hello(dest, name, "vh2")
        assert mark in read_variable(dest, name)
        on_vh2 = nvram_file(vh2, name)
        assert on_vh2.read_bytes() == before, "vh2's NVRAM file holds the variables vh1's held"
        assert not on_vh1.exists(), "Vapor removed vh1's NVRAM file"
        assert VmEvent.objects.filter(vm=vm, message__startswith="removed the source's copy of its UEFI variables on vh1").exists()
        assert dest.nvram_path(name) == f"/var/lib/libvirt/qemu/nvram/{name}_VARS.fd"
        assert tpm_permall(vh2, tpm_state).read_bytes() == tpm_before, "vh2's swtpm has vh1's TPM"
        assert not tpm_permall(vh1, tpm_state).parent.parent.exists(), "libvirt removed vh1's TPM state"
        assert dest.host_file_exists(tpm_state) and not source.host_file_exists(tpm_state)

        # 3. A cold boot on vh2: the firmware reads the variables from vh2's file.
        assert vm_api.post(f"{API}{vm.pk}/force-stop").status_code == 200
        assert vm_api.post(f"{API}{vm.pk}/start").status_code == 200
        rebooted = wait_for_text(vh2.serial_log(name), SHELL_READY, BOOT_TIMEOUT)
        print(f"multihost: started again on vh2, ready after {rebooted:.1f} s")
        assert "FIRMWARE=efi secureboot=1" in vh2.serial_log(name).read_text(errors="replace")
        assert mark in read_variable(dest, name)
        source.close()
        dest.close()
    finally:
        remove_guest(guest, vapor_on_hosts)
        for host in vapor_on_hosts:
            nvram_file(host, name).unlink(missing_ok=True)
