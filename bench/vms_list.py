"""Part 3 of bench.vms_bench: `GET /api/v1/virtualmachines/` with 10 and 200 VMs.

The rows are inserted with the ORM as provisioning leaves them (two disks, a NIC and a CD-ROM each), with no
libvirt: what is measured is the endpoint, and whether its query count stays fixed as the list grows.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.common import GIB, Section, require, say
from bench.listing import ListEndpoint, measure_list

ISO_POOL = 5  # ISOs the listed VMs' CD-ROMs point at
VM_LIST = ListEndpoint(url="/api/v1/virtualmachines/", key="virtualmachines", noun="VM", children={"disks": 2, "networks": 1, "cdroms": 1})


def add_vms(start: int, stop: int) -> None:
    """VMs `start`..`stop-1` as the ORM stores them after provisioning: two disks, one NIC and one CD-ROM each.

    Inserted in bulk, no services and no libvirt: the list endpoint is what is measured.
    """
    import uuid

    from isos.models import IsoImage
    from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine

    isos = list(IsoImage.objects.order_by("id"))
    vms = VirtualMachine.objects.bulk_create(
        VirtualMachine(
            name=f"bench-list-{n:05d}",
            uuid=uuid.uuid4(),
            memory_mb=2048,
            vcpus=2,
            os_type="linux",
            os_variant="ubuntu22.04",
            virt_type="qemu",
            storage_pool="default",
            graphics_port=5900 + n,
            status="running",
        )
        for n in range(start, stop)
    )
    Disk.objects.bulk_create(
        Disk(
            vm=vm,
            order=order,
            source="new",
            size_gb=20 * (order + 1),
            path=f"/var/lib/libvirt/images/{vm.name}-disk{order}.qcow2",
            volume_name=f"{vm.name}-disk{order}.qcow2",
            target_dev=f"vd{'ab'[order]}",
            boot_order=1 if order == 0 else None,
            created_by_vapor=True,
        )
        for vm in vms
        for order in range(2)
    )
    NetworkInterface.objects.bulk_create(
        NetworkInterface(vm=vm, order=0, mac=f"52:54:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}")
        for n, vm in enumerate(vms, start)
    )
    CdromAttachment.objects.bulk_create(
        CdromAttachment(
            vm=vm, iso=isos[n % len(isos)], resolved_by="filename", reference=isos[n % len(isos)].name, target_dev="sdc", boot_order=2
        )
        for n, vm in enumerate(vms, start)
    )


def add_isos() -> None:
    """The ISOs the VMs' CD-ROMs hold: the endpoint lists each CD-ROM with its ISO."""
    from isos.models import IsoImage

    IsoImage.objects.bulk_create(
        IsoImage(id=f"iso-{n:012x}", name=f"bench-{n}.iso", path=f"/var/lib/vapor/iso/bench-{n}.iso", size=GIB + n, status="ready")
        for n in range(ISO_POOL)
    )


def bench_list(requests: int, sizes: Sequence[int]) -> Section:
    """Runs after parts 1-2, on the database they used: they must have deleted every VM they made."""
    from vms.models import VirtualMachine

    say("part 3: list endpoint")
    require(not VirtualMachine.objects.exists(), "parts 1-2 left VM rows behind")
    add_isos()
    figures = measure_list(VM_LIST, VirtualMachine, add_vms, requests, sizes)
    return figures.section(
        part=3,
        setup=(
            ", DEBUG off. VM rows are inserted with the ORM (no libvirt); each VM has 2 disks, 1 NIC and a CD-ROM holding "
            f"one of {ISO_POOL} ISOs."
        ),
        prefetched="disks, NICs and CD-ROMs with their ISOs are prefetched",
        closing=(
            "The time includes serialising and parsing the JSON in the test client; the requests name no `limit`, so they get "
            "the whole list (pages of 100 against a bare DRF view: bench.api_bench, target 7)."
        ),
    )
