"""The shared test helpers (tests/support) make what they promise: valid rows, real images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.db import models
from factory.django import DjangoModelFactory

from tests.support import factories
from tests.support.images import make_image, qemu_img_info, sha256

FACTORIES = [
    factories.UserFactory,
    factories.AdminFactory,
    factories.IsoTagFactory,
    factories.IsoImageFactory,
    factories.VirtualMachineFactory,
    factories.DiskFactory,
    factories.NetworkInterfaceFactory,
    factories.CdromAttachmentFactory,
    factories.VmTemplateFactory,
    factories.TemplateDiskFactory,
    factories.TemplateNicFactory,
]


@pytest.mark.django_db
@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_each_factory_makes_a_row_that_passes_model_validation(factory: type[DjangoModelFactory[models.Model]]):
    for row in factory.create_batch(2):  # two of a kind: no clash on a unique field
        row.full_clean()


@pytest.mark.django_db
def test_vm_and_template_factories_add_their_devices_and_users_their_permissions():
    iso = factories.IsoImageFactory.create(tags=["lts", "ubuntu"])
    vm = factories.VirtualMachineFactory.create(disks=2, nics=2, cdrom=iso, disks__size_gb=30)
    assert [(d.order, d.target_dev, d.size_gb) for d in vm.disks.order_by("order")] == [(0, "vda", 30), (1, "vdb", 30)]
    assert vm.nics.count() == 2 and vm.cdroms.get().iso == iso
    assert sorted(iso.tags.values_list("name", flat=True)) == ["lts", "ubuntu"]
    template = factories.VmTemplateFactory.create(disks=1, nics=2)
    assert (template.disks.count(), template.nics.count()) == (1, 2)

    user = factories.UserFactory.create(permissions=["view_isoimage"], apps=["vms"])
    assert user.has_perm("isos.view_isoimage") and user.has_perm("vms.add_virtualmachine")
    assert not user.has_perm("isos.add_isoimage") and not user.is_staff
    assert factories.AdminFactory.create().is_superuser


def test_make_image_makes_a_world_readable_image_of_the_asked_format_and_size(tmp_path: Path):
    old_umask = os.umask(0o077)  # QEMU (another user) must read it whatever the caller's umask
    try:
        image = make_image(tmp_path / "a.qcow2", "3M")
    finally:
        os.umask(old_umask)
    info = qemu_img_info(image, "-f", "qcow2")
    assert (info["format"], info["virtual-size"], image.stat().st_mode & 0o777) == ("qcow2", 3 * 1024**2, 0o644)
    overlay = make_image(tmp_path / "b.qcow2", "3M", "qcow2", "-b", str(image), "-F", "qcow2")
    assert qemu_img_info(overlay)["backing-filename"] == str(image)
    assert sha256(image) == sha256(str(image)) != sha256(overlay)
