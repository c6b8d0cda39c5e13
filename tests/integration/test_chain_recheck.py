"""Against the real daemon: a disk's chain is checked where it is used (issue 11, point 2).

The attack: a guest writes its raw disk, so it can turn the file's first
sectors into a qcow2 header at any moment. Offered as a qcow2 `clone_from`
while the header is harmless, the request passes; rewritten before the
worker runs so that it names a host file, the worker (root) would copy that
file into the new VM's disk. The worker now checks the chain again and fails
the VM. Once defined, the domain states the checked chain, and QEMU opens
that chain whatever a header says later.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import unique, virsh
from tests.integration.vm_support import VmEnv, shared_dir
from tests.support.api import CREATE_URL, post_create
from tests.support.images import make_image, overwrite_start
from vms.hypervisor.documents.domain import domain_xml, parse_domain
from vms.hypervisor.libvirt_driver import LibvirtDriver
from vms.hypervisor.specs import BackingSpec, DiskSpec, DomainSpec
from vms.jobs import vm_provision
from vms.models import VirtualMachine

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]

QUIET = {"memory": 256, "vcpus": 1, "graphics": {"type": "none"}}


@pytest.fixture
def secret() -> Iterator[tuple[Path, bytes]]:
    """A host file outside every root, and the bytes that mark it."""
    host = shared_dir("vapor-it-host-")
    token = f"VAPOR-HOST-SECRET-{uuid.uuid4().hex}".encode()
    path = host / "secret.raw"
    path.write_bytes((token + b"\n") * (1024 * 1024 // (len(token) + 1)))
    path.chmod(0o644)
    yield path, token
    shutil.rmtree(host, ignore_errors=True)


def files_holding(directory: Path, token: bytes) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file() and token in p.read_bytes())


def test_a_raw_disk_rewritten_between_request_and_worker_is_not_cloned(vm_api, vm_env: VmEnv, secret, tmp_path: Path):
    path, token = secret
    raw = vm_env.disks / "other-vm-disk0.img"  # another VM's raw disk; its guest wrote a harmless qcow2 header
    raw.write_bytes(make_image(tmp_path / "harmless.qcow2", "8M").read_bytes())
    raw.chmod(0o644)
    payload = {"name": "it-chain-clone", "storage_pool": vm_env.pool, **QUIET}
    response = vm_api.post(CREATE_URL, {**payload, "disks": [{"clone_from": str(raw), "source_format": "qcow2"}]}, format="json")
    assert response.status_code == 202, response.json()  # the task waits: nothing runs it yet
    overwrite_start(raw, make_image(tmp_path / "hostile.qcow2", "8M", "qcow2", "-b", str(path), "-F", "raw"))

    vm_provision(vm_id=response.json()["id"])

    vm = VirtualMachine.objects.get(name="it-chain-clone")
    assert files_holding(vm_env.pool_dir, token) == []  # the host file was copied nowhere
    assert vm.status == "failed", vm.error
    assert f"the backing file {path} of {raw} lies outside the allowed directories" in vm.error
    assert vm_env.volumes() == set()
    assert virsh("dominfo", "it-chain-clone", check=False).returncode != 0


def test_an_existing_disk_rewritten_before_the_worker_defines_nothing(vm_api, vm_env: VmEnv, secret, tmp_path: Path):
    path, token = secret
    disk = vm_env.disks / "shared.img"
    disk.write_bytes(make_image(tmp_path / "harmless.qcow2", "8M").read_bytes())
    disk.chmod(0o644)
    payload = {"name": "it-chain-existing", "storage_pool": vm_env.pool, **QUIET}
    response = vm_api.post(CREATE_URL, {**payload, "disks": [{"size": 1}, {"path": str(disk)}]}, format="json")
    assert response.status_code == 202, response.json()
    overwrite_start(disk, make_image(tmp_path / "hostile.qcow2", "8M", "qcow2", "-b", str(path), "-F", "raw"))

    vm_provision(vm_id=response.json()["id"])

    vm = VirtualMachine.objects.get(name="it-chain-existing")
    assert vm.status == "failed" and vm.error.startswith("define domain failed: "), vm.error
    assert f"the backing file {path} of {disk} lies outside the allowed directories" in vm.error
    assert vm_env.volumes() == set()  # the new volume made before was removed
    assert virsh("dominfo", "it-chain-existing", check=False).returncode != 0


def test_the_running_domain_states_the_checked_chain(vm_api, run_tasks, vm_env: VmEnv):
    seed = make_image(vm_env.disks / "seed.img", "16M", "raw")
    base = make_image(vm_env.disks / "base.qcow2", "16M", "qcow2", "-b", str(seed), "-F", "raw")
    disks = [{"size": 1}, {"clone_from": str(base), "linked": True}, {"clone_from": str(base)}]
    response = post_create(vm_api, run_tasks, {"name": "it-chain-xml", "storage_pool": vm_env.pool, "disks": disks, **QUIET})
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="it-chain-xml")
    assert vm.status == "running", vm.error

    live = parse_domain(virsh("dumpxml", "it-chain-xml").stdout)

    assert [(d.source, d.backing) for d in live.disks] == [
        (str(vm_env.pool_dir / "it-chain-xml-disk0.qcow2"), ()),
        (str(vm_env.pool_dir / "it-chain-xml-disk1.qcow2"), (BackingSpec(str(base), "qcow2"), BackingSpec(str(seed), "raw"))),
        (str(vm_env.pool_dir / "it-chain-xml-disk2.qcow2"), ()),
    ]


def test_qemu_opens_the_stated_chain_not_the_one_a_header_names_later(hypervisor: LibvirtDriver, vm_env: VmEnv, secret):
    path, _ = secret
    disk = make_image(vm_env.disks / "guest.qcow2", "16M")
    name = unique("it-chain-stated")
    spec = DomainSpec(
        name=name,
        memory_mib=64,
        vcpus=1,
        virt_type="qemu",
        graphics=None,
        disks=(DiskSpec(str(disk), "qcow2", "virtio", "vda", backing=()),),
    )
    hypervisor.define_domain(domain_xml(spec))
    # After every check: the header now names the host file as its backing file.
    overwrite_start(disk, make_image(vm_env.disks / "hostile.qcow2", "16M", "qcow2", "-b", str(path), "-F", "raw"))

    hypervisor.start_domain(name)

    live = parse_domain(virsh("dumpxml", name).stdout)
    assert [d.backing for d in live.disks] == [()]
    pid = Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
    opened = {os.path.realpath(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert str(disk) in opened and str(path) not in opened
