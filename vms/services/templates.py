"""VM templates: create, change, delete, and their portable form.

A template is checked with the same rules as a create request (it is turned
into one: `template_request`), so anything a template holds is something a
VM can be made from: the OS variant is known to osinfo-db, Secure Boot has
UEFI, every clone source is an image inside the disk roots whose backing
chain stays inside them, and a size given with a clone is not smaller than
the source. Networks and the storage pool are checked when a VM is created,
since a template may be written before the host has them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.utils import timezone

from guestos import osinfo
from isos.models import IsoImage
from isos.resolve import iso_resolve
from projects.access import SYSTEM, Actor, audit, project_for_create, require
from projects.choices import Role
from vaporsite.errors import Conflict, InvalidInput
from vms import hypervisor
from vms.choices import LIVE_STATUSES
from vms.hypervisor import Hypervisor
from vms.models import TemplateDisk, TemplateNic, VmTemplate
from vms.services.cloud_init import cloud_init_check, template_cloud_init, template_cloud_init_store
from vms.services.requests import CloudInitRequest, DiskRequest, GraphicsRequest, NicRequest, VmRequest
from vms.services.template_apply import template_disks, template_nics
from vms.services.validation import check_shape, disk_roots, disk_source

log = logging.getLogger("vapor.vms")


@dataclass(frozen=True)
class TemplateData:
    """A template as the API, the admin and the import file give it."""

    name: str
    description: str = ""
    memory: int = 2048
    vcpus: int = 2
    max_memory: int | None = None  # MB the memory of its VMs may grow to while they run (None: memory)
    max_vcpus: int | None = None
    os_type: str = ""
    os_variant: str = ""
    architecture: str = "x86_64"
    uefi: bool = False
    secure_boot: bool = False
    tpm: bool = False
    graphics_type: str = "vnc"
    storage_pool: str = ""
    iso: str | None = None  # an ISO reference: id, name, path or file name
    disks: tuple[DiskRequest, ...] = ()  # size and/or clone_from; never path or readonly
    networks: tuple[NicRequest, ...] = field(default_factory=tuple)
    project: str | None = None  # a project's name; None: the caller's default (a change keeps the template's)
    cloud_init: CloudInitRequest | None = None  # defaults a create request overrides field by field


def template_request(data: TemplateData) -> VmRequest:
    """The create request a template stands for (its rules are the request's)."""
    return VmRequest(
        name=data.name,
        memory=data.memory,
        vcpus=data.vcpus,
        max_memory=data.max_memory,
        max_vcpus=data.max_vcpus,
        disks=data.disks,
        os_type=data.os_type,
        os_variant=data.os_variant,
        architecture=data.architecture,
        uefi=data.uefi,
        secure_boot=data.secure_boot,
        tpm=data.tpm,
        networks=data.networks,
        graphics=GraphicsRequest(type=data.graphics_type),
        storage_pool=data.storage_pool or "default",
    )


def template_validate(data: TemplateData, *, hv: Hypervisor | None = None, register: bool = False) -> IsoImage | None:
    """Check `data`; its ISO, if it names one. Raises the first problem, naming the field.

    An ISO named by a path or file name the library does not hold yet is
    registered with `register` (as create-enhanced does), else returned unsaved.
    """
    request = template_request(data)
    check_shape(request)
    cloud_init_check(data.cloud_init)
    osinfo.validate_os_variant(data.os_variant)
    for index, disk in enumerate(request.disks):
        if disk.path is not None or disk.readonly:
            raise InvalidInput("a template disk is a new volume (size) or a clone (clone_from), not a shared file", field=f"disks.{index}")
    iso = iso_resolve(data.iso, field="iso", register=register).iso if data.iso else None
    if any(d.clone_from for d in data.disks):
        roots = disk_roots(hv or hypervisor.get_hypervisor())
        for index, disk in enumerate(request.disks):
            if disk.kind == "clone":
                disk_source(disk, f"disks.{index}", roots)
    return iso


def template_create(*, data: TemplateData, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> VmTemplate:
    try:
        with transaction.atomic():  # an ISO registered on the way goes if anything fails
            project = project_for_create(actor, data.project)
            iso = template_validate(data, hv=hv, register=True)
            template = VmTemplate.objects.create(name=data.name, iso=iso, project=project, **_columns(data))
            _store_rows(template, data)
            template_cloud_init_store(template=template, cloud_init=data.cloud_init)
            audit(actor, "template.create", target=f"template {template.name}", project=project)
    except IntegrityError:
        raise Conflict(f"a template named {data.name!r} already exists", field="name", code="name_taken") from None
    log.info("template %s created", template.name)
    return template


def template_update(*, template: VmTemplate, data: TemplateData, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> VmTemplate:
    """Replace the template's values, disks and networks with `data`'s (and move it to `data.project` if
    that names another project, where the actor must be an operator too).

    VMs made from it keep what they were made with: a template is only read
    when a VM is created.
    """
    require(actor, template.project, Role.OPERATOR, f"template {template.name}")
    try:
        with transaction.atomic():
            project = template.project
            if data.project and data.project != project.name:
                project = project_for_create(actor, data.project)
            iso = template_validate(data, hv=hv, register=True)
            VmTemplate.objects.filter(pk=template.pk).update(
                name=data.name, iso=iso, project=project, updated_at=timezone.now(), **_columns(data)
            )
            template.disks.all().delete()
            template.nics.all().delete()
            _store_rows(template, data)
            template_cloud_init_store(template=template, cloud_init=data.cloud_init)
            moved = f"moved from project {template.project.name}" if project != template.project else ""
            audit(actor, "template.update", target=f"template {data.name}", project=project, detail=moved)
    except IntegrityError:
        raise Conflict(f"a template named {data.name!r} already exists", field="name", code="name_taken") from None
    template.refresh_from_db()
    log.info("template %s updated", template.name)
    return template


def template_delete(*, template: VmTemplate, actor: Actor = SYSTEM) -> None:
    """Delete it; 409 while a VM made from it exists (failed VMs are history and only lose the link)."""
    require(actor, template.project, Role.OPERATOR, f"template {template.name}")
    users = sorted(template.vms.filter(status__in=LIVE_STATUSES).values_list("name", flat=True))
    if users:
        raise Conflict(
            f"template {template.name} is used by {len(users)} VM(s): {', '.join(users)}; delete them first",
            code="template_in_use",
            vms=users,
        )
    with transaction.atomic():
        audit(actor, "template.delete", target=f"template {template.name}", project=template.project)
        template.delete()  # history (failed VMs) keeps its rows: the link is set to NULL
    log.info("template %s deleted", template.name)


def template_data(template: VmTemplate) -> TemplateData:
    """The template in its portable form (for PATCH, export and the admin's pre-filled form)."""
    return TemplateData(
        name=template.name,
        description=template.description,
        memory=template.memory_mb,
        vcpus=template.vcpus,
        max_memory=template.max_memory_mb,
        max_vcpus=template.max_vcpus,
        os_type=template.os_type,
        os_variant=template.os_variant,
        architecture=template.architecture,
        uefi=template.uefi,
        secure_boot=template.secure_boot,
        tpm=template.tpm,
        graphics_type=template.graphics_type,
        storage_pool=template.storage_pool,
        iso=template.iso.name if template.iso else None,
        disks=template_disks(template),
        networks=template_nics(template),
        project=template.project.name,
        cloud_init=template_cloud_init(template),
    )


def stored_os_type(data: TemplateData) -> str:
    """The OS type a template is stored with: the one given, else the variant's."""
    return data.os_type or (osinfo.os_type_for(data.os_variant) if data.os_variant else "")


def _columns(data: TemplateData) -> dict[str, object]:
    return {
        "description": data.description,
        "memory_mb": data.memory,
        "vcpus": data.vcpus,
        "max_memory_mb": data.max_memory,
        "max_vcpus": data.max_vcpus,
        "os_type": stored_os_type(data),
        "os_variant": data.os_variant,
        "architecture": data.architecture,
        "uefi": data.uefi,
        "secure_boot": data.secure_boot,
        "tpm": data.tpm,
        "graphics_type": data.graphics_type,
        "storage_pool": data.storage_pool,
    }


def _store_rows(template: VmTemplate, data: TemplateData) -> None:
    TemplateDisk.objects.bulk_create(
        TemplateDisk(
            template=template,
            order=index,
            size_gb=d.size,
            clone_from=d.clone_from or "",
            source_format=d.source_format or "",
            linked=d.linked,
            format=d.format,
            bus=d.bus,
            boot_order=d.boot_order,
        )
        for index, d in enumerate(data.disks)
    )
    TemplateNic.objects.bulk_create(
        TemplateNic(template=template, order=index, type=n.type, source=n.source, model=n.model) for index, n in enumerate(data.networks)
    )
