"""`vms.hypervisor.images`: reading disk images with an explicit format and
refusing chains that reach outside the allowed roots. Images are built with
the real `qemu-img`; no libvirt, no database."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.images import qemu_img
from vaporsite.errors import InvalidInput, NotFound
from vms.hypervisor import images
from vms.hypervisor.images import check_image_chain, image_info

MIB = 1024**2


@dataclass(frozen=True)
class Dirs:
    root: Path  # the one allowed root
    outside: Path  # a sibling that is not in it

    @property
    def roots(self) -> list[Path]:
        return [self.root]


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    # "images2" next to "images": a prefix check on strings would let it in.
    made = Dirs(root=tmp_path / "images", outside=tmp_path / "images2")
    made.root.mkdir()
    made.outside.mkdir()
    return made


def test_plain_qcow2_reports_format_sizes_and_no_references(dirs: Dirs):
    path = dirs.root / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "64M")

    info = image_info(str(path), "qcow2", roots=dirs.roots)

    assert (info.path, info.format, info.virtual_size) == (str(path), "qcow2", 64 * MIB)
    assert 0 < info.actual_size < MIB
    assert (info.backing_files, info.data_file, info.referenced_files) == ((), None, ())
    check_image_chain(info, dirs.roots, "path")


def test_raw_image_reports_its_file_size_as_virtual_size(dirs: Dirs):
    path = dirs.root / "disk.raw"
    qemu_img("create", "-q", "-f", "raw", str(path), "3M")

    info = image_info(str(path), "raw")

    assert (info.format, info.virtual_size, info.backing_files) == ("raw", 3 * MIB, ())


def test_backing_chain_inside_the_roots_is_walked_in_order(dirs: Dirs):
    base, middle, top = dirs.root / "base.raw", dirs.root / "middle.qcow2", dirs.root / "top.qcow2"
    qemu_img("create", "-q", "-f", "raw", str(base), "8M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(middle))
    # A relative name is resolved against the image's own directory, like QEMU does.
    qemu_img("create", "-q", "-f", "qcow2", "-b", "middle.qcow2", "-F", "qcow2", str(top))

    info = image_info(str(top), "qcow2", roots=dirs.roots)

    assert info.backing_files == (str(middle), str(base))
    assert [(link.format, link.backing_filename, link.backing_format) for link in info.chain] == [
        ("qcow2", "middle.qcow2", "qcow2"),
        ("qcow2", str(base), "raw"),
        ("raw", None, None),
    ]
    assert info.virtual_size == 8 * MIB
    check_image_chain(info, dirs.roots, "path")


def test_backing_file_outside_the_roots_is_refused(dirs: Dirs):
    secret = dirs.outside / "host-secret.raw"
    secret.write_bytes(b"not for guests" * 100)
    overlay = dirs.root / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(overlay), "1M")

    info = image_info(str(overlay), "qcow2")
    with pytest.raises(InvalidInput, match="outside the allowed directories") as checked:
        check_image_chain(info, dirs.roots, "clone_from")
    with pytest.raises(InvalidInput, match="backing file .*host-secret.raw.* outside") as walked:
        image_info(str(overlay), "qcow2", roots=dirs.roots, field="clone_from")

    assert info.backing_files == (str(secret),)
    assert (checked.value.field, walked.value.field) == ("clone_from", "clone_from")


def test_backing_file_reached_through_a_symlink_inside_the_roots_is_refused(dirs: Dirs):
    secret = dirs.outside / "secret.raw"
    secret.write_bytes(b"\0" * 4096)
    (dirs.root / "innocent.raw").symlink_to(secret)
    overlay = dirs.root / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "innocent.raw", "-F", "raw", str(overlay), "1M")

    with pytest.raises(InvalidInput, match="outside"):
        check_image_chain(image_info(str(overlay), "qcow2"), dirs.roots, "path")


def test_external_data_file_outside_the_roots_is_refused(dirs: Dirs):
    image = dirs.root / "split.qcow2"
    data_file = dirs.outside / "x.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={data_file}", str(image), "1M")

    info = image_info(str(image), "qcow2")

    assert info.data_file == str(data_file)
    with pytest.raises(InvalidInput, match="x.raw.* outside"):
        check_image_chain(info, dirs.roots, "path")
    with pytest.raises(InvalidInput, match="data file .* outside"):
        image_info(str(image), "qcow2", roots=dirs.roots)


def test_external_data_file_inside_the_roots_is_accepted(dirs: Dirs):
    image = dirs.root / "split.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={dirs.root / 'x.raw'}", str(image), "1M")

    info = image_info(str(image), "qcow2", roots=dirs.roots)

    assert info.referenced_files == (str(dirs.root / "x.raw"),)


def test_raw_file_holding_a_qcow2_header_is_read_as_raw_without_backing(dirs: Dirs):
    crafted = dirs.outside / "crafted.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(crafted), "1G")
    upload = dirs.root / "upload.raw"
    shutil.copyfile(crafted, upload)

    info = image_info(str(upload), "raw", roots=dirs.roots)

    # Probed, this file would be a 1 GiB qcow2 over /etc/shadow; raw, it is
    # its own bytes (rounded up to whole 512-byte sectors).
    assert (info.format, info.virtual_size, info.backing_files) == ("raw", -(-upload.stat().st_size // 512) * 512, ())


def test_asking_for_qcow2_on_a_raw_file_is_invalid_input_in_qemu_imgs_words(dirs: Dirs):
    path = dirs.root / "disk.raw"
    qemu_img("create", "-q", "-f", "raw", str(path), "1M")

    with pytest.raises(InvalidInput, match="cannot be read as qcow2: .*Image is not in qcow2 format") as caught:
        image_info(str(path), "qcow2", field="disks[0].path")

    assert caught.value.field == "disks[0].path"


def test_backing_file_without_a_recorded_format_is_refused_instead_of_probed(dirs: Dirs):
    base = dirs.root / "base.raw"
    base.write_bytes(b"\0" * 4096)
    overlay = dirs.root / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay), "1M")
    # qemu-img refuses to write a backing file without its format; old tools
    # (and attackers) do not. Renaming the "backing format" header extension
    # (type 0xe2792aca) to an unknown type makes QEMU ignore it.
    header = bytearray(overlay.read_bytes())
    at = header.index(bytes.fromhex("e2792aca"))
    header[at : at + 4] = bytes.fromhex("12345678")
    overlay.write_bytes(bytes(header))

    with pytest.raises(InvalidInput, match="has no format"):
        image_info(str(overlay), "qcow2", roots=dirs.roots)


@pytest.fixture
def nbd_listener() -> Iterator[tuple[int, list[object]]]:
    """A loopback socket that records every connection made to it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            accepted.append(peer)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_protocol_backing_name_is_refused_without_qemu_img_opening_it(dirs: Dirs, nbd_listener):
    port, accepted = nbd_listener
    overlay = dirs.root / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", f"nbd:127.0.0.1:{port}", "-F", "raw", str(overlay), "1M")

    with pytest.raises(InvalidInput, match="not a plain file"):
        image_info(str(overlay), "qcow2", roots=dirs.roots)

    # `qemu-img info --backing-chain` connects to this very socket; the walk must not.
    assert accepted == []


