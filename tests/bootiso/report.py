"""Reading what the guest printed on its serial console.

The probe prints, then powers off (the shell variant prints SHELL_READY and stays up):

    DISK name=sda sectors=409600 bytes=209715200 ro=0 removable=0
    FIRMWARE=efi secureboot=1
    VAPOR-PROBE-DONE
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = "VAPOR-PROBE-DONE"
# What the shell variant prints on its serial port (and screen) when its shell is up, after the report and MARKER.
SHELL_READY = "VAPOR-SHELL-READY"


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
