"""Fixtures for tests against the real libvirtd (`qemu:///system`).

The test command starts the daemon (scripts/libvirtd.sh). These tests never
skip when it is missing: CI has to prove the daemon works, so an unreachable
daemon is a failure with a hint. Scratch objects get unique names, live in
temporary directories and are removed afterwards with `virsh`, independently
of the code under test.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vaporsite.errors import HypervisorError
from vms.hypervisor.libvirt_driver import LibvirtDriver

URI = "qemu:///system"


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=check, timeout=60)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def remove_pool(name: str) -> None:
    """Delete the pool's volumes, stop it and forget it; quiet about what is already gone."""
    listed = virsh("vol-list", "--pool", name, check=False)  # virsh 9.0 has no --name here
    for volume in [line.split()[0] for line in listed.stdout.splitlines()[2:] if line.strip()]:
        virsh("vol-delete", "--pool", name, volume, check=False)
    virsh("pool-destroy", name, check=False)
    virsh("pool-undefine", name, check=False)


def remove_network(name: str) -> None:
    virsh("net-destroy", name, check=False)
    virsh("net-undefine", name, check=False)


@dataclass(frozen=True)
class ScratchPool:
    name: str
    path: Path


@pytest.fixture(scope="session")
def hypervisor() -> Iterator[LibvirtDriver]:
    driver = LibvirtDriver(URI)
    try:
        driver.list_pools()
    except HypervisorError as exc:
        pytest.fail(f"libvirtd does not answer on {URI} ({exc.message}); start it with: bash scripts/libvirtd.sh start", pytrace=False)
    yield driver
    driver.close()


@pytest.fixture(autouse=True)
def _live_driver(hypervisor: LibvirtDriver) -> None:
    """The session's driver keeps one connection; if the daemon was restarted since (the reliability suite
    restarts it), that connection is dead and its next call would answer 503 once before reconnecting.
    Check it before each test and reconnect, as a long-lived caller would retry."""
    try:
        hypervisor.list_pools()
    except HypervisorError:
        hypervisor.close()


@pytest.fixture(scope="session")
def scratch_pool(hypervisor: LibvirtDriver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScratchPool]:
    """A dir pool of its own in a temporary directory, for the whole session."""
    pool = ScratchPool(name=unique("vapor-test"), path=tmp_path_factory.mktemp("scratch-pool"))
    try:
        assert hypervisor.ensure_dir_pool(pool.name, str(pool.path)) is True
        yield pool
    finally:
        remove_pool(pool.name)


# The VM fixtures live beside their helpers; imported last because they use the functions above.
from tests.integration.vm_support import bridges, shell_guest, shell_iso, vm_env  # noqa: E402, F401
