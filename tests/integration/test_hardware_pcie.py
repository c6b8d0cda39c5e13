"""Spare pcie-root-port controllers, checked in libvirt's own answer: every
golden example (and a headless SCSI one with rtl8139 NICs, and one with three SATA controllers) defined by libvirt
keeps exactly SPARE_PCIE_ROOT_PORTS root ports no device sits on, so a disk
or NIC can be hot-plugged. Names are `hardware-...`, removed with `virsh`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lxml import etree

from tests.integration.conftest import unique, virsh
from tests.vms.test_domain_xml import EXAMPLES
from vms.hypervisor.documents.domain import domain_xml
from vms.hypervisor.specs import SPARE_PCIE_ROOT_PORTS, DiskSpec, DomainSpec, NicSpec, target_devs

pytestmark = pytest.mark.libvirt


def headless_scsi_rtl() -> DomainSpec:
    return dataclasses.replace(
        EXAMPLES["legacy-my-vm"](),
        graphics=None,
        cdroms=(),
        disks=(DiskSpec("/x/a.qcow2", "qcow2", "scsi", "sda"), DiskSpec("/x/b.qcow2", "qcow2", "scsi", "sdh")),
        nics=(NicSpec("network", "default", model="rtl8139"), NicSpec("network", "default", model="e1000e")),
    )


def three_sata_controllers() -> DomainSpec:
    devs = target_devs(["sata"] * 14)
    return dataclasses.replace(
        EXAMPLES["legacy-my-vm"](), cdroms=(), disks=tuple(DiskSpec(f"/x/{d}.qcow2", "qcow2", "sata", d) for d in devs)
    )


@pytest.fixture
def name() -> Iterator[str]:
    name = unique("hardware")
    yield name
    virsh("undefine", "--nvram", "--tpm", name, check=False)


def free_root_ports(xml: str) -> int:
    root = etree.fromstring(xml.encode())
    ports = {int(c.get("index", "")) for c in root.iterfind("devices/controller[@type='pci']") if c.get("model") == "pcie-root-port"}
    used = {int(a.get("bus", "0"), 16) for a in root.iter("address") if a.get("type") == "pci"}
    return len(ports - used)


@pytest.mark.parametrize(
    "build", [*EXAMPLES.values(), headless_scsi_rtl, three_sata_controllers], ids=[*EXAMPLES, "headless-scsi-rtl", "sata14"]
)
def test_libvirt_leaves_the_spare_root_ports_free(build: Callable[[], DomainSpec], name: str, tmp_path: Path):
    path = tmp_path / "domain.xml"
    path.write_text(domain_xml(dataclasses.replace(build(), name=name, uuid=None)))
    virsh("define", str(path))
    assert free_root_ports(virsh("dumpxml", "--inactive", name).stdout) == SPARE_PCIE_ROOT_PORTS
