"""A running guest with a shell on its serial port, booted from the shell ISO (tests/bootiso), for the console tests.

`boot_shell_guest` defines a small TCG domain that boots the ISO from a
CD-ROM (optionally on a libvirt network, optionally with the ISO copied into
a storage pool as a volume), starts it and returns once the guest printed
SHELL_READY on its serial port. Its serial port is a pty (so libvirt's
console stream reaches it) whose output virtlogd also copies to a log file,
which is where the ready line is read: nothing holds the console while the
guest boots, so the test under way can open it. It has a VNC display on the
loopback and a virtio video card: its screen shows the firmware, the boot
loader, the kernel's log and then a shell.

`SerialConsole` is the raw console stream (`virDomainOpenConsole`), for
typing into the guest's shell and reading what comes back. libvirt lets one
client at a time hold a console: close it before a browser opens the same one
(or open it with `force`, which takes it over).

Guests made from Vapor's API (which writes its own serial log) are waited
for with `wait_for_text(log, SHELL_READY, ...)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import libvirt
from lxml import etree
from lxml.builder import E

from tests.bootiso import SHELL_READY

URI = "qemu:///system"
READY_TIMEOUT = 300.0  # a TCG boot alone takes 5-25 s, several guests at once on 2 cores far longer
FIRMWARES = ("bios", "uefi", "uefi-secure")


class GuestError(AssertionError):
    """The guest did not boot, or did not answer on its console, in time (an AssertionError so pytest shows it plainly)."""


@dataclass(frozen=True)
class ShellGuest:
    """A running guest whose shell is ready on its serial port."""

    name: str
    uri: str
    serial_log: Path  # what the guest printed on ttyS0 (written by virtlogd)
    firmware: str  # one of FIRMWARES
    boot_seconds: float  # from `start` to SHELL_READY in the log
    volume: tuple[str, str] | None = None  # (pool, volume) holding the ISO, when it was copied into a pool

    def log_text(self) -> str:
        return read_log(self.serial_log)


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_text(path: Path, text: str, timeout: float = READY_TIMEOUT, *, domain: libvirt.virDomain | None = None) -> float:
    """Seconds until `text` appears in the file at `path`; GuestError with the file's tail after `timeout`,
    or as soon as `domain` (when given) is no longer running."""
    started = time.monotonic()
    while True:
        content = read_log(path)
        if text in content:
            return time.monotonic() - started
        waited = time.monotonic() - started
        stopped = domain is not None and domain.state()[0] != libvirt.VIR_DOMAIN_RUNNING
        if waited > timeout or stopped:
            why = "the domain stopped" if stopped else f"{timeout:.0f} s passed"
            raise GuestError(f"no {text!r} in {path} ({why}); it ends with:\n{content[-3000:]}")
        time.sleep(0.2)


def shell_guest_xml(
    name: str,
    cdrom: etree._Element,
    serial_log: Path,
    *,
    firmware: str = "bios",
    network: str | None = None,
    memory_mib: int = 512,
) -> str:
    """The domain: q35, TCG, the CD-ROM as its only boot disk, a pty serial port logged to `serial_log`, VNC on the loopback."""
    if firmware not in FIRMWARES:
        raise ValueError(f"firmware must be one of {FIRMWARES}, not {firmware!r}")
    os_element = E.os(E.type("hvm", arch="x86_64", machine="q35"))
    features = E.features(E.acpi())
    if firmware.startswith("uefi"):
        os_element.set("firmware", "efi")
        secure = "yes" if firmware == "uefi-secure" else "no"
        os_element.append(E.firmware(E.feature(enabled=secure, name="secure-boot"), E.feature(enabled=secure, name="enrolled-keys")))
        features.append(E.smm(state="on" if secure == "yes" else "off"))
    serial = E.serial(E.log(file=str(serial_log), append="off"), E.target(port="0"), type="pty")
    devices = [
        cdrom,
        serial,
        E.console(E.target(type="serial", port="0"), type="pty"),
        E.graphics(E.listen(type="address", address="127.0.0.1"), type="vnc", port="-1", autoport="yes", listen="127.0.0.1"),
        E.video(E.model(type="virtio")),
        E.memballoon(model="none"),
    ]
    if network is not None:
        devices.append(E.interface(E.source(network=network), E.model(type="virtio"), type="network"))
    domain = E.domain(
        E.name(name),
        E.memory(str(memory_mib), unit="MiB"),
        E.vcpu("1"),
        os_element,
        features,
        # A guest that panics (panic=-1) or reboots stops instead of looping.
        E.on_poweroff("destroy"),
        E.on_reboot("destroy"),
        E.on_crash("destroy"),
        E.devices(*devices),
        type="qemu",
    )
    return etree.tostring(domain, encoding="unicode", pretty_print=True)


def _cdrom(source_type: str, **source: str) -> etree._Element:
    """A read-only SATA CD-ROM, first in the boot order; `source_type` is libvirt's disk type ("file" or "volume")."""
    target = E.target(dev="sda", bus="sata")
    disk = E.disk(E.driver(name="qemu", type="raw"), E.source(**source), target, E.readonly(), E.boot(order="1"))
    disk.set("type", source_type)
    disk.set("device", "cdrom")
    return disk


