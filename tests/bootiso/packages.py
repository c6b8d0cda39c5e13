"""Fetching the Debian packages whose files make up the ISO.

Packages are fetched with `apt-get download` (the Debian mirror only) and
unpacked later with `dpkg-deb -x`; nothing is installed. A fetched .deb stays
pinned in the cache until someone deletes it, so a warm run makes no apt call
at all and the guest kernel does not change under the tests.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from tests.bootiso.tools import BootIsoError, run

# The kernel's flavour package: its Depends names today's versioned image. The
# cloud flavour lacks AHCI/SATA, so the generic one it is.
KERNEL_META_PACKAGE = "linux-image-amd64"
KERNEL_DEB_GLOB = "linux-image-[0-9]*-amd64_*.deb"
# shimx64.efi.signed is in shim-signed itself; nothing from shim-signed-common
# or shim-helpers-* is needed (no MokManager, no fallback loader).
FIXED_PACKAGES = ("busybox-static", "isolinux", "syslinux-common", "shim-signed", "grub-efi-amd64-signed")

APT_TIMEOUT = 600

# What apt says when its package lists are missing or do not know the package.
_LISTS_MISSING = ("Unable to locate package", "has no installation candidate", "No packages found", "Can't select")


def _apt(argv: list[str], *, cwd: Path | None = None) -> str:
    """Run an apt command; when it fails for lack of package lists, `apt-get update` once and retry."""
    try:
        return run(argv, cwd=cwd, timeout=APT_TIMEOUT)
    except BootIsoError as exc:
        if not any(text in str(exc) for text in _LISTS_MISSING):
            raise
    run(["apt-get", "update", "-q"], timeout=APT_TIMEOUT)
    return run(argv, cwd=cwd, timeout=APT_TIMEOUT)


def _kernel_package() -> str:
    out = _apt(["apt-cache", "depends", KERNEL_META_PACKAGE])
    names = re.findall(r"^\s*Depends:\s*(linux-image-\S+)\s*$", out, flags=re.MULTILINE)
    if not names:
        raise BootIsoError(f"apt-cache depends {KERNEL_META_PACKAGE} names no linux-image package:\n{out}")
    return names[0]


def ensure_debs(deb_dir: Path) -> dict[str, Path]:
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


def unpack(debs: dict[str, Path], into: Path) -> None:
    """Every package's files under `into`, as dpkg would lay them out (no scripts run)."""
    for deb in debs.values():
        run(["dpkg-deb", "-x", str(deb), str(into)])
