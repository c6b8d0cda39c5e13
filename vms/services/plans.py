"""What `vm_validate` hands to `vm_create`: a checked request with every
disk, CD-ROM and NIC decided (paths, target devices, MACs, boot orders)."""

from __future__ import annotations

from dataclasses import dataclass

from isos.models import IsoImage
from projects.models import Project
from vms.hypervisor import PoolInfo
from vms.models import VmTemplate
from vms.services.cloud_init import PlannedCloudInit
from vms.services.placement import Placement
from vms.services.requests import VmRequest


@dataclass(frozen=True)
class PlannedDisk:
    order: int
    source: str  # new | existing | clone
    size_gb: int | None
    capacity_bytes: int
    format: str
    bus: str
    boot_order: int | None
    readonly: bool
    linked: bool
    source_path: str
    source_format: str
    path: str
    volume_name: str
    target_dev: str
    source_chain: list[dict[str, str | None]] | None = None  # the source's chain as checked (images.chain_record)


@dataclass(frozen=True)
class PlannedCdrom:
    slot: str
    iso: IsoImage
    rule: str
    reference: str
    registered: bool
    target_dev: str
    boot_order: int | None


@dataclass(frozen=True)
class PlannedNic:
    order: int
    type: str
    source: str
    model: str
    mac: str


@dataclass(frozen=True)
class VmPlan:
    request: VmRequest
    virt_type: str
    machine: str
    os_type: str
    os_id: str
    pool: PoolInfo
    disks: tuple[PlannedDisk, ...]
    cdroms: tuple[PlannedCdrom, ...]
    nics: tuple[PlannedNic, ...]
    template: VmTemplate | None = None
    project: Project | None = None  # None only for plans made outside a create (tests of the designer)
    cloud_init: PlannedCloudInit | None = None  # the NoCloud seed to build (vms.services.cloud_init)
    warnings: tuple[str, ...] = ()  # allowed but worth a second look (an ISO that will not boot, a pool overcommitted)
    placement: Placement | None = None  # the host chosen (issue 15) and why the others were not; None only outside a create
