"""A library ISO on a remote host (issue 15, point 5), for real: vh1 of scripts/hosts.sh over qemu+tcp.

Vapor's default host is pointed at vh1 (VAPOR_LIBVIRT_URI), so create-enhanced and its provisioning job run
as they do for any remote host. The shell ISO is in the library on this machine; the first VM copies it into
vh1's `vapor-isos` pool through libvirt's stream upload, its sha256 is read back on vh1, and the guest boots
from the copy (its shell's ready line on the serial log vh1's virtlogd writes). A second VM reuses the copy;
deleting the ISO removes it from vh1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from lxml import etree

from isos.services import iso_delete
from tests.bootiso import SHELL_READY, build_shell_iso
from tests.support.api import post_create
from tests.support.guests import wait_for_text
from tests.support.isos import register_ready
from vaporsite.errors import VaporError
from vms.hypervisor.libvirt_driver import LibvirtDriver
from vms.models import IsoHostCopy, VirtualMachine
from vms.services.iso_copies import ISO_POOL, ISO_POOL_DIR
from vms.services.lifecycle import vm_delete

pytestmark = [pytest.mark.libvirt, pytest.mark.multihost, pytest.mark.slow, pytest.mark.django_db]

BOOT_TIMEOUT = 300.0
SERIAL_DIR = Path("/var/log/libvirt/qemu")  # inside each host's mount namespace


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def on_vh1(libvirt_hosts: list[Any], settings, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """Vapor's default host is vh1; the library is a directory on this machine holding the shell ISO."""
    vh1 = libvirt_hosts[0]
    library = tmp_path / "isos"
    library.mkdir()
    iso = library / "vapor-shell.iso"
    shutil.copyfile(build_shell_iso(), iso)
    settings.VAPOR = dataclasses.replace(
        django_settings.VAPOR,
        libvirt_uri=vh1.uri,
        virt_type="qemu",
        qemu_user="",  # QEMU reads the copy on vh1, never this file
        iso_dirs=(library,),
        iso_roots=(),
        download_dir=library,
        disk_roots=(),
        serial_log_dir=SERIAL_DIR,
    )
    try:
        yield vh1, iso
    finally:
        hv = LibvirtDriver(vh1.uri)
        for name in ("mh-iso-1", "mh-iso-2"):
            with contextlib.suppress(VaporError):
                hv.destroy_domain(name)
            with contextlib.suppress(VaporError):
                hv.undefine_domain(name)
            with contextlib.suppress(VaporError):
                hv.delete_volume("default", f"{name}-disk0.qcow2")
        for leftover in (vh1.data / "lib" / "vapor-isos").glob("*.iso"):
            with contextlib.suppress(VaporError):
                hv.delete_volume(ISO_POOL, leftover.name)
        hv.close()


def create(vm_api: Any, run_tasks: Any, name: str, iso: str) -> VirtualMachine:
    body = {"name": name, "memory": 512, "vcpus": 1, "graphics": {"type": "none"}, "networks": [], "iso_path": iso, "disks": [{"size": 1}]}
    response = post_create(vm_api, run_tasks, body)
    assert response.status_code == 202, response.json()
    vm = VirtualMachine.objects.get(pk=response.json()["id"])
    assert vm.status == "running", vm.error
    return vm


def cdrom_source(hv: LibvirtDriver, name: str) -> str:
    document = etree.fromstring(hv.domain_xml(name).encode())
    return str(document.xpath("string(devices/disk[@device='cdrom']/source/@file)"))


def test_an_iso_is_copied_once_to_a_remote_host_and_a_guest_boots_from_it(on_vh1, vm_api, run_tasks, monkeypatch):
    vh1, iso_file = on_vh1
    iso = register_ready(iso_file)
    uploads: list[str] = []
    real_upload = LibvirtDriver.upload_volume_file

    def counted(self: LibvirtDriver, pool: str, name: str, path: str, **kwargs: Any) -> Any:
        uploads.append(name)
        return real_upload(self, pool, name, path, **kwargs)

    monkeypatch.setattr(LibvirtDriver, "upload_volume_file", counted)

    first = create(vm_api, run_tasks, "mh-iso-1", iso.pk)
    copy = IsoHostCopy.objects.get()
    assert (copy.host.name, copy.status, copy.sha256) == ("default", "ready", iso.sha256_hash)
    assert copy.path == f"{ISO_POOL_DIR}/{iso.pk}.iso" and copy.bytes_done == iso.size
    on_host = vh1.data / "lib" / "vapor-isos" / f"{iso.pk}.iso"  # what vh1 sees as the copy's path
    assert sha256_of(on_host) == iso.sha256_hash
    hv = LibvirtDriver(vh1.uri)
    try:
        assert cdrom_source(hv, first.name) == copy.path
        seconds = wait_for_text(vh1.serial_log(first.name), SHELL_READY, BOOT_TIMEOUT)
        print(f"\nmh-iso-1 booted the copy on {vh1.name} in {seconds:.1f} s")

        second = create(vm_api, run_tasks, "mh-iso-2", iso.pk)
        assert uploads == [f"{iso.pk}.iso"]  # copied once, reused by the second VM
        assert cdrom_source(hv, second.name) == copy.path

        for vm in (first, second):
            vm_delete(vm=VirtualMachine.objects.get(pk=vm.pk))
        assert iso_delete(iso=iso) == []
        assert not on_host.exists() and not IsoHostCopy.objects.exists()  # the copy went with the ISO
    finally:
        hv.close()
