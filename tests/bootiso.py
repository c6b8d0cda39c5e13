"""A tiny bootable "disk probe" ISO, built from Debian packages, for in-guest checks.

Why: the only proof that a domain's disks, read-only flags and firmware are what
the API promised is to look from inside the guest. This ISO boots (BIOS through
isolinux, UEFI through the signed shim + GRUB, so Secure Boot passes with the
Microsoft keys OVMF enrolls), prints what the guest kernel sees on the serial
console and powers off:

    DISK name=sda sectors=409600 bytes=209715200 ro=0 removable=0
    FIRMWARE=efi secureboot=1
    VAPOR-PROBE-DONE

Packages are fetched with `apt-get download` (the Debian mirror only) and
unpacked with `dpkg-deb -x`; nothing is installed. The ISO is cached: it is
rebuilt only when it is missing or the inputs changed (this file, which holds
the /init script and boot configs, and the exact .deb files). A fetched .deb
stays pinned in the cache until someone deletes it, so a warm run makes no
apt call at all and the guest kernel does not change under the tests.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MARKER = "VAPOR-PROBE-DONE"

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / "var" / "cache" / "bootiso"
ISO_NAME = "vapor-probe.iso"
STAMP_NAME = "vapor-probe.stamp.json"

# The kernel's flavour package: its Depends names today's versioned image. The
# cloud flavour lacks AHCI/SATA, so the generic one it is.
KERNEL_META_PACKAGE = "linux-image-amd64"
KERNEL_DEB_GLOB = "linux-image-[0-9]*-amd64_*.deb"
# shimx64.efi.signed is in shim-signed itself; nothing from shim-signed-common
# or shim-helpers-* is needed (no MokManager, no fallback loader).
FIXED_PACKAGES = ("busybox-static", "isolinux", "syslinux-common", "shim-signed", "grub-efi-amd64-signed")

# Every bus the API offers: virtio, SATA (AHCI on q35), IDE (PIIX on pc), SCSI
# (virtio-scsi, or the LSI controller libvirt picks by default), plus CD-ROMs
# Dependencies are added. efivarfs (which shows the Secure Boot state) is
# loaded only under UEFI: elsewhere it refuses to load.
PROBE_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "ahci", "ata_piix", "sym53c8xx", "sd_mod", "sr_mod")
EFI_MODULE = "efivarfs"

KERNEL_CMDLINE = "console=ttyS0,115200 panic=-1 quiet"
APT_TIMEOUT = 600
TOOL_TIMEOUT = 120

# PID 1 of the guest. Bounded everywhere: a probe that hangs would cost a test
# its whole timeout instead of failing with the serial log in hand.
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Only emergencies from the kernel on the console: a warning printed in the
# middle of a DISK line would make it unreadable.
dmesg -n 1
for m in @MODULES@; do
    modprobe "$m" || echo "PROBE-NOTE modprobe $m failed"
done

# SCSI disks and CD-ROMs (types 0, 5, 7, 14) that have no block device yet.
pending() {
    n=0
    for d in /sys/bus/scsi/devices/*:*:*:*; do
        [ -r "$d/type" ] || continue
        case "$(cat "$d/type")" in
            0|5|7|14) [ -d "$d/block" ] || n=$((n + 1)) ;;
        esac
    done
    echo "$n"
}
snapshot() {
    for b in /sys/block/*; do
        [ -e "$b" ] || continue
        echo "${b##*/}:$(cat "$b/size"):$(cat "$b/ro")"
    done
    echo "pending=$(pending)"
}

# Settled = nothing pending and the same picture three times, 0.25 s apart;
# give up after 20 s and report what is there.
prev=""
stable=0
i=0
while [ "$i" -lt 80 ]; do
    cur="$(snapshot)"
    if [ "$cur" = "$prev" ] && [ "$(pending)" = 0 ]; then
        stable=$((stable + 1))
        [ "$stable" -ge 2 ] && break
    else
        stable=0
    fi
    prev="$cur"
    usleep 250000
    i=$((i + 1))
done

for b in /sys/block/*; do
    name="${b##*/}"
    case "$name" in
        '*'|loop*|ram*|zram*) continue ;;
    esac
    sectors="$(cat "$b/size")"
    echo "DISK name=$name sectors=$sectors bytes=$((sectors * 512)) ro=$(cat "$b/ro") removable=$(cat "$b/removable")"
done

if [ -d /sys/firmware/efi ]; then
    modprobe @EFI_MODULE@ || echo "PROBE-NOTE modprobe @EFI_MODULE@ failed"
    mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
    sb=0
    var=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
    # 4 bytes of attributes, then the value (busybox's od here has no -j/-N).
    if [ -r "$var" ]; then
        # shellcheck disable=SC2046
        set -- $(od -An -tu1 "$var")
        [ "${5:-0}" = 1 ] && sb=1
    fi
    echo "FIRMWARE=efi secureboot=$sb"
else
    echo "FIRMWARE=bios secureboot=0"
fi
echo "@MARKER@"
sync
poweroff -f
"""

