"""The disk-probe ISO (tests/bootiso/) boots under the real libvirtd and reports what the guest sees.

Two TCG guests, defined here with hand-written XML so the fixture is proven
independently of Vapor's own domain builder: a BIOS q35 guest with a SATA
disk, a read-only virtio disk and the ISO as a SATA CD-ROM, and a UEFI +
Secure Boot guest with a TPM. Each one must print the probe's report on its
serial log and power itself off. Every libvirt object is named `h7-...`.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from lxml.builder import E

from tests.bootiso import MARKER, BootIsoError, ProbeDisk, ProbeReport, build_probe_iso, initramfs, parse_probe_output
from tests.bootiso import cache as probe_cache
from tests.bootiso.iso import ISO_NAME, PROBE, Variant
from tests.bootiso.packages import ensure_debs
from tests.integration.conftest import virsh
from vms.hypervisor.libvirt_driver import LibvirtDriver

BOOT_TIMEOUT = 300.0  # TCG boots take 7-23 s alone; several TCG guests on 2 cores can take minutes
POWEROFF_TIMEOUT = 30.0
MIB = 1 << 20

SAMPLE_LOG = (
    "\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001\r\n"
    "DISK name=sda sectors=409600 bytes=209715200 ro=0 removable=0\r\n"
    "[    3.1] a kernel line\r\n"
    "DISK name=sr0 sectors=34816 bytes=17825792 ro=1 removable=1\r\n"
    "DISK name=vda sectors=131072 bytes=67108864 ro=1 removable=0\r\n"
    "FIRMWARE=efi secureboot=1\r\n"
    f"{MARKER}\r\n"
    "DISK name=sdz sectors=1 bytes=512 ro=0 removable=0\r\n"
)


def test_report_is_read_from_a_noisy_serial_log():
    report = parse_probe_output(SAMPLE_LOG)
    assert report.complete
    assert (report.firmware, report.secure_boot) == ("efi", True)
    assert [d.name for d in report.disks] == ["sda", "sr0", "vda"]
    assert report.disk("vda") == ProbeDisk(name="vda", sectors=131072, bytes=67108864, ro=True, removable=False)
    assert report.disk("sr0").removable and report.disk("sr0").ro


def test_report_without_marker_is_incomplete_and_lines_after_it_are_ignored():
    cut = parse_probe_output(SAMPLE_LOG.split("FIRMWARE")[0])
    assert not cut.complete
    assert cut.firmware == "" and not cut.secure_boot
    assert len(cut.disks) == 3
    with pytest.raises(KeyError, match="sdz"):
        parse_probe_output(SAMPLE_LOG).disk("sdz")


def _fake_module(path: Path, modinfo: dict[str, str]) -> None:
    """A minimal 64-bit ELF whose only content is a .modinfo section, xz-compressed when the name says so."""
    names = b"\0.shstrtab\0.modinfo\0"
    info = b"".join(f"{key}={value}\0".encode() for key, value in modinfo.items())
    shoff = 64 + len(names) + len(info)

    def header(name: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1 if name else 0, 0, 0, offset, size, 0, 0, 1, 0)

    elf = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    elf += names + info + header(0, 0, 0) + header(1, 64, len(names)) + header(11, 64 + len(names), len(info))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress(elf) if path.name.endswith(".xz") else elf)


def test_module_closure_follows_depends_through_compressed_modules_and_skips_builtins(tmp_path: Path):
    kernel = tmp_path / "kernel"
    _fake_module(kernel / "drivers/ata/ahci.ko.xz", {"license": "GPL", "depends": "libahci,scsi-mod"})
    _fake_module(kernel / "drivers/ata/libahci.ko", {"depends": "libata"})
    _fake_module(kernel / "drivers/scsi/scsi_mod.ko.xz", {"depends": ""})
    _fake_module(kernel / "drivers/unrelated.ko", {"depends": ""})
    (tmp_path / "modules.builtin").write_text("kernel/drivers/ata/libata.ko\n")

    closure = initramfs.module_closure(tmp_path, ("ahci",))

    assert [p.as_posix() for p in closure] == [
        "kernel/drivers/ata/ahci.ko.xz",
        "kernel/drivers/ata/libahci.ko",
        "kernel/drivers/scsi/scsi_mod.ko.xz",
    ]
    assert initramfs.modinfo(initramfs.module_bytes(tmp_path / closure[0]))["license"] == "GPL"
    with pytest.raises(BootIsoError, match="no_such_driver"):
        initramfs.module_closure(tmp_path, ("no-such-driver",))


def test_init_script_is_a_busybox_script_with_every_placeholder_filled():
    script = initramfs.init_script()
    assert script.startswith("#!/bin/busybox sh\n")
    assert not re.search(r"@[A-Z_]+@", script), "a placeholder of init.sh was left unfilled"
    assert f'echo "{MARKER}"' in script
    assert f"for m in {' '.join(initramfs.PROBE_MODULES)}; do" in script


@pytest.mark.slow
def test_fresh_iso_is_reused_without_rebuilding():
    first = build_probe_iso()
    before = first.stat()
    second = build_probe_iso()
    assert second == first
    assert (second.stat().st_ino, second.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.slow
def test_stale_iso_is_rebuilt_once_when_two_callers_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A stamp from other inputs forces a rebuild; the lock makes the second caller wait and reuse it."""
    cached = build_probe_iso()
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    for deb in (cached.parent / "debs").glob("*.deb"):  # no second download
        try:
            os.link(deb, cache / "debs" / deb.name)
        except OSError:  # another file system
            shutil.copyfile(deb, cache / "debs" / deb.name)
    shutil.copyfile(cached, cache / ISO_NAME)
    (cache / probe_cache.STAMP_NAME).write_text('{"builder_sha256": "older builder", "packages": {}}')
    stale_inode = (cache / ISO_NAME).stat().st_ino

    builds: list[Path] = []
    real_build = probe_cache.build

    def counting_build(debs: dict[str, Path], work: Path, variant: Variant = PROBE) -> Path:
        builds.append(work)
        return real_build(debs, work, variant)

    monkeypatch.setattr(probe_cache, "build", counting_build)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(build_probe_iso(cache))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert results == [cache / ISO_NAME] * 2
    assert len(builds) == 1
    assert (cache / ISO_NAME).stat().st_ino != stale_inode
    assert not list(cache.glob(".build-*"))
    assert probe_cache.read_json(cache / probe_cache.STAMP_NAME) == probe_cache.stamp_of(ensure_debs(cache / "debs"))


