"""The designer's decisions (vms/services/design.py): the policy the domain
builder no longer makes. The builder's side is in test_domain_xml.py."""

from __future__ import annotations

from typing import Any

import pytest

from vaporsite.errors import InvalidInput
from vms.hypervisor.documents.domain import domain_xml
from vms.hypervisor.specs import BackingSpec
from vms.models import Disk, VirtualMachine
from vms.services.design import clock_for, domain_spec, firmware_for


@pytest.mark.parametrize(
    ("os_id", "clock"),
    [
        ("http://microsoft.com/win/11", ("localtime", True)),
        ("http://microsoft.com/win/2k22", ("localtime", True)),
        ("http://ubuntu.com/ubuntu/22.04", ("utc", False)),
        ("http://ubuntu.com/microsoft.com", ("utc", False)),
        ("", ("utc", False)),
    ],
)
def test_windows_keeps_local_time_with_the_hyperv_clock_and_others_utc(os_id: str, clock: tuple[str, bool]):
    assert clock_for(os_id) == clock


@pytest.mark.parametrize(
    ("uefi", "secure_boot", "firmware"),
    [(False, False, ("bios", False)), (True, False, ("efi", False)), (True, True, ("efi", True))],
)
def test_smm_comes_exactly_with_secure_boot(uefi: bool, secure_boot: bool, firmware: tuple[str, bool]):
    assert firmware_for(uefi=uefi, secure_boot=secure_boot) == firmware


def test_secure_boot_without_uefi_is_refused():
    with pytest.raises(InvalidInput, match="Secure Boot needs UEFI firmware") as caught:
        firmware_for(uefi=False, secure_boot=True)
    assert caught.value.field == "secure_boot"


@pytest.mark.django_db
def test_a_windows_vm_with_secure_boot_is_designed_with_smm_and_the_local_clock():
    vm = VirtualMachine.objects.create(name="w", memory_mb=4096, vcpus=2, os_variant="win11", uefi=True, secure_boot=True)
    spec = domain_spec(vm)
    assert (spec.os_id, spec.clock_offset, spec.hyperv_clock) == ("http://microsoft.com/win/11", "localtime", True)
    assert (spec.firmware, spec.secure_boot, spec.smm) == ("efi", True, True)


@pytest.mark.django_db
def test_a_plain_vm_is_designed_with_bios_and_utc():
    vm = VirtualMachine.objects.create(name="u", memory_mb=1024, vcpus=1, os_variant="ubuntu22.04")
    spec = domain_spec(vm)
    assert (spec.clock_offset, spec.hyperv_clock, spec.firmware, spec.smm) == ("utc", False, "bios", False)


@pytest.mark.django_db
def test_a_stored_vm_with_secure_boot_but_no_uefi_is_refused_by_the_designer():
    vm = VirtualMachine.objects.create(name="b", memory_mb=1024, vcpus=1, secure_boot=True)
    with pytest.raises(InvalidInput, match="Secure Boot needs UEFI firmware"):
        domain_spec(vm)


@pytest.mark.django_db
def test_each_disk_states_the_chain_its_request_checked_and_an_unrecorded_one_is_left_unstated():
    vm = VirtualMachine.objects.create(name="c", memory_mb=1024, vcpus=1)
    chain = [{"path": "/d/base.qcow2", "format": "qcow2", "data_file": None}, {"path": "/d/seed.img", "format": "raw", "data_file": None}]
    rows: list[dict[str, Any]] = [
        {"source": "new"},
        {"source": "clone", "linked": False, "source_chain": chain},
        {"source": "clone", "linked": True, "source_chain": chain},
        {"source": "existing", "source_chain": chain},
        {"source": "existing", "source_chain": None},  # made before Vapor recorded chains
        {"source": "clone", "linked": True, "source_chain": None},
    ]
    for order, row in enumerate(rows):
        Disk.objects.create(vm=vm, order=order, path=f"/p/{order}.qcow2", target_dev=f"vd{'abcdef'[order]}", **row)
    base, seed = BackingSpec("/d/base.qcow2", "qcow2"), BackingSpec("/d/seed.img", "raw")
    assert [d.backing for d in domain_spec(vm).disks] == [(), (), (base, seed), (seed,), None, None]


@pytest.mark.django_db
@pytest.mark.parametrize(("machine", "ports"), [("q35", 4), ("pc-q35-7.2", 4), ("pc-i440fx-7.2", 0), ("pc", 0)])
def test_a_q35_vm_gets_spare_pcie_root_ports_for_hot_plug_and_other_machines_none(machine: str, ports: int):
    vm = VirtualMachine.objects.create(name="p", memory_mb=1024, vcpus=1, machine=machine)
    spec = domain_spec(vm)
    assert spec.pcie_root_ports == ports
    assert ('model="pcie-root-port"' in domain_xml(spec)) == bool(ports)