ISOLINUX_CFG = f"""SERIAL 0 115200
DEFAULT probe
PROMPT 0
TIMEOUT 0
LABEL probe
  KERNEL /boot/vmlinuz
  APPEND initrd=/boot/initrd.gz {KERNEL_CMDLINE}
"""

# Debian's signed GRUB CD image finds its disk through /.disk/info and then
# sources /boot/grub/grub.cfg from it.
GRUB_CFG = f"""serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry "vapor disk probe" {{
    linux /boot/vmlinuz {KERNEL_CMDLINE}
    initrd /boot/initrd.gz
}}
"""


class BootIsoError(RuntimeError):
    """The probe ISO could not be built (a tool or a download failed)."""


@dataclass(frozen=True)
class ProbeDisk:
    """One block device as the guest kernel saw it (`sectors` are 512-byte units, as in sysfs)."""

    name: str
    sectors: int
    bytes: int
    ro: bool
    removable: bool


@dataclass(frozen=True)
class ProbeReport:
    """What the probe printed. `firmware` is "efi", "bios", or "" when that line never came."""

    disks: tuple[ProbeDisk, ...]
    firmware: str
    secure_boot: bool
    complete: bool

    def disk(self, name: str) -> ProbeDisk:
        for disk in self.disks:
            if disk.name == name:
                return disk
        raise KeyError(f"the guest reported no disk {name!r} (saw: {', '.join(d.name for d in self.disks) or 'none'})")


_DISK_LINE = re.compile(r"DISK name=(?P<name>\S+) sectors=(?P<sectors>\d+) bytes=(?P<bytes>\d+) ro=(?P<ro>[01]) removable=(?P<rm>[01])")
_FIRMWARE_LINE = re.compile(r"FIRMWARE=(?P<fw>efi|bios) secureboot=(?P<sb>[01])")


def parse_probe_output(text: str) -> ProbeReport:
    """Read the probe's lines out of a serial log.

    The log also holds firmware and boot loader output (with terminal escape
    codes), so lines are searched, not matched whole. Only what comes before
    the first marker counts: a guest that rebooted and printed again must not
    double its disks.
    """
    disks: list[ProbeDisk] = []
    firmware = ""
    secure_boot = False
    complete = False
    for line in text.splitlines():
        if MARKER in line:
            complete = True
            break
        if match := _DISK_LINE.search(line):
            disks.append(
                ProbeDisk(
                    name=match["name"],
                    sectors=int(match["sectors"]),
                    bytes=int(match["bytes"]),
                    ro=match["ro"] == "1",
                    removable=match["rm"] == "1",
                )
            )
        elif match := _FIRMWARE_LINE.search(line):
            firmware = match["fw"]
            secure_boot = match["sb"] == "1"
    return ProbeReport(disks=tuple(disks), firmware=firmware, secure_boot=secure_boot, complete=complete)


