"""The guest's initramfs: busybox, the /init script (init.sh) and the kernel modules it loads."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import struct
import subprocess
from pathlib import Path

from tests.bootiso.report import MARKER, SHELL_READY
from tests.bootiso.tools import TOOL_TIMEOUT, BootIsoError, run

INIT_SCRIPT = Path(__file__).with_name("init.sh")

# Every bus the API offers: virtio, SATA (AHCI on q35), IDE (PIIX on pc), SCSI
# (virtio-scsi, or the LSI controller libvirt picks by default), plus CD-ROMs.
# Dependencies are added. efivarfs (which shows the Secure Boot state) is
# loaded only under UEFI: elsewhere it refuses to load.
PROBE_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "ahci", "ata_piix", "sym53c8xx", "sd_mod", "sr_mod")
EFI_MODULE = "efivarfs"
# Loaded by the shell variant only: the ACPI power button and the event device
# busybox's acpid reads it from, so a graceful shutdown powers the guest off.
SHELL_MODULES: tuple[str, ...] = (
    "button",
    "evdev",
    "virtio_net",  # guest addresses (issue 14): a NIC for `udhcpc` on the NAT network; hot-plugged NICs
    "virtio_balloon",  # hardware: memory given back live
    "isofs",  # cloud-init: the guest mounts its cidata seed
)


def init_script() -> str:
    """init.sh with its placeholders filled in."""
    script = INIT_SCRIPT.read_text()
    fills = {"@MODULES@": " ".join(PROBE_MODULES), "@EFI_MODULE@": EFI_MODULE, "@MARKER@": MARKER, "@SHELL_READY@": SHELL_READY}
    for placeholder, value in fills.items():
        script = script.replace(placeholder, value)
    return script


def build_initramfs(pkgs: Path, kver: str, root: Path) -> bytes:
    """Lay out busybox, /init and the needed modules under `root`; return it as a newc cpio archive.

    `pkgs` holds the unpacked packages, `kver` is the kernel version (the directory under lib/modules).
    """
    (root / "bin").mkdir(parents=True)
    (root / "sbin").mkdir()
    shutil.copyfile(pkgs / "bin" / "busybox", root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    # The kernel runs /sbin/modprobe for request_module() before --install has run.
    (root / "sbin" / "modprobe").symlink_to("/bin/busybox")
    init = root / "init"
    init.write_text(init_script())
    os.chmod(init, 0o755)

    source = pkgs / "lib" / "modules" / kver
    target = root / "lib" / "modules" / kver
    for relative in module_closure(source, (*PROBE_MODULES, EFI_MODULE, *SHELL_MODULES)):
        dest = target / relative.parent / (relative.name.split(".ko")[0] + ".ko")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(module_bytes(source / relative))
    # busybox's own depmod, so modules.dep is in the format its modprobe reads.
    run([str(pkgs / "bin" / "busybox"), "depmod", "-b", str(root), kver])
    return cpio(root, extra_devices=(("dev/console", 5, 1),))


def _module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def module_closure(modules_dir: Path, wanted: tuple[str, ...]) -> list[Path]:
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
        depends = modinfo(module_bytes(index[name])).get("depends", "")
        queue.extend(dep.replace("-", "_") for dep in depends.split(",") if dep)
    return sorted(path.relative_to(modules_dir) for path in chosen.values())


def module_bytes(path: Path) -> bytes:
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


def modinfo(elf: bytes) -> dict[str, str]:
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


def cpio(root: Path, *, extra_devices: tuple[tuple[str, int, int], ...] = ()) -> bytes:
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
