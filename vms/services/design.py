"""Designing a VM's domain: every decision between the VM's rows and libvirt's document.

`domain_spec(vm)` reads the rows and settles what the domain is made of,
including the rules that are policy rather than syntax: which firmware,
whether SMM comes with it, how the guest's clock runs. The builder
(`vms.hypervisor.documents.domain`) then writes exactly what the spec says
(the role of Nova's `designer.py` beside its `config.py`).
"""

from __future__ import annotations

from collections.abc import Mapping

from guestos import osinfo
from vaporsite.errors import InvalidInput
from vms.choices import DiskSource, NicType
from vms.hypervisor.specs import (
    SPARE_PCIE_ROOT_PORTS,
    BackingSpec,
    CdromSpec,
    ClockOffset,
    DiskSpec,
    DomainSpec,
    Firmware,
    GraphicsSpec,
    NicSpec,
)
from vms.models import Disk, VirtualMachine
from vms.services.cloud_init import seed_cdroms

WINDOWS_OS_IDS = "http://microsoft.com/"
"""libosinfo ids of every Windows release live under this prefix."""


def clock_for(os_id: str) -> tuple[ClockOffset, bool]:
    """The RTC offset and whether the Hyper-V clock is offered, for the OS `os_id`.

    Windows keeps the RTC in local time; the Hyper-V clock saves it from
    constant resynchronisation. Every other guest keeps it in UTC.
    """
    if os_id.startswith(WINDOWS_OS_IDS):
        return "localtime", True
    return "utc", False


def firmware_for(*, uefi: bool, secure_boot: bool) -> tuple[Firmware, bool]:
    """The firmware and whether SMM is on.

    Secure Boot exists only in UEFI, and OVMF's Secure Boot build needs SMM
    (without it the guest never starts), so SMM comes exactly with Secure Boot.
    """
    if secure_boot and not uefi:
        raise InvalidInput("Secure Boot needs UEFI firmware", field="secure_boot")
    return ("efi" if uefi else "bios"), secure_boot


def backing_for(disk: Disk) -> tuple[BackingSpec, ...] | None:
    """The backing chain the domain states for `disk`: the one the request checked.

    A new volume and a full copy have none (stated as none, so nothing is
    probed). An existing disk has the rest of its own chain, a linked clone
    its source's whole chain. A disk whose chain was never recorded (made
    before Vapor recorded chains) is left unstated: None.
    """
    if disk.source == DiskSource.NEW or (disk.source == DiskSource.CLONE and not disk.linked):
        return ()
    if disk.source_chain is None:
        return None
    chain = disk.source_chain if disk.source == DiskSource.CLONE else disk.source_chain[1:]
    return tuple(BackingSpec(path=str(link["path"]), format=link["format"]) for link in chain)


def domain_spec(vm: VirtualMachine, *, password: str | None = None, iso_paths: Mapping[str, str] | None = None) -> DomainSpec:
    """The domain as the VM's rows describe it, with every decision made.

    `iso_paths`: ISO id -> the file the VM's host opens for it (a copy on a remote host,
    `vms.services.iso_copies`); an ISO not named there is opened at its library path.
    """
    iso_paths = iso_paths or {}
    firmware, smm = firmware_for(uefi=vm.uefi, secure_boot=vm.secure_boot)
    os_id = osinfo.os_id_for(vm.os_variant) if vm.os_variant else ""
    clock_offset, hyperv_clock = clock_for(os_id)
    disks = tuple(
        DiskSpec(
            path=d.path,
            format=d.format,  # type: ignore[arg-type]
            bus=d.bus,  # type: ignore[arg-type]
            target_dev=d.target_dev,
            boot_order=d.boot_order,
            readonly=d.readonly,
            backing=backing_for(d),
        )
        for d in vm.disks.all()
    )
    cdroms = tuple(
        CdromSpec(path=iso_paths.get(c.iso_id, c.iso.path), target_dev=c.target_dev, boot_order=c.boot_order) for c in vm.cdroms.all()
    )
    cdroms += seed_cdroms(vm)
    nics = tuple(
        NicSpec(kind="network" if n.type == NicType.NAT else "bridge", source=n.source, model=n.model, mac=n.mac, boot_order=n.boot_order)  # type: ignore[arg-type]
        for n in vm.nics.all()
    )
    graphics = None
    if vm.graphics_type != "none":
        graphics = GraphicsSpec(type=vm.graphics_type, port=vm.graphics_port, listen=vm.graphics_listen, password=password)  # type: ignore[arg-type]
    return DomainSpec(
        name=vm.name,
        uuid=str(vm.uuid) if vm.uuid else None,
        memory_mib=vm.memory_mb,
        vcpus=vm.vcpus,
        max_memory_mib=vm.memory_maximum,
        max_vcpus=vm.vcpus_maximum,
        virt_type=vm.virt_type,  # type: ignore[arg-type]
        arch=vm.architecture,
        machine=vm.machine,
        firmware=firmware,
        secure_boot=vm.secure_boot,
        smm=smm,
        tpm=vm.tpm,
        clock_offset=clock_offset,
        hyperv_clock=hyperv_clock,
        os_id=os_id,
        vapor_id=str(vm.pk or ""),
        title=f"Vapor VM {vm.name}",
        disks=disks,
        cdroms=cdroms,
        nics=nics,
        graphics=graphics,
        serial_log=vm.serial_log,
        pcie_root_ports=SPARE_PCIE_ROOT_PORTS if "q35" in vm.machine else 0,
    )
