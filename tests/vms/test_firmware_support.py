"""UEFI, Secure Boot and TPM support read from libvirt's domain capabilities (a host's facts, issue 15); pure."""

from __future__ import annotations

import pytest

from vms.hypervisor import FirmwareSupport
from vms.hypervisor.documents.capabilities import firmware_support

OVMF = """<domainCapabilities><domain>kvm</domain><arch>x86_64</arch>
  <os supported='yes'>
    <enum name='firmware'><value>efi</value></enum>
    <loader supported='yes'>
      <value>/usr/share/OVMF/OVMF_CODE_4M.secboot.fd</value>
      <enum name='type'><value>rom</value><value>pflash</value></enum>
      <enum name='secure'><value>yes</value><value>no</value></enum>
    </loader>
  </os>
  <devices>
    <tpm supported='yes'>
      <enum name='model'><value>tpm-tis</value><value>tpm-crb</value></enum>
      <enum name='backendModel'><value>passthrough</value><value>emulator</value></enum>
    </tpm>
  </devices>
</domainCapabilities>"""

NO_SECURE = OVMF.replace("<value>yes</value><value>no</value></enum>\n    </loader>", "<value>no</value></enum>\n    </loader>")
NO_SWTPM = OVMF.replace("<value>passthrough</value><value>emulator</value>", "<value>passthrough</value>")
BIOS_ONLY = """<domainCapabilities><os supported='yes'><enum name='firmware'/><loader supported='no'/></os>
  <devices><tpm supported='no'/></devices></domainCapabilities>"""
NO_FIRMWARE_ENUM = OVMF.replace("<enum name='firmware'><value>efi</value></enum>", "")  # older libvirt: loader values only


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (OVMF, FirmwareSupport(uefi=True, secure_boot=True, tpm=True)),
        (NO_SECURE, FirmwareSupport(uefi=True, secure_boot=False, tpm=True)),
        (NO_SWTPM, FirmwareSupport(uefi=True, secure_boot=True, tpm=False)),
        (BIOS_ONLY, FirmwareSupport(uefi=False, secure_boot=False, tpm=False)),
        (NO_FIRMWARE_ENUM, FirmwareSupport(uefi=True, secure_boot=True, tpm=True)),
    ],
    ids=["ovmf-swtpm", "no-secure-boot", "no-swtpm", "bios-only", "loader-values-only"],
)
def test_firmware_support(document: str, expected: FirmwareSupport) -> None:
    assert firmware_support(document) == expected
