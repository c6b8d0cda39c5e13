"""The domain XML builder checked by libvirt itself: every golden example is
accepted by `virsh define`, and example 2 (UEFI + Secure Boot + TPM, two SATA
disks, two CD-ROMs) really starts under TCG and its live XML reads back with
the secure loader, SMM, the TPM and both CD-ROMs.

Everything created here is named `h5-...` and removed again with `virsh`,
independently of the code under test.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from tests.integration.conftest import remove_network, unique, virsh
from tests.vms.test_domain_xml import EXAMPLES, example_1, example_2
from vms.hypervisor.documents.domain import VAPOR_NS, domain_xml, parse_domain
from vms.hypervisor.libvirt_driver import LibvirtDriver
from vms.hypervisor.specs import DomainSpec, GraphicsSpec, LiveDisk

pytestmark = pytest.mark.libvirt


@pytest.fixture
def domain_name(hypervisor: LibvirtDriver) -> Iterator[str]:
    """A fresh name; whatever was defined under it is destroyed and undefined with its NVRAM and TPM state."""
    name = unique("h5")
    yield name
    virsh("destroy", name, check=False)
    virsh("undefine", "--nvram", "--tpm", name, check=False)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """QEMU runs as libvirt-qemu, which cannot enter pytest's 0700 temporary directories."""
    path = Path(tempfile.mkdtemp(prefix="h5-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def isolated_network(hypervisor: LibvirtDriver, shared_dir: Path) -> Iterator[str]:
    """A transient network without addresses: a NIC to start with, no DHCP, no NAT, nothing shared."""
    name = unique("h5-net")
    network = etree.Element("network")
    etree.SubElement(network, "name").text = name
    etree.SubElement(network, "bridge", name="h5br" + name[-8:])
    path = shared_dir / "network.xml"
    path.write_bytes(etree.tostring(network))
    virsh("net-create", str(path))
    yield name
    remove_network(name)


def define(spec: DomainSpec, directory: Path) -> str:
    """`virsh define` the builder's document; the inactive XML libvirt kept."""
    path = directory / f"{spec.name}.xml"
    path.write_text(domain_xml(spec))
    done = virsh("define", str(path), check=False)
    assert done.returncode == 0, done.stderr
    return virsh("dumpxml", "--inactive", spec.name).stdout


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_libvirt_accepts_every_golden_example(example: str, domain_name: str, tmp_path: Path):
    spec = dataclasses.replace(EXAMPLES[example](), name=domain_name, uuid=None)
    kept = define(spec, tmp_path)

    live = parse_domain(kept)
    assert (live.name, live.virt_type, live.firmware, live.smm) == (domain_name, spec.virt_type, spec.firmware, spec.secure_boot)
    assert [(d.source, d.target_dev, d.format, d.readonly, d.boot_order) for d in live.disks] == [
        *((d.path, d.target_dev, d.format, d.readonly, d.boot_order) for d in spec.disks),
        *((c.path, c.target_dev, "raw", True, c.boot_order) for c in spec.cdroms),
    ]
    assert etree.fromstring(kept.encode()).findtext("metadata/vapor:vm/vapor:id", namespaces={"vapor": VAPOR_NS}) == spec.vapor_id

    virsh("undefine", "--nvram", "--tpm", domain_name)
    assert domain_name not in virsh("list", "--all", "--name").stdout.split()


def make_files(spec: DomainSpec) -> None:
    """Thin qcow2 disks and stand-in 'ISOs' (raw files) where the spec points."""
    for disk in spec.disks:
        subprocess.run(["qemu-img", "create", "-q", "-f", disk.format, disk.path, "1G"], check=True, timeout=60)
    for cdrom in spec.cdroms:
        with open(cdrom.path, "wb") as iso:
            iso.truncate(1024 * 1024)


def test_example_2_runs_under_tcg_with_secure_loader_tpm_and_two_cdroms(domain_name: str, shared_dir: Path, isolated_network: str):
    spec = dataclasses.replace(
        example_2(name=domain_name, images=str(shared_dir), isos=str(shared_dir), network=isolated_network),
        memory_mib=1024,  # kinder to a shared 2-core CI host than the example's 8 GiB
        uuid=None,
        serial_log=str(shared_dir / "serial.log"),
    )
    make_files(spec)
    define(spec, shared_dir)

    virsh("start", domain_name)
    document = virsh("dumpxml", domain_name).stdout
    live = parse_domain(document)

    assert (live.firmware, live.loader_secure, live.smm) == ("efi", True, True)
    assert Path(live.loader).is_file()
    assert (live.tpm_model, live.tpm_version) == ("tpm-crb", "2.0")
    assert live.disks == (  # the disks state "no backing file" as the spec did; libvirt adds the same to the CD-ROMs
        LiveDisk("disk", "sda", "sata", spec.disks[0].path, "qcow2", False, 1, backing=()),
        LiveDisk("disk", "sdb", "sata", spec.disks[1].path, "qcow2", False, None, backing=()),
        LiveDisk("cdrom", "sdc", "sata", spec.cdroms[0].path, "raw", True, 2, backing=()),
        LiveDisk("cdrom", "sdd", "sata", spec.cdroms[1].path, "raw", True, None, backing=()),
    )
    assert len(live.macs) == 1 and live.macs[0].startswith("52:54:00:")
    assert live.graphics_type == "vnc" and live.graphics_port is not None and live.graphics_port >= 5900
    assert live.graphics_listen == "127.0.0.1"
    assert Path(spec.serial_log).exists()

    # Undefining with the NVRAM and TPM flags removes the state files libvirt made for the domain.
    nvram = etree.fromstring(document.encode()).findtext("os/nvram") or ""
    tpm_state = Path("/var/lib/libvirt/swtpm") / live.uuid
    assert Path(nvram).is_file() and tpm_state.is_dir()
    destroy(domain_name)
    virsh("undefine", "--nvram", "--tpm", domain_name)
    assert not Path(nvram).exists() and not tpm_state.exists()


def destroy(name: str) -> None:
    """`virsh destroy`, tried again: on a loaded host libvirt can give up waiting
    for a TCG process to die ("Failed to terminate process ... Device or resource busy")."""
    for _attempt in range(3):
        if virsh("destroy", name, check=False).returncode == 0:
            return
        time.sleep(2)
    virsh("destroy", name)


def test_the_real_password_reaches_libvirt_which_shows_it_only_with_security_info(domain_name: str, tmp_path: Path):
    define(dataclasses.replace(example_1(), name=domain_name, graphics=GraphicsSpec(password="s3cret")), tmp_path)

    def passwd(*flags: str) -> str | None:
        graphics = etree.fromstring(virsh("dumpxml", *flags, domain_name).stdout.encode()).find("devices/graphics")
        assert graphics is not None
        return graphics.get("passwd")

    assert (passwd("--security-info"), passwd()) == ("s3cret", None)
