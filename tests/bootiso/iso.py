"""The ISO itself, made with xorriso: BIOS boot through isolinux, UEFI through the signed shim and GRUB.

Under UEFI, shim (signed by Microsoft) loads Debian's signed GRUB, so Secure
Boot passes with the keys OVMF enrolls.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.bootiso.initramfs import build_initramfs
from tests.bootiso.packages import unpack
from tests.bootiso.tools import BootIsoError, run

KERNEL_CMDLINE = "console=ttyS0,115200 panic=-1 quiet"


@dataclass(frozen=True)
class Variant:
    """One ISO built from the same packages and initramfs: its file and volume names and its kernel command line."""

    name: str  # the ISO's file name without ".iso"; also names its stamp in the cache
    volume_id: str
    title: str  # the GRUB menu entry
    disk_info: str  # /.disk/info, where Debian's GRUB CD image looks for its disk
    cmdline: str

    @property
    def iso_name(self) -> str:
        return f"{self.name}.iso"


# Reports and powers off.
PROBE = Variant(name="vapor-probe", volume_id="VAPOR_PROBE", title="vapor disk probe", disk_info="Vapor disk probe", cmdline=KERNEL_CMDLINE)
# Reports, then stays up with a shell on ttyS0 (init.sh reads vapor.shell). The
# kernel also logs to the screen (tty0); /dev/console, the last console= named,
# stays the serial port, so what the report prints there is the probe's.
SHELL = Variant(
    name="vapor-shell",
    volume_id="VAPOR_SHELL",
    title="vapor shell probe",
    disk_info="Vapor shell probe",
    cmdline=f"console=tty0 {KERNEL_CMDLINE} vapor.shell",
)
ISO_NAME = PROBE.iso_name


def isolinux_cfg(variant: Variant) -> str:
    return f"""SERIAL 0 115200
DEFAULT probe
PROMPT 0
TIMEOUT 0
LABEL probe
  KERNEL /boot/vmlinuz
  APPEND initrd=/boot/initrd.gz {variant.cmdline}
"""


def grub_cfg(variant: Variant) -> str:
    """Debian's signed GRUB CD image finds its disk through /.disk/info and then sources /boot/grub/grub.cfg from it."""
    return f"""serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry "{variant.title}" {{
    linux /boot/vmlinuz {variant.cmdline}
    initrd /boot/initrd.gz
}}
"""


def build(debs: dict[str, Path], work: Path, variant: Variant = PROBE) -> Path:
    """Unpack `debs` under `work`, lay out `variant`'s ISO tree there and return the ISO written in it."""
    pkgs = work / "pkgs"
    unpack(debs, pkgs)
    module_roots = [p for p in (pkgs / "lib" / "modules").iterdir() if p.is_dir()]
    if len(module_roots) != 1:
        raise BootIsoError(f"expected one kernel version in the kernel package, found {[p.name for p in module_roots]}")
    kver = module_roots[0].name

    tree = work / "iso"
    (tree / "boot" / "grub").mkdir(parents=True)
    (tree / "isolinux").mkdir()
    (tree / ".disk").mkdir()
    shutil.copyfile(pkgs / "boot" / f"vmlinuz-{kver}", tree / "boot" / "vmlinuz")
    initramfs = build_initramfs(pkgs, kver, work / "initramfs")
    (tree / "boot" / "initrd.gz").write_bytes(gzip.compress(initramfs, compresslevel=6, mtime=0))
    shutil.copyfile(pkgs / "usr/lib/ISOLINUX/isolinux.bin", tree / "isolinux" / "isolinux.bin")
    shutil.copyfile(pkgs / "usr/lib/syslinux/modules/bios/ldlinux.c32", tree / "isolinux" / "ldlinux.c32")
    (tree / "isolinux" / "isolinux.cfg").write_text(isolinux_cfg(variant))
    (tree / "boot" / "grub" / "grub.cfg").write_text(grub_cfg(variant))
    (tree / ".disk" / "info").write_text(f"{variant.disk_info}\n")
    _efi_image(
        tree / "boot" / "efi.img",
        shim=pkgs / "usr/lib/shim/shimx64.efi.signed",
        grub=pkgs / "usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed",
    )

    iso = work / variant.iso_name
    run(
        [
            "xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", variant.volume_id, "-r", "-J",
            "-isohybrid-mbr", str(pkgs / "usr/lib/ISOLINUX/isohdpfx.bin"),
            "-c", "isolinux/boot.cat",
            "-b", "isolinux/isolinux.bin", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
            "-eltorito-alt-boot", "-e", "boot/efi.img", "-no-emul-boot", "-isohybrid-gpt-basdat",
            str(tree),
        ]
    )  # fmt: skip
    return iso


def _efi_image(path: Path, *, shim: Path, grub: Path) -> None:
    """A FAT image holding the EFI removable-media path: shim as BOOTX64.EFI loads grubx64.efi next to it."""
    payload = shim.stat().st_size + grub.stat().st_size
    mib = payload // (1 << 20) + 2  # room for the FAT and directories
    with path.open("wb") as handle:
        handle.truncate(mib << 20)
    image = str(path)
    run(["mformat", "-i", image, "-T", str(mib * 2048), "-h", "64", "-s", "32", "-N", "0x56415052", "::"])
    run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"])
    run(["mcopy", "-i", image, str(shim), "::/EFI/BOOT/BOOTX64.EFI"])
    run(["mcopy", "-i", image, str(grub), "::/EFI/BOOT/grubx64.efi"])
