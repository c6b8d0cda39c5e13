"""Existing disks on a remote host (issue 15, point 4): checked through the host's libvirt, never the portal's files.

The default host is made remote; its fake answers for both URIs (one set of pools), so the request's check and the
worker's re-check ask the same "host". qemu-img on the portal is made to fail: whatever passes here was read
through the storage API (`volume_by_path`, `pool_paths`, `read_volume`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import FakeHosts, FakeHypervisor
from tests.support.api import post_create
from tests.support.images import make_image, overwrite_start
from vaporsite.errors import InvalidInput
from vms.hypervisor import images
from vms.hypervisor.image_header import parse_qcow2
from vms.models import Host, VirtualMachine

pytestmark = pytest.mark.django_db

REMOTE = "qemu+tcp://10.99.1.2/system"


@pytest.fixture
def remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk_root: Path) -> FakeHypervisor:
    hosts = FakeHosts(pool_root=tmp_path / "hosts")
    monkeypatch.setattr("vms.hypervisor.get_hypervisor", hosts.get)
    fake = hosts.get()
    hosts.by_uri[REMOTE] = fake
    Host.objects.update_or_create(name="default", defaults={"uri": REMOTE})

    def no_local_qemu_img(*args: object, **kwargs: object) -> None:
        raise AssertionError("qemu-img ran on the portal for a remote host's disk")

    monkeypatch.setattr(images, "_qemu_img_info", no_local_qemu_img)
    monkeypatch.setattr("vms.services.validation.image_info", no_local_qemu_img)
    monkeypatch.setattr("vms.services.validation.check_image", no_local_qemu_img)
    return fake


def create(vm_api, run_tasks, disks: list[dict[str, object]], name: str = "rs"):
    return post_create(vm_api, run_tasks, {"name": name, "memory": 512, "vcpus": 1, "networks": [], "disks": disks})


def error_of(response) -> tuple[str, str]:
    body = response.json()
    return body.get("field", ""), body["detail"]


def test_a_qcow2_chain_in_the_hosts_pools_is_read_through_libvirt(vm_api, run_tasks, remote, tmp_path):
    base = make_image(remote.pool_dir / "base.qcow2", "64M")
    top = make_image(remote.pool_dir / "top.qcow2", "64M", "qcow2", "-b", "base.qcow2", "-F", "qcow2")  # a relative name
    response = create(vm_api, run_tasks, [{"path": str(top)}])
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get()
    assert vm.status == "running", vm.error
    assert vm.disks.get().source_chain == [
        {"path": str(top), "format": "qcow2", "data_file": None},
        {"path": str(base), "format": "qcow2", "data_file": None},
    ]
    assert remote.calls["read_volume"] >= 4  # the request's check and the worker's, two images each


def test_a_file_outside_the_hosts_pools_is_refused(vm_api, run_tasks, remote, disk_root):
    # Inside VAPOR_DISK_ROOTS: fine on the portal's own host, but no volume of the remote host's pools.
    outside = make_image(disk_root / "shared.qcow2")
    response = create(vm_api, run_tasks, [{"path": str(outside)}])
    assert response.status_code == 404
    assert error_of(response) == (
        "disks.0.path",
        f"{outside} is no volume of a storage pool on the host (pool directories: {remote.pool_dir})",
    )
    assert not VirtualMachine.objects.exists()


def test_a_backing_file_outside_the_pools_is_refused(vm_api, run_tasks, remote, disk_root):
    secret = make_image(disk_root / "secret.qcow2")
    top = make_image(remote.pool_dir / "top.qcow2", "64M", "qcow2", "-b", str(secret), "-F", "qcow2")
    response = create(vm_api, run_tasks, [{"path": str(top)}])
    assert response.status_code == 400
    field, detail = error_of(response)
    assert field == "disks.0.path" and detail.startswith(f"the backing file {secret} of {top} is no volume of a storage pool")


def test_an_external_data_file_is_refused_on_a_remote_host(vm_api, run_tasks, remote):
    data = remote.pool_dir / "data.raw"
    image = make_image(remote.pool_dir / "with-data.qcow2", "64M", "qcow2", "-o", f"data_file={data}")
    response = create(vm_api, run_tasks, [{"path": str(image)}])
    assert response.status_code == 400
    assert "keeps its data in the external file" in error_of(response)[1]


def test_a_stated_qcow2_that_is_raw_is_refused(vm_api, run_tasks, remote):
    raw = make_image(remote.pool_dir / "plain.img", "64M", "raw")
    response = create(vm_api, run_tasks, [{"path": str(raw), "format": "qcow2"}])
    assert response.status_code == 400
    assert error_of(response) == ("disks.0.path", f"{raw} is not in qcow2 format: set format to the image's real format")


def test_a_raw_disk_with_a_qcow2_header_stays_raw(vm_api, run_tasks, remote, disk_root, tmp_path):
    """Opened as raw, its first bytes name nothing QEMU will open: its chain is itself."""
    disk = make_image(remote.pool_dir / "guest.img", "64M", "raw")
    overwrite_start(disk, make_image(tmp_path / "evil.qcow2", "64M", "qcow2", "-b", "/etc/shadow", "-F", "raw", "-u"))
    response = create(vm_api, run_tasks, [{"path": str(disk), "format": "raw"}])
    assert response.status_code == 202, response.json()
    assert VirtualMachine.objects.get().disks.get().source_chain == [{"path": str(disk), "format": "raw", "data_file": None}]


def test_a_chain_changed_before_the_worker_runs_fails_before_define(vm_api, run_tasks, remote, monkeypatch):
    base = make_image(remote.pool_dir / "base.qcow2", "64M")
    other = make_image(remote.pool_dir / "other.qcow2", "64M")
    top = make_image(remote.pool_dir / "top.qcow2", "64M", "qcow2", "-b", str(base), "-F", "qcow2")
    from vms import jobs

    real = jobs.vm_provision

    def rewritten_then_provision(**kwargs):
        make_image(top, "64M", "qcow2", "-b", str(other), "-F", "qcow2")  # the chain changes meanwhile
        return real(**kwargs)

    monkeypatch.setattr("vms.tasks.vm_provision", rewritten_then_provision)
    response = create(vm_api, run_tasks, [{"path": str(top)}])
    assert response.status_code == 202
    vm = VirtualMachine.objects.get()
    assert vm.status == "failed" and "changed since the request was checked" in vm.error
    assert remote.domains == {}


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"QFI\xfb" + b"\x00" * 10, "truncated"),
        (b"QFI\xfb\x00\x00\x00\x04" + b"\x00" * 200, "version 4"),
        (
            b"QFI\xfb\x00\x00\x00\x02" + (10**6).to_bytes(8, "big") + (8).to_bytes(4, "big") + (16).to_bytes(4, "big") + b"\x00" * 200,
            "outside what Vapor reads",
        ),
        (b"QFI\xfb\x00\x00\x00\x02" + b"\x00" * 12 + (40).to_bytes(4, "big") + b"\x00" * 200, "cluster size"),
    ],
    ids=["truncated", "version", "backing name far away", "cluster size"],
)
def test_an_unreadable_header_is_refused_not_guessed(head: bytes, reason: str):
    with pytest.raises(InvalidInput) as caught:
        parse_qcow2(head, what="img", field="f")
    assert reason in caught.value.message


def test_a_backing_file_without_a_stated_format_is_refused(vm_api, run_tasks, remote):
    make_image(remote.pool_dir / "base.qcow2", "64M")
    top = make_image(remote.pool_dir / "top.qcow2", "64M", "qcow2", "-b", "base.qcow2", "-F", "qcow2")
    header = top.read_bytes()
    marker = (0xE2792ACA).to_bytes(4, "big")  # the backing-format extension becomes one no reader knows
    assert header.count(marker) == 1
    top.write_bytes(header.replace(marker, (0x0BADF00D).to_bytes(4, "big")))
    response = create(vm_api, run_tasks, [{"path": str(top)}])
    assert response.status_code == 400
    assert error_of(response)[1] == f"{top} names the backing file base.qcow2 without its format"


@pytest.mark.parametrize("size", [100, 4096, 65536, 196_000])  # a new 64M qcow2 has 196,616 bytes
def test_a_truncated_qcow2_is_refused(vm_api, run_tasks, remote, size: int):
    image = make_image(remote.pool_dir / "cut.qcow2", "64M")
    with image.open("r+b") as handle:
        handle.truncate(size)
    response = create(vm_api, run_tasks, [{"path": str(image)}])
    assert response.status_code == 400, response.json()
    assert error_of(response)[0] == "disks.0.path"
