"""Rows for bench.api_bench, inserted with bulk_create (no services, no libvirt): the requests are measured, not seeding.

Both databases hold the same few reference ISOs, the ones the create requests name, with real (tiny) files so a
reference by path or file name passes the path checks. The loaded database adds a library of ISOs with varied
names, tags and statuses around them, and VMs as provisioning leaves them: two disks, one or two NICs, a CD-ROM
holding one of the library's ISOs and a short event log each.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import uuid

TAGS = ("ubuntu", "debian", "fedora", "rhel", "windows", "bsd", "lts", "server", "desktop", "netinst", "drivers", "rescue",
        "live", "minimal", "arm", "legacy", "testing", "golden", "lab", "prod")  # fmt: skip
DISTROS = (
    ("ubuntu", "linux", "ubuntu{v}", ("20.04", "22.04", "24.04", "24.10")),
    ("debian", "linux", "debian{v}", ("10", "11", "12", "13")),
    ("fedora", "linux", "fedora{v}", ("38", "39", "40", "41")),
    ("rocky", "linux", "rocky{v}", ("8", "9")),
    ("alpine", "linux", "alpinelinux{v}", ("3.18", "3.19", "3.20")),
    ("freebsd", "bsd", "freebsd{v}", ("13.2", "14.0", "14.1")),
    ("windows-server", "windows", "win2k{v}", ("19", "22", "25")),
    ("win", "windows", "win{v}", ("10", "11")),
)
EDITIONS = ("server", "desktop", "netinst", "live", "minimal", "dvd")
ARCHES = (("amd64", "x86_64"), ("arm64", "aarch64"), ("x86_64", "x86_64"))
STATUSES = ("ready",) * 17 + ("failed", "hashing", "cancelled")  # mostly ready, as a real library
RANDOM = random.Random(6)  # the same rows every run


def add_reference_isos(refs: list[dict[str, str]]) -> None:
    """The ISOs the create requests name, as the parent describes them (id, name, path); the files exist."""
    from isos.models import IsoImage, IsoTag

    isos = IsoImage.objects.bulk_create(
        IsoImage(
            id=ref["id"],
            name=ref["name"],
            path=ref["path"],
            size=4 * 1024**3,
            os_type="linux",
            os_variant="ubuntu22.04",
            architecture="x86_64",
            boot_type="hybrid",
            volume_label="Ubuntu-Server 22.04 LTS amd64",
            md5_hash=hashlib.md5(ref["id"].encode(), usedforsecurity=False).hexdigest(),
            sha256_hash=hashlib.sha256(ref["id"].encode()).hexdigest(),
            status="ready",
        )
        for ref in refs
    )
    tags = IsoTag.objects.bulk_create([IsoTag(name=name) for name in TAGS])
    through = IsoImage.tags.through
    through.objects.bulk_create(through(isoimage_id=iso.pk, isotag_id=tags[n % len(tags)].pk) for n, iso in enumerate(isos))


def add_library(count: int) -> None:
    """`count` more ISOs named like a real library's ("debian-12-netinst-amd64-00042.iso"), 1-3 tags each."""
    from django.conf import settings

    from isos.models import IsoImage, IsoTag

    directory = settings.VAPOR.iso_dirs[0]
    tags = list(IsoTag.objects.order_by("name"))
    combos = itertools.cycle(itertools.product(DISTROS, EDITIONS, ARCHES))
    isos = []
    for n in range(count):
        (distro, os_type, variant, versions), edition, (arch, architecture) = next(combos)
        version = versions[n % len(versions)]
        name = f"{distro}-{version}-{edition}-{arch}-{n:05d}.iso"
        isos.append(
            IsoImage(
                id=f"iso-{0xB000000000 + n:012x}",
                name=name,
                path=f"{directory}/library/{name}",
                size=RANDOM.randrange(300, 6000) * 1024**2,
                os_type=os_type,
                os_variant=variant.format(v=version.replace(".", "") if os_type == "windows" else version),
                architecture=architecture,
                boot_type=RANDOM.choice(("bios", "uefi", "hybrid")),
                volume_label=f"{distro.upper()}_{version}_{arch}"[:64],
                description=f"{distro} {version} {edition} for {arch}, image {n} of the benchmark's library.",
                md5_hash=hashlib.md5(name.encode(), usedforsecurity=False).hexdigest(),
                sha256_hash=hashlib.sha256(name.encode()).hexdigest(),
                status=STATUSES[n % len(STATUSES)],
                use_count=RANDOM.randrange(0, 50),
            )
        )
    IsoImage.objects.bulk_create(isos, batch_size=2000)
    through = IsoImage.tags.through
    links = [through(isoimage_id=iso.pk, isotag_id=tag.pk) for iso in isos for tag in RANDOM.sample(tags, RANDOM.randint(1, 3))]
    through.objects.bulk_create(links, batch_size=5000)


def add_vms(count: int) -> None:
    """`count` more VMs after those already there, each with two disks, one or two NICs, a CD-ROM and two events."""
    from isos.models import IsoImage
    from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine, VmEvent

    start = VirtualMachine.objects.count()
    isos = list(IsoImage.objects.filter(status="ready").values_list("pk", "name"))
    roles = ("web", "db", "cache", "build", "ci", "mail", "proxy", "dev", "test", "lab")
    vms = VirtualMachine.objects.bulk_create(
        (
            VirtualMachine(
                name=f"{roles[n % len(roles)]}-{n:05d}",
                uuid=uuid.uuid4(),
                memory_mb=RANDOM.choice((1024, 2048, 4096, 8192)),
                vcpus=RANDOM.choice((1, 2, 4)),
                os_type="linux",
                os_variant="ubuntu22.04",
                virt_type="qemu",
                storage_pool="default",
                graphics_port=5900 + n % 1000,
                status=RANDOM.choice(("running", "running", "running", "stopped", "failed")),
                state="running",
            )
            for n in range(start, start + count)
        ),
        batch_size=2000,
    )
    Disk.objects.bulk_create(
        (
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
        ),
        batch_size=5000,
    )
    NetworkInterface.objects.bulk_create(
        (
            NetworkInterface(vm=vm, order=k, mac=f"52:54:{k:02x}:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}")
            for n, vm in enumerate(vms, start)
            for k in range(1 + n % 2)
        ),
        batch_size=5000,
    )
    CdromAttachment.objects.bulk_create(
        (
            CdromAttachment(vm=vm, iso_id=iso[0], resolved_by="name", reference=iso[1], target_dev="sda", boot_order=3)
            for vm, iso in ((vm, isos[RANDOM.randrange(len(isos))]) for vm in vms)
        ),
        batch_size=5000,
    )
    VmEvent.objects.bulk_create(
        (VmEvent(vm=vm, step=step, status="done") for vm in vms for step in ("accepted", "start")),
        batch_size=5000,
    )


def counts() -> dict[str, int]:
    from isos.models import IsoImage
    from vms.models import Disk, NetworkInterface, VirtualMachine

    return {
        "isos": IsoImage.objects.count(),
        "vms": VirtualMachine.objects.count(),
        "disks": Disk.objects.count(),
        "nics": NetworkInterface.objects.count(),
    }
