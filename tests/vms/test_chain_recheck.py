"""The worker checks a disk source's chain again just before it uses it (issue 11, point 2).

A request checks an image's header when it arrives; the worker clones it or
hands it to libvirt later. In between, a guest that writes a raw disk can
turn the file's first bytes into a qcow2 header naming any host file. Each
test lets the request pass, rewrites the header the way such a guest would,
then runs the job: the VM fails with an error naming the disk, what it made
is undone, and the host file's bytes are copied nowhere. On the in-memory
hypervisor; tests/integration/test_chain_recheck.py runs the same attack
against the real daemon.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.api import CREATE_URL
from tests.support.images import make_image, overwrite_start
from vaporsite.errors import InvalidInput
from vms.hypervisor.documents.domain import parse_domain
from vms.hypervisor.images import image_info
from vms.hypervisor.specs import BackingSpec
from vms.jobs import vm_provision
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db

TOKEN = b"VAPOR-CHAIN-SECRET-5d1e"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A host file outside every root."""
    host = tmp_path / "host"
    host.mkdir()
    path = host / "secret.raw"
    path.write_bytes(TOKEN * 4096)
    return path


def accepted(vm_api, payload: dict) -> VirtualMachine:
    """POST without running the queued task: the request is checked and the job waits."""
    response = vm_api.post(CREATE_URL, {"memory": 256, "vcpus": 1, "graphics": {"type": "none"}, **payload}, format="json")
    assert response.status_code == 202, response.json()
    return VirtualMachine.objects.get(pk=response.json()["id"])


def failed(vm: VirtualMachine) -> VirtualMachine:
    vm_provision(vm_id=vm.pk)
    vm.refresh_from_db()
    assert vm.status == "failed", (vm.status, vm.error)
    return vm


def holds_token(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.is_file() and TOKEN in p.read_bytes()]


def test_a_raw_disk_rewritten_to_name_a_host_file_is_not_cloned(vm_api, hv, disk_root: Path, secret: Path, tmp_path: Path):
    # Another VM's raw disk whose guest wrote a harmless qcow2 header, offered as a qcow2 clone source.
    raw = disk_root / "other-vm.img"
    raw.write_bytes(make_image(tmp_path / "harmless.qcow2", "8M").read_bytes())
    vm = accepted(vm_api, {"name": "cl", "disks": [{"size": 1}, {"clone_from": str(raw), "source_format": "qcow2"}]})
    overwrite_start(raw, make_image(tmp_path / "hostile.qcow2", "8M", "qcow2", "-b", str(secret), "-F", "raw"))

    vm = failed(vm)

    assert vm.error.startswith(f"clone {raw} to cl-disk1.qcow2 failed: ")
    assert f"the backing file {secret} of {raw} lies outside the allowed directories" in vm.error
    assert [(e.step, e.status) for e in vm.events.exclude(step="accepted")][-2:] == [
        (f"clone {raw} to cl-disk1.qcow2", "failed"),
        ("create volume cl-disk0.qcow2", "undone"),
    ]
    assert hv.calls["clone_volume"] == 0 and list(hv.pool_dir.iterdir()) == [] and hv.domains == {}
    assert holds_token(hv.pool_dir) == []


def test_a_clone_source_whose_chain_changed_inside_the_roots_is_not_cloned(vm_api, hv, disk_root: Path, tmp_path: Path):
    # Inside the roots every file passes the rules, but the chain is not the one the request checked:
    # the copy would hold another VM's disk.
    private = make_image(disk_root / "someone-elses.qcow2", "8M")
    raw = disk_root / "other-vm.img"
    raw.write_bytes(make_image(tmp_path / "harmless.qcow2", "8M").read_bytes())
    vm = accepted(vm_api, {"name": "ch", "disks": [{"clone_from": str(raw), "source_format": "qcow2"}]})
    assert VirtualMachine.objects.get(pk=vm.pk).disks.get().source_chain == [{"path": str(raw), "format": "qcow2", "data_file": None}]
    overwrite_start(raw, make_image(tmp_path / "hostile.qcow2", "8M", "qcow2", "-b", str(private), "-F", "qcow2"))

    vm = failed(vm)

    assert vm.error == (
        f"clone {raw} to ch-disk0.qcow2 failed: the backing chain of {raw} changed since the request was checked: "
        f"it was {raw} (qcow2), it is now {raw} (qcow2) -> {private} (qcow2)"
    )
    assert hv.calls["clone_volume"] == 0 and list(hv.pool_dir.iterdir()) == []


