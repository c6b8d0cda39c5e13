"""An existing disk on a remote host checked through its libvirt, for real (issue 15, point 4): vh1 over qemu+tcp.

The images are made in vh1's `default` pool (a volume created through libvirt, then rewritten by qemu-img from
this machine, where vh1's /var/lib/libvirt is var/hosts/vh1/lib), then checked by
`vms.services.remote_images.inspect_remote_source`, which reads them only through vh1's storage API.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from vaporsite.errors import InvalidInput, NotFound, VaporError
from vms.hypervisor.libvirt_driver import LibvirtDriver
from vms.services.remote_images import inspect_remote_source

pytestmark = [pytest.mark.libvirt, pytest.mark.multihost]

POOL_DIR = "/var/lib/libvirt/images"  # inside vh1's mount namespace
NAMES = ("rs-base.qcow2", "rs-top.qcow2", "rs-cut.qcow2", "rs-linked.qcow2", "rs-full.qcow2")


@pytest.fixture
def vh1(libvirt_hosts: list[Any]) -> Iterator[tuple[Any, LibvirtDriver]]:
    host = libvirt_hosts[0]
    hv = LibvirtDriver(host.uri)
    try:
        yield host, hv
    finally:
        for name in NAMES:
            with contextlib.suppress(VaporError):
                hv.delete_volume("default", name)
        hv.close()


def image_on(host: Any, hv: LibvirtDriver, name: str, *options: str) -> str:
    """A volume of vh1's default pool holding a qcow2 made by qemu-img with `options`; its path on vh1."""
    volume = hv.create_volume("default", name, 64 * 2**20)
    local = host.data / "lib" / "images" / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(local), "64M"], check=True)
    return volume.path


def test_a_chain_on_a_remote_host_is_read_through_its_storage_api(vh1):
    host, hv = vh1
    base = image_on(host, hv, "rs-base.qcow2")
    top = image_on(host, hv, "rs-top.qcow2", "-b", "rs-base.qcow2", "-F", "qcow2")
    assert top == f"{POOL_DIR}/rs-top.qcow2"
    path, info = inspect_remote_source(top, "qcow2", "disks.0.path", hv)
    assert path == top and info.virtual_size == 64 * 2**20
    assert [(link.path, link.format) for link in info.chain] == [(top, "qcow2"), (base, "qcow2")]


def test_a_truncated_image_and_a_file_outside_the_pools_are_refused_on_a_remote_host(vh1):
    host, hv = vh1
    cut = image_on(host, hv, "rs-cut.qcow2")
    local = host.data / "lib" / "images" / "rs-cut.qcow2"
    with local.open("r+b") as handle:
        handle.truncate(4096)
    with pytest.raises(InvalidInput, match="damaged qcow2 image: its L1 table lies past the end of the file"):
        inspect_remote_source(cut, "qcow2", "disks.0.path", hv)
    with pytest.raises(NotFound, match="is no volume of a storage pool on the host"):
        inspect_remote_source("/etc/libvirt/libvirtd.conf", "raw", "disks.0.path", hv)


def test_clones_on_a_remote_host_are_made_by_its_libvirt(vh1):
    """The portal never opens the source (it is not on this machine): a linked clone states it as backing file,
    a full copy is libvirt's own; a raw file libvirt reads as qcow2 is not copied in full."""
    host, hv = vh1
    base = image_on(host, hv, "rs-base.qcow2")
    linked = hv.clone_volume("default", "rs-linked.qcow2", base, "qcow2", linked=True)
    assert linked.path == f"{POOL_DIR}/rs-linked.qcow2" and linked.capacity == 64 * 2**20
    _, info = inspect_remote_source(linked.path, "qcow2", "disks.0.path", hv)
    assert [(link.path, link.format) for link in info.chain] == [(linked.path, "qcow2"), (base, "qcow2")]
    full = hv.clone_volume("default", "rs-full.qcow2", base, "qcow2", linked=False, capacity_bytes=128 * 2**20)
    assert full.capacity == 128 * 2**20 and full.format == "qcow2"
    _, info = inspect_remote_source(full.path, "qcow2", "disks.0.path", hv)
    assert len(info.chain) == 1  # a copy: no backing file
