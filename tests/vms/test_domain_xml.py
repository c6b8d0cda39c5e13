"""Domain XML from specs (golden files for the spec's examples) and live XML
read back. Pure: no libvirt, no database.

Golden files live in tests/data/domain/; the tests only compare against
them. After an intended change rewrite them with `.venv/bin/python -m
tests.golden` and review the diff.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from vaporsite.errors import HypervisorError, InvalidInput
from vms.hypervisor.documents.domain import LIBOSINFO_NS, MASK, VAPOR_NS, domain_xml, parse_domain
from vms.hypervisor.specs import (
    BackingSpec,
    CdromSpec,
    DiskBus,
    DiskSpec,
    DomainSpec,
    GraphicsSpec,
    LiveDisk,
    LiveDomain,
    NicSpec,
    controllers_needed,
    drive_index,
    target_devs,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "domain"
IMAGES = "/var/lib/libvirt/images"
ISOS = "/var/lib/libvirt/images/iso"
NS = {"vapor": VAPOR_NS, "libosinfo": LIBOSINFO_NS}


def example_1() -> DomainSpec:
    """Spec example 1: one new 20 GB disk; no networks -> `default`; VNC on loopback."""
    return DomainSpec(
        name="simple-vm",
        memory_mib=2048,
        vcpus=2,
        vapor_id="3f8a2c1e-5b7d-4e9f-8a6c-1d2e3f4a5b6c",
        disks=(DiskSpec(f"{IMAGES}/simple-vm-disk0.qcow2", "qcow2", "virtio", "vda", boot_order=1, backing=()),),
        nics=(NicSpec("network", "default"),),
    )


def example_2(name: str = "windows-vm", images: str = IMAGES, isos: str = ISOS, network: str = "default") -> DomainSpec:
    """Spec example 2: two SATA disks, Windows ISO + driver ISO, UEFI + Secure Boot + TPM under TCG,
    with the clock and SMM the designer gives Windows with Secure Boot."""
    disks, cdroms = target_devs(["sata", "sata"]), target_devs(["sata"] * 4)[2:]
    return DomainSpec(
        name=name,
        memory_mib=8192,
        vcpus=4,
        virt_type="qemu",
        firmware="efi",
        secure_boot=True,
        smm=True,
        tpm=True,
        clock_offset="localtime",
        hyperv_clock=True,
        uuid="5f3c2f0e-8d1b-4c1e-9a57-3b6f2a9d4e01",
        os_id="http://microsoft.com/win/11",
        vapor_id="1d6e0c3a-2b4f-4d8e-9c71-0a5b3e2f6d84",
        disks=(
            DiskSpec(f"{images}/{name}-disk0.qcow2", "qcow2", "sata", disks[0], boot_order=1, backing=()),
            DiskSpec(f"{images}/{name}-disk1.qcow2", "qcow2", "sata", disks[1], backing=()),
        ),
        cdroms=(
            CdromSpec(f"{isos}/windows-11.iso", cdroms[0], boot_order=2),
            CdromSpec(f"{isos}/virtio-win-drivers.iso", cdroms[1]),
        ),
        nics=(NicSpec("network", network),),
    )


def example_3() -> DomainSpec:
    """Spec example 3: a clone, an existing read-write and an existing read-only disk, two bridges.

    The clone is linked: its chain (the template's base, itself an overlay of a raw image) is stated.
    """
    return DomainSpec(
        name="dev-vm",
        memory_mib=16384,
        vcpus=8,
        title="Development VM",
        vapor_id="9b0d4f6a-7c2e-4a1b-b3d5-e6f708192a3b",
        disks=(
            DiskSpec(
                f"{IMAGES}/dev-vm-disk0.qcow2",
                "qcow2",
                "virtio",
                "vda",
                boot_order=1,
                backing=(BackingSpec("/shared/templates/dev-base.qcow2", "qcow2"), BackingSpec("/shared/templates/dev-seed.img", "raw")),
            ),
            DiskSpec("/shared/data/projects.qcow2", "qcow2", "virtio", "vdb", backing=()),
            DiskSpec("/shared/data/documentation.qcow2", "qcow2", "virtio", "vdc", readonly=True, backing=()),
        ),
        nics=(
            NicSpec("bridge", "br0", mac="52:54:00:6b:3c:01"),
            NicSpec("bridge", "br-internal", mac="52:54:00:6b:3c:02"),
        ),
    )


def legacy() -> DomainSpec:
    """The migration section's old request: `disk_size: 50` plus `iso_path`.

    Its disk states no chain (`backing` None), as for a disk row made before Vapor recorded chains.
    """
    return DomainSpec(
        name="my-vm",
        memory_mib=4096,
        vcpus=2,
        vapor_id="c4e5f6a7-b8c9-4d0e-a1f2-a3b4c5d6e7f8",
        disks=(DiskSpec(f"{IMAGES}/my-vm-disk0.qcow2", "qcow2", "virtio", "vda", boot_order=1),),
        cdroms=(CdromSpec("/path/to/iso.iso", "sda", boot_order=2),),
        nics=(NicSpec("network", "default"),),
    )


EXAMPLES: dict[str, Callable[[], DomainSpec]] = {
    "example1-simple-vm": example_1,
    "example2-windows-vm": example_2,
    "example3-dev-vm": example_3,
    "legacy-my-vm": legacy,
}


def tree(spec: DomainSpec, **kwargs: bool) -> etree._Element:
    return etree.fromstring(domain_xml(spec, **kwargs).encode())


def el(parent: etree._Element, path: str) -> etree._Element:
    """The element at `path`, which the test expects to exist."""
    found = parent.find(path, namespaces=NS)
    assert found is not None, f"no {path}"
    return found


@pytest.mark.parametrize("golden", sorted(EXAMPLES))
def test_domain_xml_matches_the_golden_file(golden: str):
    produced = domain_xml(EXAMPLES[golden]())
    # On an intended change: `.venv/bin/python -m tests.golden` rewrites the files; review the diff.
    assert produced == (DATA / f"{golden}.xml").read_text(), "differs from the golden file (python -m tests.golden rewrites it)"


@pytest.fixture(scope="module")
def built_elsewhere() -> list[dict[str, str]]:
    """Every example built by two fresh interpreters with their own string hash seeds (set and
    dict order, object ids and anything else a process picks for itself differ there)."""
    script = "import json; from tests.vms.test_domain_xml import EXAMPLES, domain_xml; "
    script += "print(json.dumps({name: domain_xml(build()) for name, build in EXAMPLES.items()}))"
    root = Path(__file__).resolve().parents[2]
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, check=True, timeout=60)
        runs.append(json.loads(done.stdout))
    return runs


@pytest.mark.parametrize("golden", sorted(EXAMPLES))
def test_output_is_deterministic_and_boot_order_is_per_device_only(golden: str, built_elsewhere: list[dict[str, str]]):
    spec = EXAMPLES[golden]()
    assert [run[golden] for run in built_elsewhere] == [domain_xml(spec)] * len(built_elsewhere)
    root = tree(spec)
    assert root.findall("os/boot") == []
    assert root.findall("os/loader") == []  # firmware auto-selection refuses <loader readonly>
    assert all(driver.get("type") in ("qcow2", "raw") for driver in root.iterfind("devices/disk/driver"))


def test_example_2_reads_back_as_defined():
    live = parse_domain(domain_xml(example_2()))
    assert live == LiveDomain(
        name="windows-vm",
        uuid="5f3c2f0e-8d1b-4c1e-9a57-3b6f2a9d4e01",
        virt_type="qemu",
        firmware="efi",
        loader="",  # chosen by libvirt at start
        loader_secure=False,
        smm=True,
        tpm_model="tpm-crb",
        tpm_version="2.0",
        disks=(
            LiveDisk("disk", "sda", "sata", f"{IMAGES}/windows-vm-disk0.qcow2", "qcow2", False, 1, backing=()),
            LiveDisk("disk", "sdb", "sata", f"{IMAGES}/windows-vm-disk1.qcow2", "qcow2", False, None, backing=()),
            LiveDisk("cdrom", "sdc", "sata", f"{ISOS}/windows-11.iso", "raw", True, 2),
            LiveDisk("cdrom", "sdd", "sata", f"{ISOS}/virtio-win-drivers.iso", "raw", True, None),
        ),
        macs=(),
        graphics_type="vnc",
        graphics_port=None,
        graphics_listen="127.0.0.1",
    )


def test_live_xml_of_a_running_uefi_secure_boot_domain_is_read():
    live = parse_domain((DATA / "live-example2.xml").read_text())
    assert live == LiveDomain(
        name="windows-vm",
        uuid="5f3c2f0e-8d1b-4c1e-9a57-3b6f2a9d4e01",
        virt_type="qemu",
        firmware="efi",  # the live <os> has no firmware attribute any more, only the pflash loader
        loader="/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
        loader_secure=True,
        smm=True,
        tpm_model="tpm-crb",
        tpm_version="2.0",
        disks=(
            LiveDisk("disk", "sda", "sata", f"{IMAGES}/windows-vm-disk0.qcow2", "qcow2", False, 1, backing=()),
            LiveDisk("disk", "sdb", "sata", f"{IMAGES}/windows-vm-disk1.qcow2", "qcow2", False, None, backing=()),
            LiveDisk("cdrom", "sdc", "sata", f"{ISOS}/windows-11.iso", "raw", True, 2, backing=()),
            LiveDisk("cdrom", "sdd", "sata", f"{ISOS}/virtio-win-drivers.iso", "raw", True, None, backing=()),
        ),
        macs=("52:54:00:4f:50:ad",),
        graphics_type="vnc",
        graphics_port=5900,
        graphics_listen="127.0.0.1",
    )


def test_bios_domain_reads_back_as_bios_without_loader_smm_or_tpm():
    root = tree(example_1())
    assert el(root, "os").get("firmware") is None
    assert root.find("os/firmware") is None
    live = parse_domain(domain_xml(example_1()))
    assert (live.firmware, live.loader, live.loader_secure, live.smm, live.tpm_model, live.tpm_version) == (
        "bios",
        "",
        False,
        False,
        "",
        "",
    )


def test_plain_uefi_turns_both_firmware_features_off_and_leaves_smm_out():
    root = tree(dataclasses.replace(example_2(), secure_boot=False, smm=False))
    features = {f.get("name"): f.get("enabled") for f in root.iterfind("os/firmware/feature")}
    assert features == {"enrolled-keys": "no", "secure-boot": "no"}
    assert el(root, "os").get("firmware") == "efi"
    assert root.find("features/smm") is None


@pytest.mark.parametrize("change", [{"firmware": "bios"}, {"smm": False}])
def test_a_secure_boot_spec_without_uefi_or_smm_is_never_written(change: dict[str, object]):
    with pytest.raises(ValueError, match="UEFI firmware and SMM"):
        domain_xml(dataclasses.replace(example_2(), **change))  # type: ignore[arg-type]


def test_password_is_masked_only_when_asked():
    spec = dataclasses.replace(example_1(), graphics=GraphicsSpec(password="pa<s&'w"))
    assert el(tree(spec), "devices/graphics").get("passwd") == "pa<s&'w"
    masked = domain_xml(spec, mask_secrets=True)
    assert el(etree.fromstring(masked.encode()), "devices/graphics").get("passwd") == MASK
    assert "pa<s" not in masked and "pa&lt;s" not in masked


@pytest.mark.parametrize("mask_secrets", [False, True])
def test_graphics_without_password_has_no_passwd_attribute(mask_secrets: bool):
    assert "passwd" not in el(tree(example_1(), mask_secrets=mask_secrets), "devices/graphics").attrib


def test_autoport_graphics_listens_on_the_given_address():
    graphics = el(tree(example_1()), "devices/graphics")
    assert graphics.attrib == {"type": "vnc", "port": "-1", "autoport": "yes", "listen": "127.0.0.1"}
    assert el(graphics, "listen").attrib == {"type": "address", "address": "127.0.0.1"}


def test_fixed_spice_port_turns_autoport_off_and_reads_back():
    spec = dataclasses.replace(example_1(), graphics=GraphicsSpec(type="spice", port=5905, listen="::1"))
    graphics = el(tree(spec), "devices/graphics")
    assert (graphics.get("type"), graphics.get("port"), graphics.get("autoport")) == ("spice", "5905", "no")
    live = parse_domain(domain_xml(spec))
    assert (live.graphics_type, live.graphics_port, live.graphics_listen) == ("spice", 5905, "::1")


def test_headless_domain_has_no_graphics_video_or_tablet():
    spec = dataclasses.replace(example_1(), graphics=None)
    devices = el(tree(spec), "devices")
    assert [devices.find(tag) for tag in ("graphics", "video", "input")] == [None, None, None]
    live = parse_domain(domain_xml(spec))
    assert (live.graphics_type, live.graphics_port, live.graphics_listen) == ("", None, "")


@pytest.mark.parametrize(
    ("disk_bus", "cdrom_bus", "controllers"),
    [("virtio", "sata", 0), ("scsi", "sata", 1), ("virtio", "scsi", 1), ("scsi", "scsi", 1)],
)
def test_a_virtio_scsi_controller_comes_with_any_scsi_device(disk_bus: str, cdrom_bus: str, controllers: int):
    spec = dataclasses.replace(
        legacy(),
        disks=(DiskSpec("/d0.qcow2", "qcow2", disk_bus, "sda"),),  # type: ignore[arg-type]
        cdroms=(CdromSpec("/c.iso", "sdb", bus=cdrom_bus),),  # type: ignore[arg-type]
    )
    found = tree(spec).findall("devices/controller[@type='scsi']")
    assert len(found) == controllers
    assert all(c.get("model") == "virtio-scsi" for c in found)


def test_qcow2_disks_pass_discard_and_raw_disks_and_cdroms_do_not():
    spec = dataclasses.replace(legacy(), disks=(*legacy().disks, DiskSpec("/raw.img", "raw", "virtio", "vdb")))
    drivers = {el(d, "target").get("dev"): dict(el(d, "driver").attrib) for d in tree(spec).iterfind("devices/disk")}
    assert drivers == {
        "vda": {"name": "qemu", "type": "qcow2", "discard": "unmap"},
        "vdb": {"name": "qemu", "type": "raw"},
        "sda": {"name": "qemu", "type": "raw"},
    }


def test_serial_log_keeps_the_pty_and_logs_it_to_the_file():
    devices = el(tree(dataclasses.replace(example_1(), serial_log="/tmp/guest/serial.log")), "devices")
    assert el(devices, "serial").get("type") == "pty" and el(devices, "console").get("type") == "pty"
    assert el(devices, "serial/log").attrib == {"file": "/tmp/guest/serial.log", "append": "off"}
    assert el(devices, "console/target").attrib == {"type": "serial", "port": "0"}


def test_without_serial_log_serial_and_console_are_a_pty():
    devices = el(tree(example_1()), "devices")
    assert [el(devices, tag).get("type") for tag in ("serial", "console")] == ["pty", "pty"]
    assert devices.find("serial/source") is None


def test_the_clock_is_written_as_the_spec_says_whatever_the_os():
    windows = el(tree(example_2()), "clock")
    assert (windows.get("offset"), el(windows, "timer").attrib) == ("localtime", {"name": "hypervclock", "present": "yes"})
    assert el(tree(example_1()), "clock").attrib == {"offset": "utc"}
    assert el(tree(dataclasses.replace(example_2(), clock_offset="utc", hyperv_clock=False)), "clock").attrib == {"offset": "utc"}
    assert el(tree(dataclasses.replace(example_1(), clock_offset="localtime")), "clock").attrib == {"offset": "localtime"}


def test_metadata_carries_vapor_id_and_libosinfo_id_in_their_namespaces():
    metadata = el(tree(example_2()), "metadata")
    assert metadata.findtext("vapor:vm/vapor:id", namespaces=NS) == "1d6e0c3a-2b4f-4d8e-9c71-0a5b3e2f6d84"
    assert el(metadata, "libosinfo:libosinfo/libosinfo:os").get("id") == "http://microsoft.com/win/11"
    bare = tree(dataclasses.replace(example_1(), vapor_id=""))
    assert bare.find("metadata") is None


HOSTILE = [
    "a'b\"c<d>&e]]>",
    '</source><source file="/etc/shadow"/>',
    "x'/><disk type='file' device='disk'><source file='/etc/shadow'/></disk><y a='",
    "&amp;&#x41;&lt;<!--c--><![CDATA[z]]>",
    "multi\nline\ttab and trailing ",
    "ünïcødé ☃ 𝄞",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_metacharacters_in_every_string_field_stay_data(hostile: str):
    spec = DomainSpec(
        name=hostile,
        memory_mib=1024,
        vcpus=1,
        arch=hostile,
        machine=hostile,
        uuid=hostile,
        title=hostile,
        os_id=hostile,
        vapor_id=hostile,
        serial_log=hostile,
        disks=(DiskSpec(hostile, "qcow2", "virtio", hostile, boot_order=1),),
        cdroms=(CdromSpec(hostile, hostile),),
        nics=(NicSpec("network", hostile, mac=hostile), NicSpec("bridge", hostile, mac=hostile)),
        graphics=GraphicsSpec(listen=hostile, password=hostile),
    )
    root = tree(spec)

    # 4 sources: 2 disks, 2 interfaces; the serial log is a <log file=...>, counted on its own.
    assert len(root.findall("devices/serial/log")) == 1
    assert [len(root.findall(path)) for path in ("name", "uuid", "title", "devices/disk", "devices/interface", ".//source")] == [
        1,
        1,
        1,
        2,
        2,
        4,
    ]
    assert [root.findtext(path) for path in ("name", "uuid", "title")] == [hostile] * 3
    assert root.findtext("metadata/vapor:vm/vapor:id", namespaces=NS) == hostile
    assert el(root, "metadata/libosinfo:libosinfo/libosinfo:os").get("id") == hostile
    assert [el(root, "os/type").get(a) for a in ("arch", "machine")] == [hostile, hostile]
    assert [el(d, "source").get("file") for d in root.iterfind("devices/disk")] == [hostile, hostile]
    assert [el(d, "target").get("dev") for d in root.iterfind("devices/disk")] == [hostile, hostile]
    assert [el(i, "source").get(i.get("type", "")) for i in root.iterfind("devices/interface")] == [hostile, hostile]
    assert [m.get("address") for m in root.iterfind("devices/interface/mac")] == [hostile, hostile]
    assert el(root, "devices/serial/log").get("file") == hostile
    graphics = el(root, "devices/graphics")
    assert [graphics.get("listen"), graphics.get("passwd"), el(graphics, "listen").get("address")] == [hostile] * 3
    assert el(root, "devices/disk/source").get("file") != "/etc/shadow"

    live = parse_domain(domain_xml(spec))
    assert (live.name, live.uuid, live.macs, live.graphics_listen) == (hostile, hostile, (hostile, hostile), hostile)
    assert [(d.source, d.target_dev) for d in live.disks] == [(hostile, hostile)] * 2


@pytest.mark.parametrize("bad", ["nul\x00byte", "bell\x07", "lone\ud800surrogate"])
def test_characters_xml_cannot_carry_are_invalid_input(bad: str):
    with pytest.raises(InvalidInput) as caught:
        domain_xml(dataclasses.replace(example_1(), title=bad))
    assert caught.value.code == "xml_characters"


def test_parse_refuses_a_doctype_so_entities_never_expand():
    document = '<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/passwd">]><domain type="kvm"><name>&x;</name></domain>'
    with pytest.raises(HypervisorError, match="DOCTYPE"):
        parse_domain(document)


@pytest.mark.parametrize(
    ("document", "message"),
    [("<domain><name>x</domain>", "does not parse"), ("<network><name>x</name></network>", "expected a <domain>"), ("", "does not parse")],
)
def test_parse_turns_broken_or_foreign_documents_into_hypervisor_errors(document: str, message: str):
    with pytest.raises(HypervisorError, match=message):
        parse_domain(document)


def test_parse_reads_empty_cdrom_block_disk_unassigned_port_and_skips_floppies():
    document = """<?xml version="1.0" encoding="UTF-8"?>
    <domain type='kvm'>
      <name>odd</name>
      <os><type>hvm</type><loader type='rom'>/usr/share/seabios/bios.bin</loader></os>
      <features><smm state='off'/></features>
      <devices>
        <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk>
        <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/lv'/><target dev='vda' bus='virtio'/></disk>
        <disk type='file' device='floppy'><source file='/f.img'/><target dev='fda' bus='fdc'/></disk>
        <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/></interface>
        <graphics type='vnc' port='-1' autoport='yes'><listen type='address' address='127.0.0.2'/></graphics>
      </devices>
    </domain>"""
    live = parse_domain(document)
    assert live.disks == (
        LiveDisk("cdrom", "sda", "sata", "", "raw", True, None),
        LiveDisk("disk", "vda", "virtio", "/dev/vg/lv", "raw", False, None),
    )
    assert (live.firmware, live.loader, live.smm, live.uuid) == ("bios", "/usr/share/seabios/bios.bin", False, "")
    assert (live.macs, live.graphics_port, live.graphics_listen) == (("52:54:00:00:00:01",), None, "127.0.0.2")


def test_drive_names_map_back_to_their_index():
    names = target_devs(["sata"] * 800)
    assert [drive_index(name) for name in names] == list(range(800))
    assert (names[25], names[26], names[701], names[702]) == ("sdz", "sdaa", "sdzz", "sdaaa")


def test_every_scsi_controller_the_drive_names_address_is_virtio_scsi():
    """libvirt puts sdX on SCSI controller index(X) // 7 and adds the controllers missing,
    as lsilogic; the builder writes them all, as virtio-scsi. SATA drives share the sdX names."""
    sata: DiskBus = "sata"
    scsi: DiskBus = "scsi"
    buses = [sata] * 3 + [scsi] * 12  # the SCSI disks are sdd..sdo: indexes 3..14, controllers 0..2
    devs = target_devs([str(bus) for bus in buses])
    spec = dataclasses.replace(
        legacy(), disks=tuple(DiskSpec(f"/d{i}.qcow2", "qcow2", bus, dev) for i, (bus, dev) in enumerate(zip(buses, devs, strict=True)))
    )
    found = tree(spec).findall("devices/controller[@type='scsi']")
    assert [(c.get("index"), c.get("model")) for c in found] == [("0", "virtio-scsi"), ("1", "virtio-scsi"), ("2", "virtio-scsi")]
    assert controllers_needed("sata", devs[:3]) == 1 and controllers_needed("sata", ["sdg"]) == 2