def test_json_backing_name_is_refused(dirs: Dirs):
    overlay = dirs.root / "overlay.qcow2"
    backing = 'json:{"driver":"raw","file":{"filename":"/etc/shadow"}}'
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", str(overlay), "1M")

    with pytest.raises(InvalidInput, match="not a plain file"):
        image_info(str(overlay), "qcow2")


def test_backing_loop_is_refused(dirs: Dirs):
    first, second = dirs.root / "a.qcow2", dirs.root / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(first), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(first), "-F", "qcow2", str(second))
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", str(second), "-F", "qcow2", str(first))

    with pytest.raises(InvalidInput, match="loops"):
        image_info(str(second), "qcow2", roots=dirs.roots)


def test_missing_image_is_not_found_and_a_device_node_is_refused(dirs: Dirs):
    with pytest.raises(NotFound):
        image_info(str(dirs.root / "nope.qcow2"), "qcow2")
    with pytest.raises(InvalidInput, match="not a regular file"):
        image_info("/dev/null", "raw")


@pytest.mark.parametrize(("path", "fmt"), [("relative.qcow2", "qcow2"), ("nbd:127.0.0.1:1", "raw"), ("/x.vmdk", "vmdk")])
def test_names_and_formats_that_are_not_plain_are_refused_before_qemu_img_runs(monkeypatch, path: str, fmt: str):
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("qemu-img must not run")

    monkeypatch.setattr(images.subprocess, "run", no_subprocess)
    with pytest.raises(InvalidInput):
        image_info(path, fmt)


def test_qemu_img_that_hangs_is_killed_and_reported(dirs: Dirs, monkeypatch, tmp_path: Path):
    path = dirs.root / "disk.raw"
    path.write_bytes(b"\0" * 512)
    pid_file = tmp_path / "pid"
    fake = tmp_path / "qemu-img"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setattr(images, "QEMU_IMG", str(fake))

    with pytest.raises(InvalidInput, match="took longer than 1 s"):
        image_info(str(path), "raw", timeout=1)

    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