def _copy_into_pool(conn: libvirt.virConnect, pool_name: str, iso: Path, volume: str) -> None:
    """The ISO as a volume of a directory pool: copied into its target directory, then the pool refreshed."""
    pool = conn.storagePoolLookupByName(pool_name)
    target = etree.fromstring(pool.XMLDesc(0).encode()).findtext("target/path")
    if not target:
        raise ValueError(f"pool {pool_name} has no target directory")
    shutil.copyfile(iso, Path(target) / volume)
    pool.refresh(0)


def boot_shell_guest(
    name: str,
    iso_path: Path,
    *,
    log_dir: Path,
    firmware: str = "bios",
    network: str | None = None,
    pool: str | None = None,
    memory_mib: int = 512,
    uri: str = URI,
    timeout: float = READY_TIMEOUT,
) -> ShellGuest:
    """Define and start `name` from the shell ISO and wait until its shell is ready on ttyS0.

    `iso_path` must be readable by QEMU (a 0755 directory, not pytest's 0700
    tmp_path) unless `pool` is given: then it is copied into that directory
    pool as the volume `<name>.iso`. `log_dir` (0755, QEMU's and virtlogd's to
    write in) receives `<name>.serial.log`. `network` adds a virtio NIC on that
    libvirt network. On failure the domain is removed again and GuestError
    carries the serial log's tail; on success the caller removes it with
    `remove_shell_guest`.
    """
    serial_log = log_dir / f"{name}.serial.log"
    volume = (pool, f"{name}.iso") if pool is not None else None
    conn = libvirt.open(uri)
    try:
        if volume is not None:
            _copy_into_pool(conn, volume[0], iso_path, volume[1])
            cdrom = _cdrom("volume", pool=volume[0], volume=volume[1])
        else:
            cdrom = _cdrom("file", file=str(iso_path))
        if _exists(conn, name):  # never take over (nor, on failure, remove) someone else's domain
            raise GuestError(f"a domain named {name} already exists")
        guest = ShellGuest(name=name, uri=uri, serial_log=serial_log, firmware=firmware, boot_seconds=0.0, volume=volume)
        try:
            domain = conn.defineXML(shell_guest_xml(name, cdrom, serial_log, firmware=firmware, network=network, memory_mib=memory_mib))
            started = time.monotonic()
            domain.create()
            wait_for_text(serial_log, SHELL_READY, timeout, domain=domain)
            return dataclasses.replace(guest, boot_seconds=time.monotonic() - started)
        except BaseException:
            remove_shell_guest(guest)
            raise
    finally:
        conn.close()


def _exists(conn: libvirt.virConnect, name: str) -> bool:
    try:
        conn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    return True


