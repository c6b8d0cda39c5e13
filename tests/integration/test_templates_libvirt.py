"""Templates end to end on the real libvirtd: the spec's example 4, and a
template whose linked clone is grown."""

from __future__ import annotations

import pytest
from lxml import etree

from tests.integration.conftest import virsh
from tests.integration.vm_support import VmEnv
from tests.support.api import post_create
from tests.support.images import make_image, qemu_img_info, sha256
from tests.support.isos import make_iso
from vms.hypervisor.documents.domain import parse_domain
from vms.models import VirtualMachine

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]
GB = 1024**3
TEMPLATES = "/api/v1/virtualmachines/templates"


def test_example_4_vm_from_template_with_additional_storage(vm_api, run_tasks, vm_env: VmEnv, bridges: list[str]):
    base = make_image(vm_env.disks / "ubuntu-22.04-base.qcow2", "10G")
    base_digest = sha256(base)
    make_iso(vm_env.isos / "ubuntu-22.04-live-server-amd64.iso", label="Ubuntu-Server 22.04 LTS amd64")
    template = {
        "name": "ubuntu-22.04", "memory": 2048, "vcpus": 2, "os_variant": "ubuntu22.04", "uefi": True, "tpm": True,
        "iso": "ubuntu-22.04-live-server-amd64.iso", "storage_pool": vm_env.pool,
        "disks": [{"clone_from": str(base), "boot_order": 1}],
    }  # fmt: skip
    with run_tasks():  # the ISO is registered on the way and hashed
        response = vm_api.post(TEMPLATES, template, format="json")
    assert response.status_code == 201, response.json()

    # The spec's example 4, with the bridge the test made standing in for br0.
    payload = {
        "name": "app-server", "memory": 4096, "vcpus": 4, "template": "ubuntu-22.04",
        "disks": [{"size": 50}, {"size": 500}], "networks": [{"type": "bridge", "source": bridges[0]}],
    }  # fmt: skip
    response = post_create(vm_api, run_tasks, payload)
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="app-server")
    assert vm.status == "running", vm.error
    assert vm.template is not None and vm.template.name == "ubuntu-22.04"

    xml = virsh("dumpxml", "app-server").stdout
    live, root = parse_domain(xml), etree.fromstring(xml.encode())
    # The request's hardware, the template's OS settings and firmware.
    assert (root.findtext("memory"), root.get("type")) == (str(4096 * 1024), "qemu")  # KiB
    assert root.findtext("vcpu") == "4"
    assert root.xpath("//*[local-name()='os' and @id]/@id") == ["http://ubuntu.com/ubuntu/22.04"]
    assert live.firmware == "efi" and live.tpm_model == "tpm-crb"
    disks = [d for d in live.disks if d.device == "disk"]
    first, second = (qemu_img_info(d.source, "-f", "qcow2", "-U") for d in disks)
    assert first["virtual-size"] == 50 * GB  # the template's cloned disk, grown to 50 GB
    assert second["virtual-size"] == 500 * GB and second["actual-size"] < 10 * 1024**2  # the added data disk, thin
    assert [d.boot_order for d in disks] == [1, None]
    cdroms = [d for d in live.disks if d.device == "cdrom"]
    assert [c.source.rsplit("/", 1)[-1] for c in cdroms] == ["ubuntu-22.04-live-server-amd64.iso"]  # the template's ISO
    assert root.xpath("devices/interface/@type") == ["bridge"]
    assert root.xpath("devices/interface/source/@bridge") == [bridges[0]]
    assert sha256(base) == base_digest  # the base image is only read

    # While the VM exists the template cannot go; after it is deleted, it can.
    assert vm_api.delete(f"{TEMPLATES}/ubuntu-22.04").status_code == 409
    assert vm_api.delete(f"/api/v1/virtualmachines/{vm.pk}").status_code == 204
    assert virsh("dominfo", "app-server", check=False).returncode != 0
    assert vm_env.volumes() == set()
    assert vm_api.delete(f"{TEMPLATES}/ubuntu-22.04").status_code == 204


def test_linked_clone_from_a_template_is_grown_and_backed_by_the_base(vm_api, run_tasks, vm_env: VmEnv):
    base = make_image(vm_env.disks / "debian-base.qcow2", "1G")
    template = {"name": "debian-linked", "memory": 256, "vcpus": 1, "storage_pool": vm_env.pool,
                "disks": [{"clone_from": str(base), "linked": True}]}  # fmt: skip
    assert vm_api.post(TEMPLATES, template, format="json").status_code == 201
    response = post_create(vm_api, run_tasks, {"name": "linked-grown", "template": "debian-linked", "disks": [{"size": 4}]})
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="linked-grown")
    assert vm.status == "running", vm.error
    overlay = qemu_img_info(vm_env.pool_dir / "linked-grown-disk0.qcow2", "-f", "qcow2", "-U")
    assert overlay["virtual-size"] == 4 * GB
    assert overlay["backing-filename"] == str(base) and overlay["backing-filename-format"] == "qcow2"
    assert vm_api.delete(f"/api/v1/virtualmachines/{vm.pk}").status_code == 204
