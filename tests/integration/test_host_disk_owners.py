"""Against the real libvirtd: the files of a domain defined outside Vapor (`virsh
define`) are its own (issue 11, point 1). A writable attachment of its disk,
its read-only disk, a backing file of its running disk, or a pool volume of
a domain that is off is 409 naming the domain; reading what it only reads
is allowed, and the guest runs."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import unique, virsh
from tests.integration.vm_support import VmEnv
from tests.support.api import post_create
from tests.support.images import make_image
from vms.hypervisor.libvirt_driver import LibvirtDriver
from vms.models import VirtualMachine

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]
MIB = 1024**2


def foreign(env: VmEnv, name: str, disks: str) -> None:
    definition = env.disks / f"{name}.xml"
    definition.write_text(
        f"<domain type='qemu'><name>{name}</name><uuid>{uuid.uuid4()}</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        f"<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>{disks}</devices></domain>"
    )
    virsh("define", str(definition))


def file_disk(path: object, dev: str, *, readonly: bool = False) -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{path}'/>"
        f"<target dev='{dev}' bus='virtio'/>{'<readonly/>' if readonly else ''}</disk>"
    )


def refused(response, code: str, domain: str) -> None:
    body = response.json()
    assert (response.status_code, body["code"], body["field"]) == (409, code, "disks.0.path"), body
    assert f"domain {domain}" in body["detail"], body


def test_a_foreign_domains_files_are_its_own(vm_api, run_tasks, vm_env: VmEnv, hypervisor: LibvirtDriver):
    quiet = {"memory": 128, "vcpus": 1, "graphics": {"type": "none"}, "storage_pool": vm_env.pool, "networks": []}
    base = make_image(vm_env.disks / "golden.qcow2")
    overlay = make_image(vm_env.disks / "overlay.qcow2", "64M", "qcow2", "-b", str(base), "-F", "qcow2")
    shared_ro = make_image(vm_env.disks / "reference.qcow2")
    running, off = unique("it-foreign"), unique("it-foreign-off")
    foreign(vm_env, running, file_disk(overlay, "vda") + file_disk(shared_ro, "vdb", readonly=True))
    virsh("start", running)  # its live XML now holds the backing chain libvirt found: golden.qcow2
    volume = hypervisor.create_volume(vm_env.pool, f"{off}.qcow2", 64 * MIB)
    foreign(
        vm_env,
        off,
        f"<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='{vm_env.pool}' volume='{volume.name}'/>"
        "<target dev='vda' bus='virtio'/></disk>",
    )

    def attach(path: object, readonly: bool = False):
        return post_create(vm_api, run_tasks, {"name": "it-mine", "disks": [{"path": str(path), "readonly": readonly}], **quiet})

    refused(attach(overlay), "disk_in_use", running)  # its writable disk
    refused(attach(overlay, readonly=True), "disk_in_use", running)  # a reader would see it change
    refused(attach(shared_ro), "disk_in_use", running)  # it trusts that file not to change
    refused(attach(base), "disk_owned", running)  # the backing file of its running disk
    refused(attach(volume.path), "disk_in_use", off)  # a pool volume of a domain that is off
    assert not VirtualMachine.objects.exists()
    assert virsh("domstate", running).stdout.strip() == "running"

    # Two readers may share: its read-only disk and its backing file, read-only, in a guest that runs.
    response = post_create(
        vm_api,
        run_tasks,
        {"name": "it-mine", "disks": [{"path": str(shared_ro), "readonly": True}, {"path": str(base), "readonly": True}], **quiet},
    )
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="it-mine")
    assert vm.status == "running", vm.error
