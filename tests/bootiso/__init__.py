"""A tiny bootable "disk probe" ISO, built from Debian packages, for in-guest checks.

Why: the only proof that a domain's disks, read-only flags and firmware are what
the API promised is to look from inside the guest. This ISO boots (BIOS through
isolinux, UEFI through the signed shim + GRUB, so Secure Boot passes with the
Microsoft keys OVMF enrolls), prints what the guest kernel sees on the serial
console and powers off. Its shell variant (`build_shell_iso`) prints the same,
then SHELL_READY, and stays up with a shell on the serial port and one on the
screen, for the console tests.

A module per job: `packages` fetches and unpacks the .deb files, `initramfs`
builds the guest's initramfs around `init.sh` (its PID 1), `iso` lays out the
ISO and runs xorriso, `cache` keeps the built ISO and rebuilds it when an input
changed, `report` reads what the guest printed.
"""

from tests.bootiso.cache import build_probe_iso, build_shell_iso
from tests.bootiso.report import MARKER, SHELL_READY, ProbeDisk, ProbeReport, parse_probe_output
from tests.bootiso.tools import BootIsoError

__all__ = [
    "MARKER",
    "SHELL_READY",
    "BootIsoError",
    "ProbeDisk",
    "ProbeReport",
    "build_probe_iso",
    "build_shell_iso",
    "parse_probe_output",
]
