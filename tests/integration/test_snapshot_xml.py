"""The snapshot document checked by libvirt itself: a disk-only internal
snapshot of a shut-off domain and a disk-only external one are taken by
`virsh snapshot-create` from the builder's XML, and libvirt's description
reads back.

Everything created here is named `h10-...` and removed again with `virsh`.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import unique, virsh
from tests.vms.test_domain_xml import example_1
from vms.hypervisor.documents.domain import domain_xml
from vms.hypervisor.documents.snapshot import parse_snapshot, snapshot_xml
from vms.hypervisor.specs import DiskSpec, SnapshotDisk, SnapshotDiskSpec, SnapshotSpec

pytestmark = pytest.mark.libvirt


@pytest.fixture
def shut_off_domain() -> Iterator[tuple[str, Path]]:
    """A defined, never started domain with one thin qcow2 disk; its name and directory."""
    directory = Path(tempfile.mkdtemp(prefix="h10-", dir="/var/tmp"))
    directory.chmod(0o755)
    name = unique("h10")
    disk = directory / "disk0.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True, timeout=60)
    spec = dataclasses.replace(example_1(), name=name, disks=(DiskSpec(str(disk), "qcow2", "virtio", "vda", boot_order=1),), nics=())
    definition = directory / "domain.xml"
    definition.write_text(domain_xml(spec))
    virsh("define", str(definition))
    try:
        yield name, directory
    finally:
        for snapshot in virsh("snapshot-list", name, "--name", check=False).stdout.split():
            virsh("snapshot-delete", name, snapshot, "--metadata", check=False)
        virsh("undefine", name, "--snapshots-metadata", "--nvram", check=False)
        shutil.rmtree(directory, ignore_errors=True)


def take(name: str, directory: Path, spec: SnapshotSpec, *flags: str) -> str:
    path = directory / f"{spec.name}.xml"
    path.write_text(snapshot_xml(spec))
    done = virsh("snapshot-create", name, str(path), *flags, check=False)
    assert done.returncode == 0, done.stderr
    return virsh("snapshot-dumpxml", name, spec.name).stdout


def test_a_disk_only_internal_snapshot_of_a_shut_off_domain_is_taken_and_reads_back(shut_off_domain: tuple[str, Path]):
    name, directory = shut_off_domain
    spec = SnapshotSpec(name="before-upgrade", description="a <first> & 'only' one", disks=(SnapshotDiskSpec("vda", "internal"),))
    live = parse_snapshot(take(name, directory, spec))

    assert (live.name, live.description, live.state, live.parent, live.memory) == (spec.name, spec.description, "shutoff", "", "no")
    assert live.creation_time is not None and live.creation_time > 0
    assert live.disks == (SnapshotDisk("vda", "internal", "", ""),)
    images = subprocess.run(["qemu-img", "snapshot", "-l", "-U", str(directory / "disk0.qcow2")], capture_output=True, text=True)
    assert "before-upgrade" in images.stdout


def test_a_disk_only_external_snapshot_makes_the_overlay_it_names(shut_off_domain: tuple[str, Path]):
    name, directory = shut_off_domain
    overlay = directory / "disk0.overlay.qcow2"
    spec = SnapshotSpec(name="overlay", disks=(SnapshotDiskSpec("vda", "external", str(overlay)),))
    live = parse_snapshot(take(name, directory, spec, "--disk-only"))

    assert (live.name, live.memory, live.disks) == ("overlay", "no", (SnapshotDisk("vda", "external", str(overlay), "qcow2"),))
    assert overlay.is_file()
