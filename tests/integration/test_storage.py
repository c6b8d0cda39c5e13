"""Storage pools and volumes through the driver, checked against the real
daemon, the files on disk and `qemu-img`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import ScratchPool, unique, virsh
from tests.support.images import qemu_img_info
from vaporsite.errors import Conflict, InvalidInput, NotFound
from vms.hypervisor.libvirt_driver import LibvirtDriver

pytestmark = pytest.mark.libvirt

GIB = 1024**3
MIB = 1024**2


def test_pool_listing_includes_the_scratch_pool_active_and_autostarted(hypervisor: LibvirtDriver, scratch_pool: ScratchPool):
    pools = {pool.name: pool for pool in hypervisor.list_pools()}
    pool = pools[scratch_pool.name]
    assert (pool.active, pool.autostart, pool.path) == (True, True, str(scratch_pool.path))
    assert 0 < pool.available <= pool.capacity
    assert scratch_pool.name in virsh("pool-list", "--name").stdout.split()


def test_unknown_pool_is_not_found(hypervisor: LibvirtDriver):
    with pytest.raises(NotFound, match="no storage pool"):
        hypervisor.pool(unique("vapor-missing"))


def test_create_volume_makes_a_thin_qcow2_of_the_requested_size(hypervisor: LibvirtDriver, scratch_pool: ScratchPool):
    name = unique("disk") + ".qcow2"
    volume = hypervisor.create_volume(scratch_pool.name, name, GIB)

    assert Path(volume.path) == scratch_pool.path / name
    assert Path(volume.path).is_file()
    assert (volume.name, volume.capacity, volume.format) == (name, GIB, "qcow2")
    info = qemu_img_info(volume.path, "-f", "qcow2")
    assert (info["format"], info["virtual-size"]) == ("qcow2", GIB)
    assert Path(volume.path).stat().st_size < 10 * MIB  # thin: metadata only
    assert hypervisor.volume(scratch_pool.name, name).path == volume.path


def test_raw_volume_is_sparse_with_the_requested_size(hypervisor: LibvirtDriver, scratch_pool: ScratchPool):
    volume = hypervisor.create_volume(scratch_pool.name, unique("raw") + ".img", 64 * MIB, fmt="raw")
    stat = Path(volume.path).stat()
    assert (volume.format, stat.st_size, qemu_img_info(volume.path, "-f", "raw")["virtual-size"]) == ("raw", 64 * MIB, 64 * MIB)
    assert stat.st_blocks * 512 < 64 * MIB


def test_deleting_a_volume_removes_its_file(hypervisor: LibvirtDriver, scratch_pool: ScratchPool):
    name = unique("gone") + ".qcow2"
    path = Path(hypervisor.create_volume(scratch_pool.name, name, GIB).path)

    hypervisor.delete_volume(scratch_pool.name, name)

    assert not path.exists()
    with pytest.raises(NotFound, match="no storage vol"):
        hypervisor.volume(scratch_pool.name, name)
    with pytest.raises(NotFound):
        hypervisor.delete_volume(scratch_pool.name, name)


def test_creating_an_existing_volume_is_a_conflict_and_keeps_the_first(hypervisor: LibvirtDriver, scratch_pool: ScratchPool):
    name = unique("twice") + ".qcow2"
    first = hypervisor.create_volume(scratch_pool.name, name, GIB)

    with pytest.raises(Conflict, match="exists"):
        hypervisor.create_volume(scratch_pool.name, name, 2 * GIB)

    assert qemu_img_info(first.path, "-f", "qcow2")["virtual-size"] == GIB


def test_a_file_the_pool_does_not_know_yet_is_not_overwritten(hypervisor: LibvirtDriver, scratch_pool: ScratchPool):
    name = unique("outside") + ".qcow2"
    (scratch_pool.path / name).write_bytes(b"someone else's data")

    with pytest.raises(Conflict, match="already exists"):
        hypervisor.create_volume(scratch_pool.name, name, GIB)

    assert (scratch_pool.path / name).read_bytes() == b"someone else's data"


def test_volume_in_unknown_pool_is_not_found(hypervisor: LibvirtDriver):
    with pytest.raises(NotFound, match="no storage pool"):
        hypervisor.create_volume(unique("vapor-missing"), "disk.qcow2", GIB)


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "x" * 256])
def test_volume_names_that_leave_the_pool_are_refused_and_create_nothing(hypervisor: LibvirtDriver, scratch_pool: ScratchPool, name: str):
    before = sorted(scratch_pool.path.parent.rglob("*"))

    with pytest.raises(InvalidInput) as caught:
        hypervisor.create_volume(scratch_pool.name, name, GIB)

    assert caught.value.field == "name"
    assert sorted(scratch_pool.path.parent.rglob("*")) == before


def test_unknown_volume_format_is_refused(hypervisor: LibvirtDriver, scratch_pool: ScratchPool):
    with pytest.raises(InvalidInput) as caught:
        hypervisor.create_volume(scratch_pool.name, unique("fmt") + ".vmdk", GIB, fmt="vmdk")
    assert caught.value.field == "format"