# --- booting it -------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_iso() -> Path:
    return build_probe_iso()


@pytest.fixture
def guest_dir(hypervisor: LibvirtDriver) -> Iterator[Path]:
    """A directory QEMU (user libvirt-qemu) can reach: pytest's tmp_path sits under a 0700 root directory.

    libvirt chowns disk images and the serial log file to libvirt-qemu itself;
    the directory only has to be searchable.
    """
    directory = Path(tempfile.mkdtemp(prefix="h7-bootiso-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def domains() -> Iterator[list[str]]:
    """Names of the domains a test defined; destroyed and undefined (with NVRAM and TPM state) afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        virsh("destroy", name, check=False)
        virsh("undefine", name, "--nvram", "--tpm", check=False)
        assert virsh("dominfo", name, check=False).returncode != 0, f"domain {name} is still defined"


def _disk(device: str, fmt: str, path: Path, dev: str, bus: str, *, readonly: bool = False, boot: int | None = None) -> etree._Element:
    disk = E.disk(E.driver(name="qemu", type=fmt), E.source(file=str(path)), E.target(dev=dev, bus=bus), type="file", device=device)
    if readonly:
        disk.append(E.readonly())
    if boot is not None:
        disk.append(E.boot(order=str(boot)))
    return disk


def _domain(name: str, log: Path, devices: list[etree._Element], *, uefi_secure: bool = False) -> bytes:
    os_element = E.os(E.type("hvm", arch="x86_64", machine="q35"))
    features = E.features(E.acpi())
    if uefi_secure:
        os_element.set("firmware", "efi")
        os_element.append(E.firmware(E.feature(enabled="yes", name="secure-boot"), E.feature(enabled="yes", name="enrolled-keys")))
        features.append(E.smm(state="on"))
        devices = [*devices, E.tpm(E.backend(type="emulator", version="2.0"), model="tpm-crb")]
    domain = E.domain(
        E.name(name),
        E.memory("512", unit="MiB"),
        E.vcpu("1"),
        os_element,
        features,
        # A guest that panics (panic=-1) or reboots stops instead of looping.
        E.on_poweroff("destroy"),
        E.on_reboot("destroy"),
        E.on_crash("destroy"),
        E.devices(
            *devices,
            E.serial(E.source(path=str(log)), E.target(port="0"), type="file"),
            E.memballoon(model="none"),
        ),
        type="qemu",
    )
    return etree.tostring(domain, pretty_print=True)


def _virsh_ok(*args: str) -> None:
    done = virsh(*args, check=False)
    assert done.returncode == 0, f"virsh {' '.join(args)} failed: {done.stderr.strip()}"


def _state(name: str) -> str:
    return virsh("domstate", name, check=False).stdout.strip()


def _boot(name: str, xml: bytes, workdir: Path, log: Path, domains: list[str]) -> tuple[ProbeReport, str]:
    """Define and start the domain; return the probe's report and the domain state once it settled."""
    xml_file = workdir / f"{name}.xml"
    xml_file.write_bytes(xml)
    _virsh_ok("define", str(xml_file))
    domains.append(name)
    started = time.monotonic()
    _virsh_ok("start", name)
    text = ""
    while time.monotonic() - started < BOOT_TIMEOUT:
        text = log.read_text(errors="replace") if log.exists() else ""
        if MARKER in text or _state(name) == "shut off":
            break
        time.sleep(0.25)
    booted = time.monotonic() - started
    report = parse_probe_output(log.read_text(errors="replace") if log.exists() else "")
    assert report.complete, f"no {MARKER} after {booted:.0f} s (state: {_state(name)}); serial log ends with:\n{text[-3000:]}"
    deadline = time.monotonic() + POWEROFF_TIMEOUT
    while _state(name) != "shut off" and time.monotonic() < deadline:
        time.sleep(0.25)
    print(f"{name}: start -> marker {booted:.1f} s")  # shown with -s / -rP; timings for the record only
    return report, _state(name)


@pytest.mark.libvirt
@pytest.mark.slow
def test_bios_guest_sees_sata_disk_readonly_virtio_disk_and_cdrom(probe_iso: Path, guest_dir: Path, domains: list[str]):
    iso = guest_dir / "probe.iso"
    shutil.copyfile(probe_iso, iso)  # a copy: libvirt chowns what it boots, and the cache is shared
    sata, virtio = guest_dir / "sata.qcow2", guest_dir / "ro.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(sata), "200M"], check=True, timeout=60)
    with virtio.open("wb") as handle:
        handle.truncate(64 * MIB)
    name = f"h7-bios-{uuid.uuid4().hex[:8]}"
    xml = _domain(
        name,
        guest_dir / "serial.log",
        [
            _disk("disk", "qcow2", sata, "sda", "sata"),
            _disk("disk", "raw", virtio, "vda", "virtio", readonly=True),
            _disk("cdrom", "raw", iso, "sdb", "sata", readonly=True, boot=1),
        ],
    )

    report, state = _boot(name, xml, guest_dir, guest_dir / "serial.log", domains)

    assert (report.firmware, report.secure_boot) == ("bios", False)
    assert sorted(d.name for d in report.disks) == ["sda", "sr0", "vda"]
    assert report.disk("sda") == ProbeDisk(name="sda", sectors=409600, bytes=200 * MIB, ro=False, removable=False)
    assert report.disk("vda") == ProbeDisk(name="vda", sectors=131072, bytes=64 * MIB, ro=True, removable=False)
    cdrom = report.disk("sr0")
    assert (cdrom.ro, cdrom.removable, cdrom.bytes) == (True, True, iso.stat().st_size)
    assert state == "shut off", "the probe must power the guest off after its report"


@pytest.mark.libvirt
@pytest.mark.slow
def test_uefi_secure_boot_guest_boots_the_signed_chain_and_sees_secure_boot_on(probe_iso: Path, guest_dir: Path, domains: list[str]):
    iso = guest_dir / "probe.iso"
    shutil.copyfile(probe_iso, iso)
    name = f"h7-uefi-sb-{uuid.uuid4().hex[:8]}"
    xml = _domain(name, guest_dir / "serial.log", [_disk("cdrom", "raw", iso, "sda", "sata", readonly=True, boot=1)], uefi_secure=True)

    report, state = _boot(name, xml, guest_dir, guest_dir / "serial.log", domains)

    assert (report.firmware, report.secure_boot) == ("efi", True)
    assert [d.name for d in report.disks] == ["sr0"]
    assert state == "shut off"