def test_an_existing_disk_whose_chain_changed_fails_before_the_domain_is_defined(vm_api, hv, disk_root: Path, secret: Path, tmp_path: Path):
    disk = disk_root / "shared.img"
    disk.write_bytes(make_image(tmp_path / "harmless.qcow2", "8M").read_bytes())
    vm = accepted(vm_api, {"name": "ex", "disks": [{"size": 1}, {"path": str(disk), "format": "qcow2"}]})
    overwrite_start(disk, make_image(tmp_path / "hostile.qcow2", "8M", "qcow2", "-o", f"data_file={secret}"))

    vm = failed(vm)

    assert vm.error.startswith("define domain failed: ")
    assert f"the data file {secret} of {disk} lies outside the allowed directories" in vm.error
    assert ("create volume ex-disk0.qcow2", "undone") in [(e.step, e.status) for e in vm.events.all()]
    assert hv.calls["define_domain"] == 0 and hv.domains == {} and list(hv.pool_dir.iterdir()) == []


def test_an_unchanged_chain_is_used_and_stated_in_the_domain(vm_api, hv, disk_root: Path, run_tasks):
    seed = make_image(disk_root / "seed.img", "8M", "raw")
    base = make_image(disk_root / "base.qcow2", "8M", "qcow2", "-b", str(seed), "-F", "raw")
    shared = make_image(disk_root / "shared.qcow2", "8M")
    with run_tasks():
        response = vm_api.post(
            CREATE_URL,
            {
                "name": "ok",
                "memory": 256,
                "vcpus": 1,
                "disks": [{"size": 1}, {"clone_from": str(base), "linked": True}, {"clone_from": str(base)}, {"path": str(shared)}],
            },
            format="json",
        )
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(name="ok")
    assert vm.status == "running", vm.error
    backing = [d.backing for d in parse_domain(hv.domains["ok"].xml).disks]
    assert backing == [
        (),  # a new volume: none, stated
        (BackingSpec(str(base), "qcow2"), BackingSpec(str(seed), "raw")),  # a linked clone: its source's whole chain
        (),  # a full copy: none
        (),  # an existing disk without a backing file
    ]


def test_a_data_file_must_be_a_regular_file_inside_the_roots(vm_api, hv, disk_root: Path, tmp_path: Path):
    outside = tmp_path / "outside.raw"
    image = make_image(disk_root / "outside-data.qcow2", "8M", "qcow2", "-o", f"data_file={outside}")
    response = vm_api.post(CREATE_URL, {"name": "d1", "memory": 256, "vcpus": 1, "disks": [{"path": str(image)}]}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "disks.0.path", response.json()
    assert response.json()["code"] == "path_outside_roots"

    fifo = disk_root / "data.fifo"
    image = make_image(disk_root / "fifo-data.qcow2", "8M", "qcow2", "-o", f"data_file={fifo}")
    fifo.unlink()
    os.mkfifo(fifo)  # inside the roots, but QEMU would read a pipe as the disk's data
    response = vm_api.post(CREATE_URL, {"name": "d2", "memory": 256, "vcpus": 1, "disks": [{"clone_from": str(image)}]}, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["field"] == "disks.0.clone_from"
    assert f"the data file {fifo} of {image} is not a regular file" in response.json()["detail"]
    assert VirtualMachine.objects.count() == 0 and list(hv.pool_dir.iterdir()) == []


def test_image_info_refuses_a_data_file_that_is_a_directory(disk_root: Path):
    folder = disk_root / "data-dir"
    image = make_image(disk_root / "dir-data.qcow2", "8M", "qcow2", "-o", f"data_file={folder}")
    folder.unlink()
    folder.mkdir()

    with pytest.raises(InvalidInput, match="is not a regular file"):
        image_info(str(image), "qcow2", roots=[disk_root])


def test_a_linked_clones_source_rewritten_after_the_clone_fails_before_define(vm_api, hv, disk_root: Path, secret: Path, tmp_path: Path):
    # The overlay is made; then, before the domain is defined, the source's header changes: QEMU would open it.
    raw = disk_root / "golden.img"
    raw.write_bytes(make_image(tmp_path / "harmless.qcow2", "8M").read_bytes())
    hostile = make_image(tmp_path / "hostile.qcow2", "8M", "qcow2", "-b", str(secret), "-F", "raw")
    vm = accepted(vm_api, {"name": "lk", "disks": [{"clone_from": str(raw), "source_format": "qcow2", "linked": True}]})
    clone = hv.clone_volume

    def clone_then_rewrite(*args, **kwargs):
        made = clone(*args, **kwargs)
        overwrite_start(raw, hostile)
        return made

    hv.clone_volume = clone_then_rewrite

    vm = failed(vm)

    assert vm.error.startswith("define domain failed: ")
    assert f"the backing file {secret} of {raw} lies outside the allowed directories" in vm.error
    assert (f"linked clone {raw} to lk-disk0.qcow2", "undone") in [(e.step, e.status) for e in vm.events.all()]
    assert hv.calls["define_domain"] == 0 and list(hv.pool_dir.iterdir()) == []