def build_probe_iso(cache_dir: Path | None = None) -> Path:
    """Return the path of the probe ISO, building it first if it is missing or stale.

    A file lock serialises test processes that ask at the same time (the
    second one waits and then finds the ISO fresh); the ISO is written under a
    temporary name and renamed, so nobody ever boots half an ISO.
    """
    cache = (cache_dir or DEFAULT_CACHE_DIR).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    iso = cache / ISO_NAME
    stamp_file = cache / STAMP_NAME
    with _locked(cache / ".lock"):
        debs = _ensure_debs(cache / "debs")
        stamp = _stamp(debs)
        if iso.is_file() and _read_json(stamp_file) == stamp:
            return iso
        for leftover in cache.glob(".build-*"):  # from a build that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            built = _build(debs, work)
            os.chmod(built, 0o644)
            os.replace(built, iso)
            tmp_stamp = work / STAMP_NAME
            tmp_stamp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
            os.replace(tmp_stamp, stamp_file)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return iso


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stamp(debs: dict[str, Path]) -> dict[str, object]:
    """The builder's inputs: this file (init script, configs, recipe) and the .deb file names (name + version)."""
    return {
        "builder_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "packages": {package: path.name for package, path in sorted(debs.items())},
    }


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = TOOL_TIMEOUT) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BootIsoError(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise BootIsoError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


# What apt says when its package lists are missing or do not know the package.
_LISTS_MISSING = ("Unable to locate package", "has no installation candidate", "No packages found", "Can't select")


def _apt(argv: list[str], *, cwd: Path | None = None) -> str:
    """Run an apt command; when it fails for lack of package lists, `apt-get update` once and retry."""
    try:
        return _run(argv, cwd=cwd, timeout=APT_TIMEOUT)
    except BootIsoError as exc:
        if not any(text in str(exc) for text in _LISTS_MISSING):
            raise
    _run(["apt-get", "update", "-q"], timeout=APT_TIMEOUT)
    return _run(argv, cwd=cwd, timeout=APT_TIMEOUT)


def _kernel_package() -> str:
    out = _apt(["apt-cache", "depends", KERNEL_META_PACKAGE])
    names = re.findall(r"^\s*Depends:\s*(linux-image-\S+)\s*$", out, flags=re.MULTILINE)
    if not names:
        raise BootIsoError(f"apt-cache depends {KERNEL_META_PACKAGE} names no linux-image package:\n{out}")
    return names[0]


def _ensure_debs(deb_dir: Path) -> dict[str, Path]:
    """Map each package to its .deb in the cache, downloading the missing ones."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for package in FIXED_PACKAGES:
        matches = sorted(deb_dir.glob(f"{package}_*.deb"))
        if len(matches) == 1:
            found[package] = matches[0]
        else:
            missing.append(package)
    kernels = sorted(deb_dir.glob(KERNEL_DEB_GLOB))
    if len(kernels) == 1:
        found["kernel"] = kernels[0]
    else:
        missing.append(_kernel_package())
    if not missing:
        return found
    # Download into a scratch directory and move in, so a failed download never
    # leaves a truncated .deb that a later run would take for a good one.
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=deb_dir))
    try:
        # As root apt drops to `_apt`, which may not write here; stay root instead.
        _apt(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *missing], cwd=scratch)
        for package in missing:
            is_kernel = package.startswith("linux-image-")
            stale = deb_dir.glob(KERNEL_DEB_GLOB if is_kernel else f"{package}_*.deb")
            for old in stale:
                old.unlink()
            got = sorted(scratch.glob(f"{package}_*.deb"))
            if len(got) != 1:
                raise BootIsoError(f"apt-get download gave no single .deb for {package}")
            found["kernel" if is_kernel else package] = got[0].replace(deb_dir / got[0].name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return found


def _build(debs: dict[str, Path], work: Path) -> Path:
    pkgs = work / "pkgs"
    for deb in debs.values():
        _run(["dpkg-deb", "-x", str(deb), str(pkgs)])
    module_roots = [p for p in (pkgs / "lib" / "modules").iterdir() if p.is_dir()]
    if len(module_roots) != 1:
        raise BootIsoError(f"expected one kernel version in the kernel package, found {[p.name for p in module_roots]}")
    kver = module_roots[0].name

    tree = work / "iso"
    (tree / "boot" / "grub").mkdir(parents=True)
    (tree / "isolinux").mkdir()
    (tree / ".disk").mkdir()
    shutil.copyfile(pkgs / "boot" / f"vmlinuz-{kver}", tree / "boot" / "vmlinuz")
    (tree / "boot" / "initrd.gz").write_bytes(gzip.compress(_initramfs(pkgs, kver, work / "initramfs"), compresslevel=6, mtime=0))
    shutil.copyfile(pkgs / "usr/lib/ISOLINUX/isolinux.bin", tree / "isolinux" / "isolinux.bin")
    shutil.copyfile(pkgs / "usr/lib/syslinux/modules/bios/ldlinux.c32", tree / "isolinux" / "ldlinux.c32")
    (tree / "isolinux" / "isolinux.cfg").write_text(ISOLINUX_CFG)
    (tree / "boot" / "grub" / "grub.cfg").write_text(GRUB_CFG)
    (tree / ".disk" / "info").write_text("Vapor disk probe\n")
    _efi_image(
        tree / "boot" / "efi.img",
        shim=pkgs / "usr/lib/shim/shimx64.efi.signed",
        grub=pkgs / "usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed",
    )

    iso = work / ISO_NAME
    _run(
        [
            "xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "VAPOR_PROBE", "-r", "-J",
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
    _run(["mformat", "-i", image, "-T", str(mib * 2048), "-h", "64", "-s", "32", "-N", "0x56415052", "::"])
    _run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"])
    _run(["mcopy", "-i", image, str(shim), "::/EFI/BOOT/BOOTX64.EFI"])
    _run(["mcopy", "-i", image, str(grub), "::/EFI/BOOT/grubx64.efi"])


def _initramfs(pkgs: Path, kver: str, root: Path) -> bytes:
    """Lay out busybox, /init and the needed modules under `root`; return it as a newc cpio archive."""
    (root / "bin").mkdir(parents=True)
    (root / "sbin").mkdir()
    shutil.copyfile(pkgs / "bin" / "busybox", root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    # The kernel runs /sbin/modprobe for request_module() before --install has run.
    (root / "sbin" / "modprobe").symlink_to("/bin/busybox")
    init = root / "init"
    script = INIT_SCRIPT.replace("@MODULES@", " ".join(PROBE_MODULES)).replace("@EFI_MODULE@", EFI_MODULE)
    init.write_text(script.replace("@MARKER@", MARKER))
    os.chmod(init, 0o755)

    source = pkgs / "lib" / "modules" / kver
    target = root / "lib" / "modules" / kver
    for relative in _module_closure(source, (*PROBE_MODULES, EFI_MODULE)):
        dest = target / relative.parent / (relative.name.split(".ko")[0] + ".ko")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(_module_bytes(source / relative))
    # busybox's own depmod, so modules.dep is in the format its modprobe reads.
    _run([str(pkgs / "bin" / "busybox"), "depmod", "-b", str(root), kver])
    return _cpio(root, extra_devices=(("dev/console", 5, 1),))


def _module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def _module_closure(modules_dir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The wanted modules plus everything they depend on, as paths relative to `modules_dir`.

    Dependencies come from the `depends=` field of each module's .modinfo
    section (busybox's modinfo would consult the host's modules.dep instead).
    Modules built into the kernel need no file and are skipped.
    """
    index = {_module_name(p): p for p in (modules_dir / "kernel").rglob("*.ko*")}
    builtin_file = modules_dir / "modules.builtin"
    builtin = {_module_name(Path(line)) for line in builtin_file.read_text().split()} if builtin_file.exists() else set()
    chosen: dict[str, Path] = {}
    queue = [name.replace("-", "_") for name in wanted]
    while queue:
        name = queue.pop()
        if name in chosen or name in builtin:
            continue
        if name not in index:
            raise BootIsoError(f"kernel module {name} is neither in the kernel package nor built in")
        chosen[name] = index[name]
        depends = _modinfo(_module_bytes(index[name])).get("depends", "")
        queue.extend(dep.replace("-", "_") for dep in depends.split(",") if dep)
    return sorted(path.relative_to(modules_dir) for path in chosen.values())


def _module_bytes(path: Path) -> bytes:
    """A module's ELF bytes; Debian 12 ships plain .ko, later releases compress them."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        try:
            return subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=True, timeout=TOOL_TIMEOUT).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise BootIsoError(f"cannot decompress {path.name} (is the zstd tool installed?): {exc}") from exc
    return data


def _modinfo(elf: bytes) -> dict[str, str]:
    """The key=value strings of a 64-bit little-endian ELF module's .modinfo section."""
    if elf[:6] != b"\x7fELF\x02\x01":
        raise BootIsoError("not a 64-bit little-endian ELF module")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + index * shentsize)
        return name, offset, size

    _, names_offset, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        end = elf.index(b"\0", names_offset + name)
        if elf[names_offset + name : end] == b".modinfo":
            fields = (item.decode(errors="replace") for item in elf[offset : offset + size].split(b"\0") if b"=" in item)
            return dict(field.split("=", 1) for field in fields)
    return {}


