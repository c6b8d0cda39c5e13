"""Check a VM request against the rules, the library and the host; plan it.

`vm_validate` writes nothing (ISO references are resolved with
``register=False`` unless the caller asks otherwise) and raises the first
problem it finds as a VaporError naming the request field, e.g.
``disks.1.path``. Cheap checks run before those that ask the hypervisor or
read files.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from guestos import osinfo
from isos.choices import BootType
from isos.models import IsoImage
from isos.resolve import iso_resolve, require_ready
from projects.access import SYSTEM, Actor, check_allowed, project_for_create
from projects.models import Project
from vaporsite.errors import Conflict, InvalidInput, NotFound
from vaporsite.paths import absolute_path, guard_file, is_inside, real_roots
from vms.choices import CdromSlot, DiskSource, VmStatus
from vms.host_models import DEFAULT_HOST
from vms.hypervisor import DiskUse, Hypervisor, PoolInfo, volume_exists
from vms.hypervisor.images import ImageInfo, chain_record, check_image, check_image_chain, image_info
from vms.hypervisor.specs import controllers_needed, target_devs
from vms.models import Disk, Host, NetworkInterface, TemplateDisk, VirtualMachine
from vms.services.cloud_init import cloud_init_check, cloud_init_plan
from vms.services.iso_copies import host_is_local
from vms.services.placement import place
from vms.services.plans import PlannedCdrom, PlannedDisk, PlannedNic, VmPlan
from vms.services.remote_images import inspect_remote_source
from vms.services.requests import DiskRequest, VmRequest
from vms.services.template_apply import template_apply

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
GIB = 1024**3
MIN_MEMORY_MB = 64
# Ceilings of the database columns (a template is checked without a host): above them a save fails.
MAX_MEMORY_MB = 2**31 - 1
MAX_VCPUS = 32767
# More than any VM's boot devices (VAPOR_MAX_DISKS at most 256, plus two CD-ROMs).
MAX_BOOT_ORDER = 258
# The pc machine (the only one with IDE) has two IDE controllers of two devices each.
MAX_IDE_DISKS = 4
# PCI(e) devices a VM's disks and NICs may take: each virtio disk, each NIC, each SATA
# controller (6 drives) and each SCSI controller (7 drives). libvirt 9 places about 235
# on q35 beside Vapor's other devices (video, USB, virtio-serial, RNG, balloon), then
# refuses the definition ("a PCI slot is needed ... none is available").
MAX_PCI_DEVICES = 200
READONLY_BUSES = {"virtio", "scsi"}  # libvirt refuses read-only SATA and IDE disks


def vm_validate(*, request: VmRequest, hv: Hypervisor | None = None, register_isos: bool = False, actor: Actor = SYSTEM) -> VmPlan:
    """The plan for `request`; with a template, for the request completed by it.

    The project (named, the template's, or the actor's default) is decided and
    its pools and networks checked before the host is asked anything (without
    `hv`, a connection is opened only then)."""
    request, template = template_apply(request, actor=actor)
    check_shape(request)
    cloud_init_check(request.cloud_init)
    project = project_for_create(actor, request.project, fallback=template.project if template and not request.project else None)
    _check_project_resources(request, project)
    variant = osinfo.validate_os_variant(request.os_variant)
    if VirtualMachine.objects.filter(name=request.name).exists():
        raise Conflict(f"a VM named {request.name!r} already exists", field="name", code="name_taken")
    # Which host (issue 15): the one asked, else the best that fits; every check below asks that host.
    placement = place(request=request, project=project, hv=hv)
    hv = placement.hv
    if hv.domain_exists(request.name):
        raise Conflict(f"a domain named {request.name!r} already exists on the host", field="name", code="name_taken")
    virt_type = _virt_type(request, hv)
    _check_firmware(request, hv, virt_type)
    _check_host_size(request, hv)
    pool = _pool(request, hv)
    _check_networks(request, hv)
    disk_orders, cdrom_order = _boot_orders(request)
    disks = _plan_disks(request, hv, pool, disk_orders, host=placement.host)
    cdroms = _plan_cdroms(request, register_isos, cdrom_order)
    seed_dev = target_devs([d.bus for d in request.disks] + ["sata"] * (len(cdroms) + 1))[-1]  # the seed's CD-ROM: after the ISOs
    seed = cloud_init_plan(vm_name=request.name, cloud_init=request.cloud_init, hv=hv, pool=pool, target_dev=seed_dev, actor=actor)
    warnings = [*_boot_warnings(request, cdroms), *_pool_warnings(pool, disks)]
    return VmPlan(
        request=request,
        virt_type=virt_type,
        machine=_machine(request),
        os_type=request.os_type or (osinfo.os_type_for(variant) if variant else ""),
        os_id=osinfo.os_id_for(variant) if variant else "",
        pool=pool,
        disks=disks,
        cdroms=cdroms,
        nics=_plan_nics(request),
        cloud_init=seed,
        template=template,
        project=project,
        warnings=tuple(warnings),
        placement=placement,
    )


def host_fit(request: VmRequest, hv: Hypervisor, *, local: bool = True) -> None:
    """The request's checks that only ask the host, cheapest first, raising the first problem
    (the same errors as `vm_validate`'s): architecture, size, pool, networks and bridges, disk
    sources present. Placement runs it on each candidate host; it reads no database row."""
    _check_firmware(request, hv, _virt_type(request, hv))
    _check_host_size(request, hv)
    _pool(request, hv)
    _check_networks(request, hv)
    _check_sources_present(request, hv, local=local)


def _check_sources_present(request: VmRequest, hv: Hypervisor, *, local: bool) -> None:
    """Each existing disk and clone source is a file this host has: a volume of one of its pools
    (libvirt's storage API, so a remote host answers for itself), or, on a local host, a file inside
    its roots. The full checks (path guard, format, chain) run on the chosen host only."""
    roots: list[Path] | None = None
    for index, disk in enumerate(request.disks):
        raw = disk.path if disk.kind == "existing" else disk.clone_from if disk.kind == "clone" else None
        if raw is None:
            continue
        if hv.volume_by_path(raw) is not None:
            continue
        if local:
            roots = roots if roots is not None else disk_roots(hv)
            if os.path.isfile(raw) and is_inside(Path(os.path.realpath(raw)), roots):
                continue
        key = "path" if disk.kind == "existing" else "clone_from"
        raise NotFound(f"{raw} is not on this host (no volume of its pools has that path)", field=f"disks.{index}.{key}")


def boot_mismatch(boot_type: str, uefi: bool) -> str:
    """Why an install ISO of `boot_type` (IsoImage.boot_type) would not start this VM, in words; "" when it would.

    A warning, not a refusal: the boot type is read from the ISO's El Torito
    catalogue, and an operator may know better (a guest booted by other means).
    An ISO not inspected yet ("") is not judged.
    """
    if boot_type == BootType.NONE:
        return "is not bootable: the guest would stop at “No bootable device”"
    if boot_type == BootType.BIOS and uefi:
        return "boots with BIOS only, but UEFI is on: untick UEFI or pick a UEFI ISO"
    if boot_type == BootType.UEFI and not uefi:
        return "boots with UEFI only, but UEFI is off: tick UEFI or pick a BIOS ISO"
    return ""


def _boot_warnings(request: VmRequest, cdroms: tuple[PlannedCdrom, ...]) -> list[str]:
    """The install ISO (the primary CD-ROM, which boots) against the firmware; the driver ISO never boots."""
    warnings = []
    for cdrom in cdroms:
        mismatch = boot_mismatch(cdrom.iso.boot_type, request.uefi) if cdrom.slot == CdromSlot.PRIMARY else ""
        if mismatch:
            warnings.append(f"install ISO {cdrom.iso.name} {mismatch}")
    return warnings


def _pool_warnings(pool: PoolInfo, disks: tuple[PlannedDisk, ...]) -> list[str]:
    """New disks past the pool's free space (within VAPOR_POOL_OVERCOMMIT, or `check_pool_room` refused them).

    Every volume Vapor makes is thin (allocation 0, raw files sparse too), so
    this works until the guests write more than the pool has left.
    """
    asked = sum(d.capacity_bytes for d in disks if d.source != DiskSource.EXISTING)
    if pool.capacity <= 0 or asked <= pool.available:
        return []
    return [
        f"the new disks ({_gb(asked)}) are larger than pool {pool.name}'s free space ({_gb(pool.available)}): "
        "they are thin and fit now, but the guests fail to write once the pool is full"
    ]


def _check_project_resources(request: VmRequest, project: Project) -> None:
    """The pool and every NIC's network or bridge must be open to the project (400 naming the field)."""
    check_allowed(project, kind="pool", name=request.storage_pool, field="storage_pool")
    for index, nic in enumerate(request.networks):
        kind = "bridge" if nic.type == "bridge" else "network"
        check_allowed(project, kind=kind, name=nic.source, field=f"networks.{index}.source")


def check_shape(request: VmRequest) -> None:
    """Rules that need nothing but the request."""
    if not NAME_RE.match(request.name):
        raise InvalidInput("must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit", field="name")
    if request.memory < MIN_MEMORY_MB:
        raise InvalidInput(f"must be at least {MIN_MEMORY_MB} MB", field="memory")
    if request.memory > MAX_MEMORY_MB:
        raise InvalidInput(f"must be at most {MAX_MEMORY_MB} MB", field="memory")
    if request.vcpus < 1:
        raise InvalidInput("must be at least 1", field="vcpus")
    if request.vcpus > MAX_VCPUS:
        raise InvalidInput(f"must be at most {MAX_VCPUS}", field="vcpus")
    _check_maxima(request)
    check_counts(request)
    if request.secure_boot and not request.uefi:
        raise InvalidInput("Secure Boot needs UEFI: set uefi to true", field="secure_boot")
    graphics = request.graphics
    if graphics.port != -1 and not 5900 <= graphics.port <= 65535:
        raise InvalidInput("must be -1 (automatic) or 5900-65535", field="graphics.port")
    if graphics.password is not None:
        if graphics.type == "none":
            raise InvalidInput("a password needs graphics (vnc or spice)", field="graphics.password")
        if not 1 <= len(graphics.password) <= 8:
            raise InvalidInput("must be 1-8 characters (libvirt refuses longer VNC passwords)", field="graphics.password")
        if not graphics.password.isprintable():
            # Control characters cannot be carried by the domain XML; refused here, not when provisioning fails.
            raise InvalidInput("must hold printable characters only", field="graphics.password")
    seen: dict[int, int] = {}
    for index, disk in enumerate(request.disks):
        field = f"disks.{index}"
        check_disk_shape(disk, field=field, secure_boot=request.secure_boot)
        if disk.boot_order is not None:
            if disk.boot_order in seen:
                raise InvalidInput(
                    f"boot_order {disk.boot_order} is already used by disks.{seen[disk.boot_order]}", field=f"{field}.boot_order"
                )
            seen[disk.boot_order] = index


def sub_field(field: str, key: str) -> str:
    """`disks.0` + `size` -> `disks.0.size`; a request that is one disk (attach) has no prefix: `size`."""
    return f"{field}.{key}" if field else key


def check_disk_shape(disk: DiskRequest, *, field: str, secure_boot: bool) -> None:
    """One disk entry's own rules (creation's and attach's): what it names, sizes, read-only, linked, bus, boot order."""
    whole = field or None
    if disk.path is not None and (disk.size is not None or disk.clone_from is not None):
        raise InvalidInput("an existing disk (path) takes neither size nor clone_from", field=whole)
    if disk.path is None and disk.clone_from is None and disk.size is None:
        raise InvalidInput("give size (a new volume), path (an existing disk) or clone_from (a clone)", field=whole)
    if disk.size is not None and disk.size <= 0:
        raise InvalidInput("must be greater than 0 (GB)", field=sub_field(field, "size"))
    max_gb = settings.VAPOR.max_disk_gb
    if disk.size is not None and disk.size > max_gb:
        raise InvalidInput(f"must be at most {max_gb} GB (VAPOR_MAX_DISK_GB)", field=sub_field(field, "size"))
    if disk.readonly and disk.kind != "existing":
        raise InvalidInput("only existing disks (path) can be read-only", field=sub_field(field, "readonly"))
    if disk.readonly and disk.bus not in READONLY_BUSES:
        raise InvalidInput(
            f"a read-only disk needs bus virtio or scsi: libvirt refuses read-only {disk.bus} disks", field=sub_field(field, "bus")
        )
    if disk.linked and disk.kind != "clone":
        raise InvalidInput("linked only applies to clone_from", field=sub_field(field, "linked"))
    if disk.linked and disk.format != "qcow2":
        raise InvalidInput("a linked clone is a qcow2 overlay: format must be qcow2", field=sub_field(field, "format"))
    if disk.bus == "ide" and secure_boot:
        raise InvalidInput("Secure Boot needs the q35 machine, which has no IDE bus: use sata", field=sub_field(field, "bus"))
    if disk.boot_order is not None and not 1 <= disk.boot_order <= MAX_BOOT_ORDER:
        raise InvalidInput(f"must be 1-{MAX_BOOT_ORDER}", field=sub_field(field, "boot_order"))


def check_counts(request: VmRequest) -> None:
    """How many disks and NICs one VM may have (README, "Limits")."""
    max_disks = settings.VAPOR.max_disks
    if len(request.disks) > max_disks:
        raise InvalidInput(f"at most {max_disks} disks per VM (VAPOR_MAX_DISKS); {len(request.disks)} given", field="disks")
    ide = sum(1 for disk in request.disks if disk.bus == "ide")
    if ide > MAX_IDE_DISKS:
        raise InvalidInput(
            f"at most {MAX_IDE_DISKS} IDE disks (the pc machine has 2 IDE controllers of 2 devices); {ide} given", field="disks"
        )
    max_nics = settings.VAPOR.max_nics
    if len(request.networks) > max_nics:
        raise InvalidInput(
            f"at most {max_nics} network interfaces per VM (VAPOR_MAX_NICS); {len(request.networks)} given", field="networks"
        )
    _check_pci_devices(request)


def _check_pci_devices(request: VmRequest) -> None:
    """Disks per bus as the machine allows: virtio disks, SATA and SCSI controllers and
    NICs each take a PCI device, and a VM has at most MAX_PCI_DEVICES of them."""
    cdroms = len(_iso_refs(request)) + (1 if request.cloud_init is not None else 0)  # the cloud-init seed is one too
    buses = [d.bus for d in request.disks] + ["sata"] * cdroms  # CD-ROMs are SATA drives
    devs = target_devs(buses)
    virtio = buses.count("virtio")
    sata = controllers_needed("sata", [dev for bus, dev in zip(buses, devs, strict=True) if bus == "sata"])
    scsi = controllers_needed("scsi", [dev for bus, dev in zip(buses, devs, strict=True) if bus == "scsi"])
    disks = virtio + sata + scsi
    if disks + len(request.networks) <= MAX_PCI_DEVICES:
        return
    raise InvalidInput(
        f"at most {MAX_PCI_DEVICES} PCI devices for disks and NICs; this VM needs {disks + len(request.networks)}: "
        f"{virtio} virtio disks, {sata} SATA controllers (6 drives each, CD-ROMs included), "
        f"{scsi} SCSI controllers (7 drives each) and {len(request.networks)} NICs",
        field="disks" if disks > MAX_PCI_DEVICES or not request.networks else "networks",
    )


def _machine(request: VmRequest) -> str:
    """q35 unless a disk asks for IDE, which only the older `pc` machine has."""
    return "pc" if any(d.bus == "ide" for d in request.disks) else "q35"


def _check_maxima(request: VmRequest) -> None:
    """max_memory and max_vcpus (what they may grow to while the VM runs): at least memory and vcpus."""
    if request.max_memory is not None and not request.memory <= request.max_memory <= MAX_MEMORY_MB:
        raise InvalidInput(f"must be from memory ({request.memory}) to {MAX_MEMORY_MB} MB", field="max_memory")
    if request.max_vcpus is not None and not request.vcpus <= request.max_vcpus <= MAX_VCPUS:
        raise InvalidInput(f"must be from vcpus ({request.vcpus}) to {MAX_VCPUS}", field="max_vcpus")


def _virt_type(request: VmRequest, hv: Hypervisor) -> str:
    caps = hv.capabilities()
    offered = caps.arches.get(request.architecture)
    if not offered:
        raise InvalidInput(
            f"the host cannot run {request.architecture} guests (it offers {', '.join(sorted(caps.arches))})", field="architecture"
        )
    wanted = settings.VAPOR.virt_type
    virt_type = ("kvm" if "kvm" in offered else "qemu") if wanted == "auto" else wanted
    if virt_type not in offered:
        raise InvalidInput(f"VAPOR_VIRT_TYPE={wanted}, but the host offers {', '.join(offered)} for {request.architecture}")
    machine = _machine(request)
    maximum = hv.max_vcpus(request.architecture, virt_type, machine)
    if request.vcpus > maximum:
        raise InvalidInput(f"must be at most {maximum} (the hypervisor's limit for {machine}/{virt_type})", field="vcpus")
    if (request.max_vcpus or 0) > maximum:
        raise InvalidInput(f"must be at most {maximum} (the hypervisor's limit for {machine}/{virt_type})", field="max_vcpus")
    return virt_type


def _check_firmware(request: VmRequest, hv: Hypervisor, virt_type: str) -> None:
    """UEFI, Secure Boot and a TPM only where the host's QEMU offers them (a host that does not say is not judged)."""
    if not (request.uefi or request.secure_boot or request.tpm):
        return
    machine = _machine(request)
    offered = hv.firmware_support(request.architecture, virt_type, machine)
    where = f"for {request.architecture}/{machine} ({virt_type})"
    if request.uefi and offered.uefi is False:
        raise InvalidInput(f"the host offers no UEFI firmware {where}", field="uefi", code="not_offered")
    if request.secure_boot and offered.secure_boot is False:
        raise InvalidInput(f"the host offers no Secure Boot firmware {where}", field="secure_boot", code="not_offered")
    if request.tpm and offered.tpm is False:
        raise InvalidInput(f"the host offers no TPM device {where}", field="tpm", code="not_offered")


def _check_host_size(request: VmRequest, hv: Hypervisor) -> None:
    """Memory and vCPUs no more than the host's, times the overcommit ratio the operator allows."""
    host = hv.host_resources()
    host_mb = host.memory_bytes // 2**20
    ratio = settings.VAPOR.memory_overcommit
    if max(request.memory, request.max_memory or 0) > int(host_mb * ratio):
        raise InvalidInput(
            f"must be at most {int(host_mb * ratio)} MB: the host has {host_mb} MB, overcommit ratio {ratio:g} (VAPOR_MEMORY_OVERCOMMIT)",
            field="memory" if request.memory > int(host_mb * ratio) else "max_memory",
        )
    ratio = settings.VAPOR.cpu_overcommit
    if max(request.vcpus, request.max_vcpus or 0) > int(host.cpus * ratio):
        raise InvalidInput(
            f"must be at most {int(host.cpus * ratio)}: the host has {host.cpus} CPUs, overcommit ratio {ratio:g} (VAPOR_CPU_OVERCOMMIT)",
            field="vcpus" if request.vcpus > int(host.cpus * ratio) else "max_vcpus",
        )


def _pool(request: VmRequest, hv: Hypervisor) -> PoolInfo:
    try:
        pool = hv.pool(request.storage_pool)
    except NotFound:
        raise NotFound(f"storage pool {request.storage_pool!r} does not exist", field="storage_pool") from None
    if not pool.active:
        raise NotFound(f"storage pool {request.storage_pool!r} is not active", field="storage_pool")
    return pool


def _check_networks(request: VmRequest, hv: Hypervisor) -> None:
    for index, nic in enumerate(request.networks):
        if nic.type == "nat" and not hv.network_exists(nic.source):
            raise NotFound(f"libvirt network {nic.source!r} does not exist", field=f"networks.{index}.source")
        if nic.type == "bridge" and not hv.bridge_exists(nic.source):
            raise NotFound(f"host bridge {nic.source!r} does not exist", field=f"networks.{index}.source")


def disk_roots(hv: Hypervisor) -> list[Path]:
    """Where existing disks and clone sources may live: every directory pool plus VAPOR_DISK_ROOTS."""
    roots = [Path(path) for path in hv.pool_paths().values()]
    return roots + [root for root in settings.VAPOR.disk_roots if root not in roots]


@dataclass(frozen=True)
class CheckedSource:
    """An existing disk's or a clone's source once checked, and its whole chain as checked (`chain_record`)."""

    path: str
    format: str
    capacity: int
    chain: list[dict[str, str | None]] | None


def remote_host(hv: Hypervisor, host: Host | None = None) -> Hypervisor | None:
    """`hv` when it drives a remote host (`host`, else the default host), whose files are checked through its
    libvirt (`vms.services.remote_images`); None for the portal's own host, whose files are opened here."""
    host = host or Host.objects.filter(name=DEFAULT_HOST).first()
    return hv if host is not None and not host_is_local(host) else None


def disk_source(disk: DiskRequest, field: str, roots: list[Path], *, remote: Hypervisor | None = None) -> CheckedSource:
    """An existing disk's or a clone's source, checked, with its capacity in bytes.

    A clone given a size is grown to it; smaller than its source is refused.
    A new volume has no source: path and format "", its size, no chain.
    `remote`: the source is on that remote host, checked through its libvirt.
    """
    if disk.kind == "new":
        return CheckedSource("", "", (disk.size or 0) * GIB, None)
    raw = disk.path if disk.kind == "existing" else disk.clone_from
    source_format = disk.source_format or (disk.format if disk.kind == "existing" else "qcow2")
    key = "path" if disk.kind == "existing" else "clone_from"
    resolved, info = _inspect_source(str(raw), source_format, sub_field(field, key), roots, remote=remote)
    capacity = info.virtual_size
    if disk.size is not None:
        if disk.size * GIB < capacity:
            raise InvalidInput(
                f"{disk.size} GB is smaller than the clone source ({_gb(capacity)}); a cloned disk can only grow",
                field=sub_field(field, "size"),
            )
        capacity = disk.size * GIB
    return CheckedSource(str(resolved), source_format, capacity, chain_record(info))


def source_recheck(disk: Disk, hv: Hypervisor) -> None:
    """The worker's check of an existing disk's or a clone's source, just before it is used.

    The request's check is minutes old by the time a worker clones or defines,
    and a guest that writes a raw disk can rewrite its first bytes into a
    qcow2 header naming any file in between. So the same rules run again
    (regular files inside the roots, recorded formats, no protocol names,
    data files inside the roots, an undamaged qcow2), and the chain must be
    the one the request checked: the domain states that chain to libvirt,
    and a clone copies what the chain holds. InvalidInput (code
    `chain_changed` for a changed chain) names the disk's field.

    What is left between this check and the copy is closed by QEMU's image
    locks: a guest can only rewrite its disk while it runs, and the copy
    (`qemu-img convert` without `-U`, or libvirt's own) is refused on an
    image a running guest holds for writing.
    """
    key = "path" if disk.source == DiskSource.EXISTING else "clone_from"
    field = f"disks.{disk.order}.{key}"
    remote = remote_host(hv, disk.vm.host)
    _, info = _inspect_source(disk.source_path, disk.source_format, field, [] if remote else disk_roots(hv), remote=remote)
    found = chain_record(info)
    if disk.source_chain is not None and found != disk.source_chain:
        raise InvalidInput(
            f"the backing chain of {disk.source_path} changed since the request was checked: "
            f"it was {_chain_words(disk.source_chain)}, it is now {_chain_words(found)}",
            field=field,
            code="chain_changed",
        )


def _chain_words(chain: list[dict[str, str | None]]) -> str:
    words = []
    for link in chain:
        word = f"{link['path']} ({link['format']})"
        words.append(f"{word} with the data file {link['data_file']}" if link.get("data_file") else word)
    return " -> ".join(words)


def _gb(size: int) -> str:
    return f"{size // GIB} GB" if size % GIB == 0 else f"{size / GIB:.2f} GB"


def _inspect_source(raw: str, fmt: str, field: str, roots: list[Path], *, remote: Hypervisor | None = None) -> tuple[Path, ImageInfo]:
    """The image `raw` as `fmt`, checked: on the portal's own host by opening it (path guard, qemu-img info of
    the chain inside `roots`, qemu-img check); on a `remote` host through its libvirt (`remote_images`)."""
    try:
        if remote is not None:
            path, info = inspect_remote_source(raw, fmt, field, remote)
            return Path(path), info
        absolute_path(raw, field=field, note=" (protocol names such as json: or nbd: are refused)")
        resolved = guard_file(raw, roots=roots, field=field, what="disk image")
        # With the roots given, each backing file is checked before qemu-img opens it.
        info = image_info(str(resolved), fmt, roots=roots, field=field)
    except InvalidInput as exc:
        if "is not in" not in exc.message:  # qemu-img: "Image is not in qcow2 format"
            raise
        hint = "format" if field.endswith(".path") else "source_format"
        raise InvalidInput(f"{exc.message}: set {hint} to the image's real format", field=field, code=exc.code) from None
    check_image_chain(info, roots, field=field)
    check_image(info, field=field)  # after the chain is known to stay inside the roots: check opens it all
    return resolved, info


class HostUses:
    """The host's disk uses (`hv.disk_uses()`), read once, when an existing disk first needs them."""

    def __init__(self, hv: Hypervisor) -> None:
        self._hv = hv
        self._uses: list[DiskUse] | None = None

    def __call__(self) -> list[DiskUse]:
        if self._uses is None:
            self._uses = self._hv.disk_uses()
        return self._uses


def _plan_disks(
    request: VmRequest, hv: Hypervisor, pool: PoolInfo, orders: list[int | None], *, host: Host | None = None
) -> tuple[PlannedDisk, ...]:
    remote = remote_host(hv, host)
    roots = [] if remote else disk_roots(hv)
    if any(d.kind != "existing" for d in request.disks):
        check_pool_not_iso_dir(pool)
    targets = target_devs([d.bus for d in request.disks])  # CD-ROMs take the next sdX after these
    host_uses = HostUses(hv)
    planned = [
        plan_disk(
            disk,
            order=index,
            field=f"disks.{index}",
            vm_name=request.name,
            pool=pool,
            hv=hv,
            roots=roots,
            target_dev=targets[index],
            boot_order=orders[index],
            host_uses=host_uses,
            remote=remote,
        )
        for index, disk in enumerate(request.disks)
    ]
    check_pool_room(pool, planned, lambda d: f"disks.{d.order}.{'size' if request.disks[d.order].size is not None else 'clone_from'}")
    return tuple(planned)


def plan_disk(
    disk: DiskRequest,
    *,
    order: int,
    field: str,
    vm_name: str,
    pool: PoolInfo,
    hv: Hypervisor,
    roots: list[Path],
    target_dev: str,
    boot_order: int | None,
    host_uses: HostUses,
    remote: Hypervisor | None = None,
) -> PlannedDisk:
    """One disk of a VM, checked against the library and the host (creation's and attach's rules):
    the source's path guard and chain, the shared-writer rules, the new volume's free name.
    `remote`: the VM's host is remote (`remote_host`): its files are checked through its libvirt."""
    checked = disk_source(disk, field, roots, remote=remote)
    source_path, source_format, capacity = checked.path, checked.format, checked.capacity
    if disk.kind == "existing":
        path_field = sub_field(field, "path")
        _check_not_shared(source_path, disk.readonly, path_field)
        _check_not_owned(source_path, disk.readonly, path_field)
        if remote is None:  # the ISO directories are the portal's: a remote host's files are never in them
            _check_not_in_iso_dir(source_path, disk.readonly, path_field)
        _check_not_used_on_host(source_path, disk.readonly, path_field, host_uses(), remote is None)
        volume_name, path = "", source_path
    else:
        volume_name = f"{vm_name}-disk{order}.{'qcow2' if disk.format == 'qcow2' else 'img'}"
        path = str(Path(pool.path) / volume_name)
        # libvirt lists a file put in the pool's directory only after a refresh: look at both.
        if volume_exists(hv, pool.name, volume_name) or (remote is None and os.path.lexists(path)):
            raise Conflict(f"volume {volume_name} already exists in pool {pool.name}", field=field or None, code="volume_exists")
    return PlannedDisk(
        order=order,
        source=disk.kind,
        size_gb=disk.size,
        capacity_bytes=capacity,
        format=source_format if disk.kind == "existing" else disk.format,
        bus=disk.bus,
        boot_order=boot_order,
        readonly=disk.readonly,
        linked=disk.linked,
        source_path=source_path,
        source_format=source_format,
        path=path,
        volume_name=volume_name,
        target_dev=target_dev,
        source_chain=checked.chain,
    )


def check_pool_room(pool: PoolInfo, planned: list[PlannedDisk], field_of: Callable[[PlannedDisk], str], *, extra: int = 0) -> None:
    """The disks a request puts in its pool (new volumes and clones, at their virtual
    size) must fit in what the pool has free plus (VAPOR_POOL_OVERCOMMIT - 1) times its
    capacity: thin images may promise more than the disk holds, up to that ratio (below
    1, the ratio keeps part of the pool free instead). A pool that reports no capacity
    is not checked. `extra`: bytes asked besides the disks (a disk grown)."""
    if pool.capacity <= 0:
        return
    ratio = settings.VAPOR.pool_overcommit
    room = pool.available + round(pool.capacity * (ratio - 1))
    asked = extra
    for disk in planned:
        if disk.source == DiskSource.EXISTING:
            continue
        asked += disk.capacity_bytes
        if asked > room:
            raise pool_too_small(pool, asked, room, field_of(disk))


def pool_too_small(pool: PoolInfo, asked: int, room: int, field: str) -> InvalidInput:
    ratio = settings.VAPOR.pool_overcommit
    return InvalidInput(
        f"the new disks need {_gb(asked)}, more than pool {pool.name} may take: {_gb(max(room, 0))} "
        f"(free {_gb(pool.available)} + capacity {_gb(pool.capacity)} x ({ratio:g} - 1), VAPOR_POOL_OVERCOMMIT)",
        field=field,
        code="pool_too_small",
    )


def pool_room(pool: PoolInfo) -> int | None:
    """Bytes the pool may still take (see check_pool_room); None when it reports no capacity."""
    if pool.capacity <= 0:
        return None
    return pool.available + round(pool.capacity * (settings.VAPOR.pool_overcommit - 1))


def _check_not_shared(path: str, readonly: bool, field: str) -> None:
    """Two VMs writing one image corrupt it: refuse unless both only read it.

    Every stored VM holds its disks until it is deleted, a failed or departing
    one too (its domain may still be defined): the database's constraint
    `disk_writable_path_unique` holds the same rule for two writers racing.
    """
    users = Disk.objects.filter(path=path)
    if readonly:
        users = users.filter(readonly=False)
    holders = sorted(set(users.values_list("vm__name", "vm__status")))
    if holders:
        raise Conflict(disk_in_use_message(path, holders), field=field, code="disk_in_use")


def disk_in_use_message(path: str, holders: list[tuple[str, str]]) -> str:
    names = [
        name if status not in (VmStatus.FAILED, VmStatus.DELETING) else f"{name} ({status}; delete it to free the disk)"
        for name, status in holders
    ]
    return f"{path} is already attached to {', '.join(names)}"


def _check_not_in_iso_dir(path: str, readonly: bool, field: str) -> None:
    """ISO directories are never a writable disk's location, even inside a disk root:
    a guest writing there could rewrite an installer the library hands to others."""
    if readonly:
        return
    for root in real_roots(settings.VAPOR.allowed_iso_roots):
        if is_inside(Path(path), [root]):
            raise InvalidInput(
                f"{path} is in the ISO directory {root}, which is never a writable disk's location; attach it read-only",
                field=field,
                code="path_in_iso_dir",
            )


def check_pool_not_iso_dir(pool: PoolInfo) -> None:
    """New volumes and clones are written into the pool's directory: never an ISO directory."""
    if pool.path and is_inside(Path(os.path.realpath(pool.path)), settings.VAPOR.allowed_iso_roots):
        raise InvalidInput(
            f"pool {pool.name} is in an ISO directory ({pool.path}), which is never a writable disk's location; choose another pool",
            field="storage_pool",
            code="path_in_iso_dir",
        )


def _check_not_used_on_host(path: str, readonly: bool, field: str, uses: list[DiskUse], resolve: bool = True) -> None:
    """A file a domain on the host uses, Vapor's or not (one defined with virsh, say).

    Refused when either side would write it: a writable attachment of any
    file a domain uses (its disk, CD-ROM or a backing file of its disks), or
    a read-only attachment of a file a domain writes. Two readers may share.
    """
    writers, readers, backing = set(), set(), set()
    for use in uses:
        # Symlinks are resolved on the portal's own host; a remote host's paths are compared as libvirt states them.
        if (os.path.realpath(use.path) if resolve else use.path) != path:
            continue
        if use.backing:
            backing.add(use.domain)
        elif use.readonly:
            readers.add(use.domain)
        else:
            writers.add(use.domain)
    if writers:
        raise Conflict(f"{path} is a writable disk of domain {', '.join(sorted(writers))} on the host", field=field, code="disk_in_use")
    if readonly:
        return
    if readers:
        raise Conflict(
            f"{path} is a read-only disk of domain {', '.join(sorted(readers))} on the host; attach it read-only",
            field=field,
            code="disk_in_use",
        )
    if backing:
        raise Conflict(
            f"{path} is the backing file of a disk of domain {', '.join(sorted(backing))} on the host; attach it read-only",
            field=field,
            code="disk_owned",
        )


def _check_not_owned(path: str, readonly: bool, field: str) -> None:
    """A file that others only read is theirs: a library ISO, a template's base,
    the backing file of a linked clone. Writing it would corrupt them all, so
    it may be attached read-only only. `path` is resolved (symlinks followed)."""
    if readonly:
        return
    iso = IsoImage.objects.filter(path=path).first()
    if iso is not None:
        raise Conflict(f"{path} is the library ISO {iso.name} (id {iso.id}); attach it read-only", field=field, code="disk_owned")
    # Template paths are stored as typed: compare them resolved.
    templates = sorted(
        {
            td.template.name
            for td in TemplateDisk.objects.exclude(clone_from="").select_related("template")
            if os.path.realpath(td.clone_from) == path
        }
    )
    if templates:
        raise Conflict(f"{path} is the base image of template {', '.join(templates)}; attach it read-only", field=field, code="disk_owned")
    clones = (
        Disk.objects.filter(source=DiskSource.CLONE, linked=True, source_path=path)
        .exclude(vm__status__in=[VmStatus.FAILED, VmStatus.DELETING])
        .values_list("vm__name", flat=True)
    )
    names = sorted(set(clones))
    if names:
        raise Conflict(f"{path} is the backing file of a disk of {', '.join(names)}; attach it read-only", field=field, code="disk_owned")


def _iso_refs(request: VmRequest) -> list[tuple[str, str, str]]:
    refs = [(CdromSlot.PRIMARY.value, "iso_path", request.iso_path), (CdromSlot.SECONDARY.value, "secondary_iso", request.secondary_iso)]
    return [(slot, field, ref) for slot, field, ref in refs if ref]


def _boot_orders(request: VmRequest) -> tuple[list[int | None], int]:
    """Each disk's boot order, and the primary CD-ROM's (after the disks).

    Explicit orders are kept. With none given, the first disk boots first:
    an empty new disk falls through to the CD-ROM, an installed one boots.
    """
    orders: list[int | None] = [d.boot_order for d in request.disks]
    if request.disks and all(o is None for o in orders):
        orders[0] = 1
    used = [o for o in orders if o is not None]
    return orders, (max(used) + 1) if used else 1


def _plan_cdroms(request: VmRequest, register: bool, cdrom_order: int) -> tuple[PlannedCdrom, ...]:
    refs = _iso_refs(request)
    # CD-ROMs are on SATA and take the sdX letters after the disks'.
    targets = target_devs([d.bus for d in request.disks] + ["sata"] * len(refs))[len(request.disks) :]
    planned: list[PlannedCdrom] = []
    for (slot, field, ref), target in zip(refs, targets, strict=True):
        resolved = iso_resolve(ref, field=field, register=register)
        if planned and resolved.iso.path == planned[0].iso.path:
            # Before the readiness check: a file the primary reference has just registered
            # is "hashing" when the secondary finds it, which would hide the real mistake.
            raise InvalidInput("secondary_iso is the same file as iso_path", field="secondary_iso")
        require_ready(resolved, field=field)
        planned.append(
            PlannedCdrom(
                slot=slot,
                iso=resolved.iso,
                rule=resolved.rule,
                reference=ref,
                registered=resolved.registered,
                target_dev=target,
                boot_order=cdrom_order if slot == CdromSlot.PRIMARY else None,
            )
        )
    return tuple(planned)


def _plan_nics(request: VmRequest) -> tuple[PlannedNic, ...]:
    macs: set[str] = set()
    nics = []
    for index, nic in enumerate(request.networks):
        mac = _new_mac(macs)
        macs.add(mac)
        nics.append(PlannedNic(order=index, type=nic.type, source=nic.source, model=nic.model, mac=mac))
    return tuple(nics)


def _new_mac(taken: set[str]) -> str:
    """A random MAC in QEMU's 52:54:00 range that no Vapor NIC has."""
    while True:
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in taken and not NetworkInterface.objects.filter(mac=mac).exists():
            return mac
