"""factory-boy factories for the rows tests build by hand (users, ISOs, VMs, templates).

They write rows straight to the database, past the services: use them to set
up the state a test reads (lists, pages, the dashboard, sync), not to test how
a row comes to be. Defaults are plain and valid; a test names what it checks.

    UserFactory.create(permissions=["view_isoimage"])          # codenames, or Permission rows
    UserFactory.create(apps=["vms", "isos"])                   # every permission of those apps
    AdminFactory.create()                                      # a superuser
    VirtualMachineFactory.create(disks=2, nics=1, cdrom=iso)   # with its devices
    VmTemplateFactory.create(disks=1, nics=1, disks__size_gb=40)

Call `create()` rather than the class itself: it is typed as returning the
model, so mypy checks what a test does with the row. `build()` gives unsaved
rows for `bulk_create` where a test needs hundreds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import factory
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Permission, User

from isos.models import IsoImage, IsoTag, new_iso_id
from vms.models import CdromAttachment, Disk, NetworkInterface, TemplateDisk, TemplateNic, VirtualMachine, VmTemplate


def _mac(n: int) -> str:
    return f"52:54:00:{(n >> 16) & 0xFF:02x}:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"


def _numbered(child: str, parent: str) -> factory.PostGeneration:
    """`name=N` on the parent's factory makes N rows of the `child` factory for it, `order` 0 to N-1;
    `name__field=value` goes to each of them."""

    def make(obj: object, create: bool, count: int | None, **fields: Any) -> None:
        if create and count:
            for order in range(count):
                globals()[child].create(**{parent: obj}, order=order, **fields)

    return factory.PostGeneration(make)


# The post-generation hooks: `create` is False for build(), which saves nothing and so relates nothing.


def _grant(user: User, create: bool, wanted: Iterable[str | Permission] | None, **_: Any) -> None:
    """Codenames (`"view_isoimage"`) or Permission rows (a queryset)."""
    if create and wanted:
        wanted = list(wanted)
        rows = [p for p in wanted if isinstance(p, Permission)]
        codenames = [p for p in wanted if isinstance(p, str)]
        user.user_permissions.add(*rows, *Permission.objects.filter(codename__in=codenames))


def _grant_apps(user: User, create: bool, labels: Iterable[str] | None, **_: Any) -> None:
    """Every permission of the named apps (`["vms", "isos"]`)."""
    if create and labels:
        user.user_permissions.add(*Permission.objects.filter(content_type__app_label__in=list(labels)))


def _tag(iso: IsoImage, create: bool, names: Iterable[str | IsoTag] | None, **_: Any) -> None:
    """Tag rows or names (made when missing)."""
    if create and names:
        iso.tags.set([tag if isinstance(tag, IsoTag) else IsoTagFactory.create(name=tag) for tag in names])


def _attach(vm: VirtualMachine, create: bool, iso: IsoImage | None, **fields: Any) -> None:
    if create and iso is not None:
        CdromAttachmentFactory.create(vm=vm, iso=iso, **fields)


class UserFactory(factory.django.DjangoModelFactory[User]):
    """A user holding no permission unless given some; tests log in with force_login / force_authenticate."""

    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.LazyFunction(lambda: make_password(None))  # unusable: hashing a real one costs time

    permissions = factory.PostGeneration(_grant)
    apps = factory.PostGeneration(_grant_apps)


class AdminFactory(UserFactory):
    username = factory.Sequence(lambda n: f"admin{n}")
    is_staff = True
    is_superuser = True


class IsoTagFactory(factory.django.DjangoModelFactory[IsoTag]):
    class Meta:
        model = IsoTag
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"tag{n}")


class IsoImageFactory(factory.django.DjangoModelFactory[IsoImage]):
    """A ready ISO row; no file behind it (`path` is only a string)."""

    class Meta:
        model = IsoImage
        skip_postgeneration_save = True

    id = factory.LazyFunction(new_iso_id)
    name = factory.Sequence(lambda n: f"image-{n:04d}.iso")
    path = factory.LazyAttribute(lambda iso: f"/srv/isos/{iso.name}")

    tags = factory.PostGeneration(_tag)


class VirtualMachineFactory(factory.django.DjangoModelFactory[VirtualMachine]):
    """A running VM row; `disks=N`, `nics=N` and `cdrom=<IsoImage>` add its devices (`disks__size_gb=...` and so on)."""

    class Meta:
        model = VirtualMachine
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"vm-{n:04d}")
    uuid = factory.LazyFunction(uuid.uuid4)
    memory_mb = 1024
    vcpus = 1
    status = "running"

    disks = _numbered("DiskFactory", "vm")
    nics = _numbered("NetworkInterfaceFactory", "vm")

    cdrom = factory.PostGeneration(_attach)


class DiskFactory(factory.django.DjangoModelFactory[Disk]):
    """A new 10 GB qcow2 volume in the default pool; `order` picks the target (0: vda)."""

    class Meta:
        model = Disk

    vm = factory.SubFactory(VirtualMachineFactory)
    order = 0
    source = "new"
    size_gb = 10
    volume_name = factory.LazyAttribute(lambda disk: f"{disk.vm.name}-disk{disk.order}.qcow2")
    path = factory.LazyAttribute(lambda disk: f"/var/lib/libvirt/images/{disk.volume_name}")
    target_dev = factory.LazyAttribute(lambda disk: f"vd{chr(ord('a') + disk.order)}")
    created_by_vapor = True


class NetworkInterfaceFactory(factory.django.DjangoModelFactory[NetworkInterface]):
    """A virtio NIC on the NAT network `default`, with a MAC of its own."""

    class Meta:
        model = NetworkInterface

    vm = factory.SubFactory(VirtualMachineFactory)
    order = 0
    mac = factory.Sequence(_mac)


class CdromAttachmentFactory(factory.django.DjangoModelFactory[CdromAttachment]):
    class Meta:
        model = CdromAttachment

    vm = factory.SubFactory(VirtualMachineFactory)
    iso = factory.SubFactory(IsoImageFactory)
    target_dev = "sda"


class VmTemplateFactory(factory.django.DjangoModelFactory[VmTemplate]):
    """A template row with the model's defaults; `disks=N` and `nics=N` add its devices."""

    class Meta:
        model = VmTemplate
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"tpl-{n:04d}")

    disks = _numbered("TemplateDiskFactory", "template")
    nics = _numbered("TemplateNicFactory", "template")


class TemplateDiskFactory(factory.django.DjangoModelFactory[TemplateDisk]):
    """A new 20 GB disk."""

    class Meta:
        model = TemplateDisk

    template = factory.SubFactory(VmTemplateFactory)
    size_gb = 20


class TemplateNicFactory(factory.django.DjangoModelFactory[TemplateNic]):
    class Meta:
        model = TemplateNic

    template = factory.SubFactory(VmTemplateFactory)
