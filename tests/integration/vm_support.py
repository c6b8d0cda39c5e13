"""Shared set-up for the API tests against the real libvirtd, and a guest with a shell for the console tests.

Everything QEMU touches lives in 0755 directories under /var/tmp (QEMU runs
as libvirt-qemu and cannot enter pytest's 0700 tmp dirs). Domains, volumes
and bridges are named `it-...` and removed with virsh afterwards, whatever
Vapor did.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from tests.bootiso import build_shell_iso
from tests.integration.conftest import remove_pool, unique, virsh
from tests.support.guests import ShellGuest, boot_shell_guest, remove_shell_guest
from vms.hypervisor.libvirt_driver import LibvirtDriver

NETNS_STATE = Path("/run/vapor/libvirtd.netns")


@dataclass(frozen=True)
class VmEnv:
    pool: str
    pool_dir: Path
    disks: Path  # VAPOR_DISK_ROOTS: templates and shared disks
    isos: Path  # the first VAPOR_ISO_DIRS entry
    serial: Path  # VAPOR_SERIAL_LOG_DIR

    def volumes(self) -> set[str]:
        return {p.name for p in self.pool_dir.iterdir()}


def shared_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture
def vm_env(hypervisor: LibvirtDriver, settings) -> Iterator[VmEnv]:
    top = shared_dir("vapor-it-")
    env = VmEnv(pool=unique("it-pool"), pool_dir=top / "pool", disks=top / "disks", isos=top / "isos", serial=top / "serial")
    for directory in (env.pool_dir, env.disks, env.isos, env.serial):
        directory.mkdir(mode=0o755)
    hypervisor.ensure_dir_pool(env.pool, str(env.pool_dir))
    # Example 1 has no `networks`: its NIC goes on `default`, which the set-up makes; make sure it runs.
    hypervisor.ensure_nat_network("default", "virbr0", "192.168.122.0/24")
    settings.VAPOR = dataclasses.replace(
        django_settings.VAPOR,
        libvirt_uri="qemu:///system",
        virt_type="qemu",  # KVM here cannot run OVMF or SMM; TCG runs every variant
        disk_roots=(env.disks,),
        iso_dirs=(env.isos,),
        iso_roots=(),
        download_dir=env.isos,
        serial_log_dir=env.serial,
    )
    before = set(virsh("list", "--all", "--name").stdout.split())
    try:
        yield env
    finally:
        for name in set(virsh("list", "--all", "--name").stdout.split()) - before:
            virsh("destroy", name, check=False)
            virsh("undefine", name, "--nvram", "--tpm", "--managed-save", check=False)
        remove_pool(env.pool)
        shutil.rmtree(top, ignore_errors=True)


def libvirtd_netns() -> str:
    return NETNS_STATE.read_text().strip() if NETNS_STATE.exists() else ""


@pytest.fixture
def bridges() -> Iterator[list[str]]:
    """Two bridges where libvirtd runs (its private namespace in CI)."""
    names = [unique("itbr")[:15], unique("itbr")[:15]]
    prefix = ["ip", "netns", "exec", libvirtd_netns()] if libvirtd_netns() else []
    for name in names:
        subprocess.run([*prefix, "ip", "link", "add", name, "type", "bridge"], check=True, capture_output=True)
    try:
        yield names
    finally:
        for name in names:
            subprocess.run([*prefix, "ip", "link", "del", name], check=False, capture_output=True)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def shell_iso() -> Path:
    """The shell ISO in the shared cache (built on first use); copy it before a guest boots it, as libvirt chowns what it boots."""
    return build_shell_iso()


@pytest.fixture
def shell_guest(hypervisor: LibvirtDriver, shell_iso: Path, request: pytest.FixtureRequest) -> Iterator[ShellGuest]:
    """A running TCG guest booted from the shell ISO, its shell ready on ttyS0 (SHELL_READY seen); removed afterwards.

    Options go to `boot_shell_guest` through indirect parametrisation, e.g.
    `@pytest.mark.parametrize("shell_guest", [{"firmware": "uefi-secure", "network": "default"}], indirect=True)`.
    """
    options: dict[str, Any] = dict(getattr(request, "param", None) or {})
    top = shared_dir("vapor-shell-")
    iso = top / "shell.iso"
    shutil.copyfile(shell_iso, iso)
    try:
        guest = boot_shell_guest(unique("shellg"), iso, log_dir=top, **options)
        try:
            yield guest
        finally:
            remove_shell_guest(guest)
            assert virsh("dominfo", guest.name, check=False).returncode != 0, f"domain {guest.name} is still defined"
    finally:
        shutil.rmtree(top, ignore_errors=True)