def remove_shell_guest(guest: ShellGuest) -> None:
    """Destroy and undefine the domain (NVRAM too) and delete the ISO volume it was given; quiet about what is gone."""
    conn = libvirt.open(guest.uri)
    try:
        try:
            domain = conn.lookupByName(guest.name)
        except libvirt.libvirtError:
            domain = None
        if domain is not None:
            if domain.isActive():
                domain.destroy()
            domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        if guest.volume is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.storagePoolLookupByName(guest.volume[0]).storageVolLookupByName(guest.volume[1]).delete(0)
    finally:
        conn.close()


class SerialConsole:
    """The guest's serial port through libvirt's console stream: `send` bytes, `expect` a pattern in what came back.

    The stream is a blocking one read by a thread of its own (a non-blocking
    stream would need a libvirt event loop registered for the whole process);
    `close` aborts it, which ends the read at once.
    """

    def __init__(self, name: str, *, uri: str = URI, force: bool = False) -> None:
        self.conn = libvirt.open(uri)
        try:
            self.stream = self.conn.newStream(0)
            self.conn.lookupByName(name).openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE if force else 0)
        except BaseException:
            self.conn.close()
            raise
        self.received = bytearray()  # everything read so far
        self._seen = 0  # what `expect` has consumed of it
        self._ended = ""  # why the stream ended, once it did
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"console-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        why = "the console stream ended (the guest stopped?)"
        while True:
            try:
                got = self.stream.recv(65536)
            except libvirt.libvirtError as exc:
                why = f"the console stream failed: {exc.get_error_message()}"
                break
            if isinstance(got, int) or not got:
                break
            with self._changed:
                self.received.extend(got)
                self._changed.notify_all()
        with self._changed:
            self._ended = why
            self._changed.notify_all()

    def send(self, data: bytes | str) -> None:
        view = data.encode() if isinstance(data, str) else data
        while view:
            view = view[self.stream.send(view) :]

    def expect(self, pattern: str | bytes, timeout: float = 30.0) -> re.Match[bytes]:
        """Wait for `pattern` (a regular expression) in what the guest sent since the last match; consume up to its end."""
        regex = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = regex.search(self.received, self._seen)
                if match:
                    self._seen = match.end()
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    tail = bytes(self.received[self._seen :][-2000:]).decode(errors="replace")
                    why = self._ended or f"{timeout:.0f} s passed"
                    raise GuestError(f"no {regex.pattern!r} on the console ({why}); since the last match it sent:\n{tail}")
                self._changed.wait(left)

    def close(self) -> None:
        if self._reader.is_alive():
            with contextlib.suppress(libvirt.libvirtError):  # already closed from the other end
                self.stream.abort()
        self._reader.join(timeout=10)
        self.conn.close()

    def __enter__(self) -> SerialConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def screenshot_png(name: str, *, uri: str = URI) -> bytes:
    """The guest's screen as libvirt hands it over (PNG with the QEMU here)."""
    conn = libvirt.open(uri)
    try:
        stream = conn.newStream(0)
        conn.lookupByName(name).screenshot(stream, 0, 0)
        chunks = []
        while chunk := stream.recv(1 << 20):
            if isinstance(chunk, int):
                break
            chunks.append(chunk)
        stream.finish()
        return b"".join(chunks)
    finally:
        conn.close()


def png_pixels(png: bytes) -> tuple[int, int, bytes]:
    """Width, height and the RGB bytes of an 8-bit, non-interlaced RGB PNG (what QEMU writes); no imaging library needed."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    offset, idat, header = 8, bytearray(), b""
    while offset < len(png):
        (length,) = struct.unpack_from(">I", png, offset)
        kind, body = png[offset + 4 : offset + 8], png[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.extend(body)
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if (depth, colour, interlace) != (8, 2, 0):
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    raw, stride, bpp = zlib.decompress(bytes(idat)), width * 3, 3
    out, previous = bytearray(), bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, up_left = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF
        out.extend(line)
        previous = line
    return width, height, bytes(out)


def lit_fraction(pixels: bytes) -> float:
    """The share of RGB pixels that are not black: above 0 when the screen shows anything at all."""
    count = len(pixels) // 3
    lit = sum(1 for i in range(0, count * 3, 3) if pixels[i] or pixels[i + 1] or pixels[i + 2])
    return lit / count if count else 0.0
