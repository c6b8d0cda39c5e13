"""What a domain is made of, as frozen dataclasses.

The designer (`vms.services.design`) builds a `DomainSpec` from a VM's rows;
`documents.domain` turns it into libvirt XML and reads a domain's XML back
into the records below it (`LiveDomain` for Vapor's own checks,
`DomainDefinition` for adopting a domain). Nothing here knows Django or
libvirt. Every value is final: target devices are assigned, paths resolved,
formats explicit, so building the XML makes no decision of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

DiskBus = Literal["virtio", "sata", "scsi", "ide"]
DiskFormat = Literal["qcow2", "raw"]
IMAGE_FORMATS: tuple[DiskFormat, ...] = get_args(DiskFormat)
"""The disk image formats Vapor reads and writes; every other list of them (vms.choices.DiskFormat) is built from this one."""
NicModel = Literal["virtio", "e1000e", "rtl8139"]
Firmware = Literal["bios", "efi"]

SPARE_PCIE_ROOT_PORTS = 4
"""Empty `pcie-root-port` controllers a new q35 domain gets, so disks and NICs can be hot-plugged:
on q35 every PCIe device needs a root port of its own and a running domain cannot gain one."""
ClockOffset = Literal["utc", "localtime"]


@dataclass(frozen=True)
class BackingSpec:
    """One image below a disk in its backing chain, as Vapor checked it."""

    path: str
    format: DiskFormat


@dataclass(frozen=True)
class DiskSpec:
    """A hard disk backed by a file on the host.

    `backing` is the disk's checked backing chain, nearest image first: `()`
    states that the disk has none (`<backingStore/>`), so neither libvirt nor
    QEMU reads a backing file name from the image's header. None leaves the
    chain unstated (a disk whose chain Vapor never recorded), and libvirt
    probes it as it did before Vapor stated chains.
    """

    path: str
    format: DiskFormat
    bus: DiskBus
    target_dev: str  # "vda", "sda", "hda" ...
    boot_order: int | None = None
    readonly: bool = False
    backing: tuple[BackingSpec, ...] | None = None


@dataclass(frozen=True)
class CdromSpec:
    """A CD-ROM holding an ISO file: always raw and read-only."""

    path: str
    target_dev: str  # on SATA: "sdX"
    bus: Literal["sata", "ide", "scsi"] = "sata"
    boot_order: int | None = None


@dataclass(frozen=True)
class NicSpec:
    """`kind` "network" = a libvirt network (the API's "nat"); "bridge" = a host bridge."""

    kind: Literal["network", "bridge"]
    source: str
    model: NicModel = "virtio"
    mac: str | None = None


@dataclass(frozen=True)
class GraphicsSpec:
    type: Literal["vnc", "spice"] = "vnc"
    port: int = -1  # -1: libvirt picks one
    listen: str = "127.0.0.1"
    password: str | None = None  # write-only; masked by `domain_xml(..., mask_secrets=True)`


@dataclass(frozen=True)
class DomainSpec:
    name: str
    memory_mib: int
    vcpus: int
    virt_type: Literal["kvm", "qemu"] = "kvm"
    arch: str = "x86_64"
    machine: str = "q35"
    firmware: Firmware = "bios"
    secure_boot: bool = False  # needs firmware "efi" and smm
    smm: bool = False
    tpm: bool = False
    clock_offset: ClockOffset = "utc"
    hyperv_clock: bool = False
    uuid: str | None = None
    title: str = ""
    os_id: str = ""  # libosinfo URI, e.g. "http://ubuntu.com/ubuntu/22.04" (metadata only; the clock is decided by the designer)
    vapor_id: str = ""  # Vapor's VM id, stored in <metadata> to find the domain's owner
    disks: tuple[DiskSpec, ...] = ()
    cdroms: tuple[CdromSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    graphics: GraphicsSpec | None = field(default_factory=GraphicsSpec)
    serial_log: str = ""  # a file the serial console is written to (tests read the guest's output there)
    # Spare (empty) pcie-root-port controllers for hot-plug; q35 only: the designer gives other machines 0.
    pcie_root_ports: int = SPARE_PCIE_ROOT_PORTS


@dataclass(frozen=True)
class LiveDisk:
    """A disk or CD-ROM as the running domain's XML shows it."""

    device: Literal["disk", "cdrom"]
    target_dev: str
    bus: str
    source: str
    format: str
    readonly: bool
    boot_order: int | None
    backing: tuple[BackingSpec, ...] | None = None  # the stated chain; None when the XML states none


@dataclass(frozen=True)
class LiveDomain:
    """What Vapor reads back from a domain's (live) XML."""

    name: str
    uuid: str
    virt_type: str
    firmware: str  # "efi" or "bios"
    loader: str  # path of the firmware libvirt chose ("" for BIOS)
    loader_secure: bool
    smm: bool
    tpm_model: str  # "" when no TPM
    tpm_version: str
    disks: tuple[LiveDisk, ...]
    macs: tuple[str, ...]
    graphics_type: str  # "" when none
    graphics_port: int | None  # the port libvirt assigned (None when not running / none)
    graphics_listen: str


@dataclass(frozen=True)
class DefinedDisk:
    """A hard disk or CD-ROM. `kind` is libvirt's source type: file, block or volume.

    For a volume disk, `pool` and `volume` name it and `path` is empty (the
    inactive XML does not resolve it).
    """

    device: str  # "disk" or "cdrom"
    kind: str
    path: str
    pool: str
    volume: str
    format: str
    bus: str
    target_dev: str
    readonly: bool
    boot_order: int | None


@dataclass(frozen=True)
class DiskFile:
    """A file a domain's XML names as a disk, CD-ROM or backing file of one.

    `path` for a file or block source; `pool` and `volume` for a volume
    source (the driver finds its path). `readonly`: the domain only reads it
    (a `<readonly/>` disk, a CD-ROM or floppy, or a `backing` file).
    """

    path: str
    pool: str
    volume: str
    readonly: bool
    backing: bool


@dataclass(frozen=True)
class DefinedNic:
    """An interface on a libvirt network (`kind` "network") or a host bridge ("bridge")."""

    kind: str
    source: str
    model: str  # "" when the XML leaves it to the hypervisor
    mac: str


@dataclass(frozen=True)
class DomainDefinition:
    """A whole domain definition in Vapor's terms, for adopting a domain Vapor did not create.

    Anything Vapor cannot represent is listed in `skipped` instead of being guessed.
    """

    name: str
    uuid: str
    virt_type: str
    memory_mib: int
    vcpus: int
    arch: str
    machine: str
    efi: bool
    secure_boot: bool
    tpm: bool
    graphics_type: str  # "" when headless
    graphics_port: int  # -1: assigned by libvirt when it starts
    graphics_listen: str
    serial_log: str
    disks: tuple[DefinedDisk, ...]
    nics: tuple[DefinedNic, ...]
    skipped: tuple[str, ...]  # devices Vapor cannot represent, in words


SnapshotKind = Literal["internal", "external", "no"]


@dataclass(frozen=True)
class SnapshotDiskSpec:
    """What a snapshot does with one disk, by target device.

    "internal": a snapshot inside the qcow2 image; "external": a new qcow2
    overlay at `path` (the disk's current image becomes its backing file);
    "no": the disk is left out (CD-ROMs, raw disks, shared data).
    """

    target_dev: str
    snapshot: SnapshotKind
    path: str = ""  # external only
    format: DiskFormat = "qcow2"  # external only: the overlay's format


@dataclass(frozen=True)
class SnapshotSpec:
    """A domain snapshot to take.

    `memory` "no" takes the disks only (a shut-off domain, or a disk-only
    snapshot of a running one); "internal" also saves the running guest's
    memory into the first qcow2 disk, and then no disk may be external.
    Disks not listed get libvirt's default for the domain.
    """

    name: str
    description: str = ""
    memory: Literal["no", "internal"] = "no"
    disks: tuple[SnapshotDiskSpec, ...] = ()


@dataclass(frozen=True)
class SnapshotDisk:
    """A disk as a snapshot's XML describes it; `path` and `format` only for an external one."""

    target_dev: str
    snapshot: str
    path: str
    format: str


@dataclass(frozen=True)
class LiveSnapshot:
    """What Vapor reads back from a snapshot's XML (`virDomainSnapshotGetXMLDesc`)."""

    name: str
    description: str
    state: str  # the domain's state when it was taken ("shutoff", "running", ...; "" in a request)
    parent: str  # "" for a first snapshot
    creation_time: int | None  # seconds since the epoch; None in a request
    memory: str  # "no", "internal" or "external"; "" when unstated
    disks: tuple[SnapshotDisk, ...]


def target_devs(buses: list[str]) -> list[str]:
    """Assign target devices in order: virtio -> vdX; sata and scsi share sdX; ide -> hdX."""
    prefixes = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}
    counters: dict[str, int] = {}
    result = []
    for bus in buses:
        prefix = prefixes[bus]
        index = counters.get(prefix, 0)
        counters[prefix] = index + 1
        result.append(prefix + _letters(index))
    return result


# libvirt gives a SATA or SCSI drive named sdX the controller (index of X) // units and
# the unit (index of X) % units, and adds the controllers that makes necessary.
DRIVE_UNITS = {"sata": 6, "scsi": 7}


def drive_index(target_dev: str) -> int:
    """The inverse of the naming above: "sda" -> 0, "sdz" -> 25, "sdaa" -> 26."""
    index = 0
    for char in target_dev[2:]:
        index = index * 26 + ord(char) - ord("a") + 1
    return index - 1


def controllers_needed(bus: str, target_devs: list[str]) -> int:
    """How many `bus` controllers libvirt addresses for these drives (0 for none)."""
    return max((drive_index(dev) // DRIVE_UNITS[bus] + 1 for dev in target_devs), default=0)


def _letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa (the kernel's naming)."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("a") + rest) + name
    return name
