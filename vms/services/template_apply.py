"""A create request completed by its template.

The template supplies every field the request does not give; anything the
request gives wins. Disks merge by position: ``disks[i]`` overrides template
disk ``i`` field by field, extra request disks are added after the
template's. A size given for a template disk that is a clone grows the clone
(the validation refuses shrinking); naming another source (``path`` or
``clone_from``) replaces the template disk's source.
"""

from __future__ import annotations

from dataclasses import fields, replace

from projects.access import SYSTEM, Actor, in_visible_projects
from vaporsite.errors import NotFound
from vms.models import VmTemplate
from vms.services.cloud_init import cloud_init_merge, template_cloud_init
from vms.services.requests import DiskRequest, NicRequest, VmRequest

# Fields of VmRequest a template supplies (name, autostart, secondary_iso and
# the template itself always come from the request).
TEMPLATE_FIELDS = ("memory", "vcpus", "os_type", "os_variant", "architecture", "uefi", "secure_boot", "tpm", "storage_pool")
TEMPLATE_FIELDS += ("max_memory", "max_vcpus")  # type: ignore[assignment]  # hardware: a maximum below the request's own value is left out
DISK_FIELDS = tuple(f.name for f in fields(DiskRequest) if f.name != "given")


def template_get(name: str, *, field: str = "template", actor: Actor = SYSTEM) -> VmTemplate:
    """The template `name` among those `actor` may see (404 otherwise, naming a few it may)."""
    mine = in_visible_projects(VmTemplate.objects.all(), actor)
    template = mine.select_related("iso", "project").prefetch_related("disks", "nics").filter(name=name).first()
    if template is None:
        known = list(mine.order_by("name").values_list("name", flat=True)[:10])
        hint = f" (templates: {', '.join(known)})" if known else " (no templates are defined)"
        raise NotFound(f"template {name!r} does not exist{hint}", field=field, code="template_not_found")
    return template


def template_disks(template: VmTemplate) -> tuple[DiskRequest, ...]:
    return tuple(
        DiskRequest(
            size=d.size_gb,
            clone_from=d.clone_from or None,
            source_format=d.source_format or None,
            linked=d.linked,
            format=d.format,
            bus=d.bus,
            boot_order=d.boot_order,
        )
        for d in template.disks.all()
    )


def template_nics(template: VmTemplate) -> tuple[NicRequest, ...]:
    return tuple(NicRequest(type=n.type, source=n.source, model=n.model) for n in template.nics.all())


def merge_disk(base: DiskRequest, override: DiskRequest) -> DiskRequest:
    """Template disk `base` with the fields `override` gives."""
    given = override.given if override.given is not None else frozenset(DISK_FIELDS)
    changes = {name: getattr(override, name) for name in DISK_FIELDS if name in given}
    if "path" in changes or "clone_from" in changes:
        # Another source: nothing of the template's source carries over.
        for name in ("size", "path", "clone_from", "source_format", "linked"):
            changes.setdefault(name, getattr(DiskRequest, name))
    return replace(base, **changes, given=None)


def template_apply(request: VmRequest, *, actor: Actor = SYSTEM) -> tuple[VmRequest, VmTemplate | None]:
    """The request completed by its template (and the template), or unchanged without one."""
    if not request.template:
        return request, None
    template = template_get(request.template, actor=actor)
    if request.given is None:
        # The caller already applied the template and spelled everything out (the admin's form), but for cloud-init.
        return replace(request, cloud_init=cloud_init_merge(template_cloud_init(template), request.cloud_init)), template
    given = request.given
    values = {
        "memory": template.memory_mb,
        "vcpus": template.vcpus,
        "max_memory": _maximum(template.max_memory_mb, request.memory if "memory" in given else template.memory_mb),
        "max_vcpus": _maximum(template.max_vcpus, request.vcpus if "vcpus" in given else template.vcpus),
        "os_type": template.os_type,
        "os_variant": template.os_variant,
        "architecture": template.architecture,
        "uefi": template.uefi,
        "secure_boot": template.secure_boot,
        "tpm": template.tpm,
        "storage_pool": template.storage_pool or request.storage_pool,
    }
    changes: dict[str, object] = {name: values[name] for name in TEMPLATE_FIELDS if name not in given}
    base_disks = template_disks(template)
    overrides = request.disks if "disks" in given else ()
    changes["disks"] = tuple(
        merge_disk(base_disks[i], overrides[i]) if i < len(overrides) and i < len(base_disks)
        else overrides[i] if i < len(overrides)
        else base_disks[i]
        for i in range(max(len(base_disks), len(overrides)))
    )  # fmt: skip
    if "networks" not in given:
        changes["networks"] = template_nics(template) or request.networks
    if "iso_path" not in given and template.iso_id:
        changes["iso_path"] = template.iso_id
    changes["cloud_init"] = cloud_init_merge(template_cloud_init(template), request.cloud_init)  # field by field
    graphics_given = request.graphics.given if "graphics" in given else frozenset()
    if graphics_given is not None and "type" not in graphics_given:
        changes["graphics"] = replace(request.graphics, type=template.graphics_type)
    return replace(request, **changes, given=None), template  # type: ignore[arg-type]


def _maximum(template_maximum: int | None, value: int) -> int | None:
    """The template's maximum for a VM of `value`, unless the request asked for more than it (then none: the value)."""
    return template_maximum if template_maximum is not None and template_maximum >= value else None