def _cpio(root: Path, *, extra_devices: tuple[tuple[str, int, int], ...] = ()) -> bytes:
    """`root` as a newc cpio archive owned by root, plus character devices.

    Written here rather than with cpio(1) because /dev/console must be in the
    archive (the kernel opens it as PID 1's stdout before /init runs) and
    making a device node on the host would need privileges.
    """
    out = bytearray()
    inode = 0

    def entry(name: str, mode: int, data: bytes = b"", nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        nonlocal inode
        inode += 1
        encoded = name.encode() + b"\0"
        fields = (inode, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        out.extend(b"070701" + b"".join(b"%08X" % value for value in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(directory)
        relative = base.relative_to(root).as_posix()
        if relative != ".":
            entry(relative, 0o040755, nlink=2)
        for filename in sorted(filenames + [d for d in dirnames if (base / d).is_symlink()]):
            path = base / filename
            name = path.relative_to(root).as_posix()
            if path.is_symlink():
                entry(name, 0o120777, os.readlink(path).encode())
            else:
                entry(name, 0o100000 | (path.stat().st_mode & 0o7777), path.read_bytes())
    if not (root / "dev").exists():
        entry("dev", 0o040755, nlink=2)
    for name, major, minor in extra_devices:
        entry(name, 0o020600, rdev=(major, minor))
    entry("TRAILER!!!", 0)
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)
