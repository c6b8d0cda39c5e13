"""The domain snapshot document (vms/hypervisor/documents/snapshot.py):
literal XML for each shape libvirt accepts, and libvirt's description read
back. Pure: no libvirt, no database. tests/integration/test_snapshot_xml.py
hands the same documents to the real daemon."""

from __future__ import annotations

import pytest

from vaporsite.errors import InvalidInput
from vms.hypervisor.documents import DocumentError
from vms.hypervisor.documents.snapshot import parse_snapshot, snapshot_xml
from vms.hypervisor.specs import LiveSnapshot, SnapshotDisk, SnapshotDiskSpec, SnapshotSpec

DISK_ONLY_INTERNAL = """\
<domainsnapshot>
  <name>before-upgrade</name>
  <description>kernel 6.1 -&gt; 6.6 &amp; "friends"</description>
  <memory snapshot="no"/>
  <disks>
    <disk name="vda" snapshot="internal"/>
    <disk name="sda" snapshot="no"/>
  </disks>
</domainsnapshot>
"""

WITH_MEMORY = """\
<domainsnapshot>
  <name>running</name>
  <memory snapshot="internal"/>
</domainsnapshot>
"""

DISK_ONLY_EXTERNAL = """\
<domainsnapshot>
  <name>overlay</name>
  <memory snapshot="no"/>
  <disks>
    <disk name="vda" snapshot="external" type="file">
      <driver type="qcow2"/>
      <source file="/var/lib/libvirt/images/web-disk0.overlay.qcow2"/>
    </disk>
    <disk name="vdb" snapshot="no"/>
  </disks>
</domainsnapshot>
"""

# What libvirt 9.0 describes for a disk-only internal snapshot of a shut-off
# domain (`virsh snapshot-dumpxml`, the <domain> copy shortened).
DESCRIBED = """\
<domainsnapshot>
  <name>before-upgrade</name>
  <description>first</description>
  <state>shutoff</state>
  <parent>
    <name>base</name>
  </parent>
  <creationTime>1764660000</creationTime>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='internal'/>
    <disk name='sda' snapshot='no'/>
  </disks>
  <domain type='qemu'>
    <name>web</name>
    <devices><disk type='file' device='disk'><source file='/x.qcow2'/><target dev='vda' bus='virtio'/></disk></devices>
  </domain>
  <active>0</active>
</domainsnapshot>
"""


def test_disk_only_internal_snapshot_of_a_shut_off_domain():
    spec = SnapshotSpec(
        name="before-upgrade",
        description='kernel 6.1 -> 6.6 & "friends"',
        disks=(SnapshotDiskSpec("vda", "internal"), SnapshotDiskSpec("sda", "no")),
    )
    assert snapshot_xml(spec) == DISK_ONLY_INTERNAL


def test_internal_snapshot_with_memory_leaves_the_disks_to_libvirt():
    assert snapshot_xml(SnapshotSpec(name="running", memory="internal")) == WITH_MEMORY


def test_disk_only_external_snapshot_names_the_overlay_and_its_format():
    spec = SnapshotSpec(
        name="overlay",
        disks=(SnapshotDiskSpec("vda", "external", "/var/lib/libvirt/images/web-disk0.overlay.qcow2"), SnapshotDiskSpec("vdb", "no")),
    )
    assert snapshot_xml(spec) == DISK_ONLY_EXTERNAL


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (SnapshotSpec(name=""), "name", "needs a name"),
        (SnapshotSpec(name="s", memory="internal", disks=(SnapshotDiskSpec("vda", "external", "/o.qcow2"),)), "disks", "vda"),
        (SnapshotSpec(name="s", disks=(SnapshotDiskSpec("vdb", "external"),)), "disks", "vdb needs a file"),
    ],
)
def test_shapes_libvirt_refuses_are_refused_first(spec: SnapshotSpec, field: str, message: str):
    with pytest.raises(InvalidInput, match=message) as caught:
        snapshot_xml(spec)
    assert caught.value.field == field


def test_metacharacters_stay_data_and_read_back():
    hostile = "a'b\"c<d>&e]]></name><name>x"
    spec = SnapshotSpec(name=hostile, description=hostile, disks=(SnapshotDiskSpec(hostile, "external", hostile),))
    live = parse_snapshot(snapshot_xml(spec))
    assert (live.name, live.description) == (hostile, hostile)
    assert live.disks == (SnapshotDisk(hostile, "external", hostile, "qcow2"),)


def test_characters_xml_cannot_carry_are_invalid_input():
    with pytest.raises(InvalidInput) as caught:
        snapshot_xml(SnapshotSpec(name="s", description="nul\x00"))
    assert caught.value.code == "xml_characters"


def test_libvirts_description_reads_back():
    assert parse_snapshot(DESCRIBED) == LiveSnapshot(
        name="before-upgrade",
        description="first",
        state="shutoff",
        parent="base",
        creation_time=1764660000,
        memory="no",
        disks=(SnapshotDisk("vda", "internal", "", ""), SnapshotDisk("sda", "no", "", "")),
    )


def test_a_request_reads_back_as_built():
    live = parse_snapshot(DISK_ONLY_EXTERNAL)
    assert (live.name, live.state, live.parent, live.creation_time, live.memory) == ("overlay", "", "", None, "no")
    assert live.disks == (
        SnapshotDisk("vda", "external", "/var/lib/libvirt/images/web-disk0.overlay.qcow2", "qcow2"),
        SnapshotDisk("vdb", "no", "", ""),
    )


def test_the_domain_copy_inside_is_not_read_as_the_snapshots_disks():
    assert [d.target_dev for d in parse_snapshot(DESCRIBED).disks] == ["vda", "sda"]


@pytest.mark.parametrize("document", ["<!DOCTYPE domainsnapshot><domainsnapshot/>", "<domain/>", "<domainsnapshot>"])
def test_foreign_broken_or_doctype_documents_are_refused(document: str):
    with pytest.raises(DocumentError):
        parse_snapshot(document)
