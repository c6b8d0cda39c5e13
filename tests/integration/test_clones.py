"""Cloning volumes through the driver (linked overlays, full copies from a
pool volume or from any file) and looking volumes up by path, checked with
`qemu-img` and by hashing the source before and after."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ScratchPool, unique, virsh
from tests.support.images import qemu_img, qemu_img_info, sha256
from vaporsite.errors import Conflict, HypervisorError, InvalidInput, NotFound
from vms.hypervisor import images
from vms.hypervisor.libvirt_driver import LibvirtDriver

pytestmark = pytest.mark.libvirt

MIB = 1024**2


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=120)


def same_content(first: str, first_fmt: str, second: str, second_fmt: str) -> bool:
    done = subprocess.run(
        ["qemu-img", "compare", "-f", first_fmt, "-F", second_fmt, first, second], capture_output=True, text=True, timeout=120
    )
    return done.returncode == 0


def template(path: Path, fmt: str = "qcow2", size: str = "32M") -> str:
    """An image with recognisable data at 0 and at 8 MiB."""
    qemu_img("create", "-q", "-f", fmt, str(path), size)
    run("qemu-io", "-f", fmt, "-c", "write -P 0xa5 0 1M", "-c", "write -P 0x5a 8M 512k", str(path))
    return str(path)


def pool_volumes(pool: str) -> list[str]:
    """The pool's volume names as virsh lists them (virsh 9.0's vol-list has no --name)."""
    rows = virsh("vol-list", "--pool", pool).stdout.splitlines()[2:]
    return [row.split()[0] for row in rows if row.strip()]


def test_linked_clone_is_an_overlay_on_the_untouched_source(hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path):
    source = template(tmp_path / "template.qcow2")
    before = sha256(source)
    name = unique("h6-linked") + ".qcow2"

    volume = hypervisor.clone_volume(scratch_pool.name, name, source, "qcow2", linked=True)

    info = qemu_img_info(volume.path, "-f", "qcow2")
    assert (info["backing-filename"], info["backing-filename-format"]) == (source, "qcow2")
    assert (volume.name, volume.format, volume.capacity, info["virtual-size"]) == (name, "qcow2", 32 * MIB, 32 * MIB)
    assert same_content(source, "qcow2", volume.path, "qcow2")
    assert sha256(source) == before


def test_linked_clone_of_a_raw_template_states_raw_and_can_be_larger(hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path):
    source = template(tmp_path / "template.raw", fmt="raw")
    before = sha256(source)

    volume = hypervisor.clone_volume(scratch_pool.name, unique("h6-linked") + ".qcow2", source, "raw", linked=True, capacity_bytes=64 * MIB)

    info = qemu_img_info(volume.path, "-f", "qcow2")
    assert (info["backing-filename-format"], info["virtual-size"], volume.capacity) == ("raw", 64 * MIB, 64 * MIB)
    assert sha256(source) == before


def test_a_smaller_capacity_never_shrinks_a_clone(hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path):
    source = template(tmp_path / "template.qcow2")

    volume = hypervisor.clone_volume(scratch_pool.name, unique("h6-linked") + ".qcow2", source, "qcow2", linked=True, capacity_bytes=MIB)

    assert volume.capacity == 32 * MIB


def test_linked_clone_must_be_qcow2(hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path):
    source = template(tmp_path / "template.qcow2")
    name = unique("h6-linked") + ".raw"

    with pytest.raises(InvalidInput, match="qcow2 overlay") as caught:
        hypervisor.clone_volume(scratch_pool.name, name, source, "qcow2", linked=True, fmt="raw")

    assert caught.value.field == "format"
    assert name not in pool_volumes(scratch_pool.name)


def test_full_clone_of_a_file_outside_any_pool_copies_it_into_the_pool(
    hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path
):
    source = template(tmp_path / "template.qcow2")
    before = sha256(source)
    assert hypervisor.volume_by_path(source) is None
    name = unique("h6-full") + ".qcow2"

    volume = hypervisor.clone_volume(scratch_pool.name, name, source, "qcow2", linked=False)

    assert same_content(source, "qcow2", volume.path, "qcow2")
    assert "backing-filename" not in qemu_img_info(volume.path, "-f", "qcow2")
    assert sha256(source) == before
    # libvirt knows the volume, with what qemu-img wrote into it.
    assert name in pool_volumes(scratch_pool.name)
    assert (volume.capacity, volume.format) == (32 * MIB, "qcow2")
    assert volume.allocation >= int(1.5 * MIB)


def test_full_clone_can_change_the_format(hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path):
    source = template(tmp_path / "template.qcow2")

    volume = hypervisor.clone_volume(scratch_pool.name, unique("h6-full") + ".raw", source, "qcow2", linked=False, fmt="raw")

    assert volume.format == "raw"
    assert same_content(source, "qcow2", volume.path, "raw")


def test_full_clone_of_a_pool_volume_is_made_by_libvirt_and_grown_on_request(
    hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path
):
    origin = hypervisor.create_volume(scratch_pool.name, unique("h6-origin") + ".qcow2", 32 * MIB)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 4M 1M", origin.path)
    before = sha256(origin.path)
    assert hypervisor.volume_by_path(origin.path) == hypervisor.volume(scratch_pool.name, origin.name)

    volume = hypervisor.clone_volume(
        scratch_pool.name, unique("h6-full") + ".qcow2", origin.path, "qcow2", linked=False, capacity_bytes=48 * MIB
    )

    # qemu-img compare reads the larger image's tail as zeros, like a guest would.
    assert same_content(origin.path, "qcow2", volume.path, "qcow2")
    assert (volume.capacity, qemu_img_info(volume.path, "-f", "qcow2")["virtual-size"]) == (48 * MIB, 48 * MIB)
    assert sha256(origin.path) == before


@pytest.mark.parametrize("linked", [True, False])
def test_cloning_onto_a_taken_name_is_a_conflict_and_keeps_the_volume(
    hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path, linked: bool
):
    source = template(tmp_path / "template.qcow2")
    taken = hypervisor.create_volume(scratch_pool.name, unique("h6-taken") + ".qcow2", MIB)
    before = sha256(taken.path)

    with pytest.raises(Conflict, match="exists") as caught:
        hypervisor.clone_volume(scratch_pool.name, taken.name, source, "qcow2", linked=linked)

    assert caught.value.field == "name"
    assert sha256(taken.path) == before


def test_missing_source_is_not_found_and_a_wrong_format_is_invalid(hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path):
    raw = template(tmp_path / "template.raw", fmt="raw")

    with pytest.raises(NotFound) as missing:
        hypervisor.clone_volume(scratch_pool.name, unique("h6-x") + ".qcow2", str(tmp_path / "nope.qcow2"), "qcow2", linked=True)
    with pytest.raises(InvalidInput, match="not in qcow2 format") as wrong:
        hypervisor.clone_volume(scratch_pool.name, unique("h6-x") + ".qcow2", raw, "qcow2", linked=False)

    assert (missing.value.field, wrong.value.field) == ("clone_from", "clone_from")
    assert not [name for name in pool_volumes(scratch_pool.name) if name.startswith("h6-x")]


@pytest.mark.parametrize("name", ["../escape.qcow2", "a/b.qcow2", ".hidden"])
def test_clone_names_that_leave_the_pool_are_refused(hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path, name: str):
    source = template(tmp_path / "template.qcow2")
    with pytest.raises(InvalidInput) as caught:
        hypervisor.clone_volume(scratch_pool.name, name, source, "qcow2", linked=True)
    assert caught.value.field == "name"


def test_a_copy_that_fails_leaves_no_volume_behind(
    hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    source = template(tmp_path / "template.qcow2")
    failing = tmp_path / "qemu-img"
    failing.write_text('#!/bin/sh\nif [ "$1" = convert ]; then echo "qemu-img: h6 disk full" >&2; exit 1; fi\nexec qemu-img "$@"\n')
    failing.chmod(0o755)
    monkeypatch.setattr(images, "QEMU_IMG", str(failing))
    name = unique("h6-broken") + ".qcow2"

    with pytest.raises(HypervisorError, match="h6 disk full"):
        hypervisor.clone_volume(scratch_pool.name, name, source, "qcow2", linked=False)

    assert name not in pool_volumes(scratch_pool.name)
    assert not (scratch_pool.path / name).exists()


def test_pool_paths_name_the_directories_of_file_pools(hypervisor: LibvirtDriver, scratch_pool: ScratchPool):
    paths = hypervisor.pool_paths()

    assert paths[scratch_pool.name] == str(scratch_pool.path)
    assert set(paths) <= set(virsh("pool-list", "--all", "--name").stdout.split())


def test_full_clone_of_a_raw_pool_volume_holding_a_qcow2_header_copies_its_bytes_not_its_backing_file(
    hypervisor: LibvirtDriver, scratch_pool: ScratchPool, tmp_path: Path
):
    secret = tmp_path / "host-secret.txt"
    secret.write_bytes(b"h6-TOP-SECRET".ljust(MIB, b"\0"))
    upload = scratch_pool.path / (unique("h6-upload") + ".raw")
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(secret), "-F", "raw", str(upload), "1M")
    virsh("pool-refresh", scratch_pool.name)
    # libvirt probes files it did not create, and calls this one qcow2.
    assert hypervisor.volume(scratch_pool.name, upload.name).format == "qcow2"

    volume = hypervisor.clone_volume(scratch_pool.name, unique("h6-full") + ".raw", str(upload), "raw", linked=False, fmt="raw")

    assert same_content(str(upload), "raw", volume.path, "raw")
    assert b"h6-TOP-SECRET" not in Path(volume.path).read_bytes()
