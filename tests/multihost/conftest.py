"""Fixtures for the tests against several libvirt hosts (issue 15): `libvirt_hosts` starts vh1..vh3 with
scripts/hosts.sh (each a libvirtd in its own network and mount namespaces, reached over qemu+tcp) and
removes them, guests and all, at the end of the session.

Like tests/integration these never skip under CI: the set-up starts what they need. They take the
machine's libvirt lock (/tmp/vapor-libvirt.lock, see /tmp/HELPERS.md) for the session, unless this
process already holds it (started as `flock /tmp/vapor-libvirt.lock pytest ...`, which passes the
locked descriptor on): taking it a second time through a new descriptor would wait for ever.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import skip_or_fail_in_ci

ROOT = Path(__file__).resolve().parents[2]
HOSTS_SH = ROOT / "scripts" / "hosts.sh"
HOST_DATA = ROOT / "var" / "hosts"
LOCK = Path("/tmp/vapor-libvirt.lock")
HOST_COUNT = 3
LOCK_WAIT_SECONDS = 1800.0


@dataclass(frozen=True)
class LibvirtHost:
    """One test host: its name (vh1 ...), libvirt URI, address (where migrations go) and data directory."""

    name: str
    uri: str
    address: str
    data: Path  # var/hosts/<name>: what the host sees as /var/lib/libvirt is data/lib, /var/log/libvirt is data/log

    def serial_log(self, domain: str) -> Path:
        """Where a guest's serial log written to /var/log/libvirt/qemu/<domain>.serial.log on the host lands."""
        return self.data / "log" / "qemu" / f"{domain}.serial.log"


def hosts_sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(HOSTS_SH), *args], capture_output=True, text=True, timeout=timeout, check=False)


def _holding_lock() -> bool:
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(LOCK):
                return True
        except OSError:
            continue
    return False


def _take_lock() -> int | None:
    if _holding_lock():
        return None
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                pytest.fail(f"{LOCK} stayed locked for {LOCK_WAIT_SECONDS:.0f} s", pytrace=False)
            time.sleep(1)


@pytest.fixture(scope="session")
def libvirt_hosts() -> Iterator[list[LibvirtHost]]:
    """vh1..vh3 started (scripts/hosts.sh start 3), as records; all of it stopped and removed afterwards."""
    if os.geteuid() != 0:
        skip_or_fail_in_ci("the multi-host test bed needs root (network and mount namespaces)")
    if not Path("/usr/sbin/libvirtd").exists():
        skip_or_fail_in_ci("libvirtd is not installed (scripts/setup.sh installs it)")
    lock = _take_lock()
    try:
        started = time.monotonic()
        result = hosts_sh("start", str(HOST_COUNT))
        if result.returncode != 0:
            hosts_sh("stop")
            pytest.fail(f"scripts/hosts.sh start {HOST_COUNT} failed ({result.returncode}):\n{result.stderr}", pytrace=False)
        print(f"\nmultihost: {HOST_COUNT} libvirt hosts answered {time.monotonic() - started:.2f} s after `hosts.sh start`")
        hosts = []
        for k in range(1, HOST_COUNT + 1):
            name = f"vh{k}"
            uri = hosts_sh("uri", name).stdout.strip()
            hosts.append(LibvirtHost(name=name, uri=uri, address=uri.split("//", 1)[1].split("/", 1)[0], data=HOST_DATA / name))
        try:
            yield hosts
        finally:
            stopped = hosts_sh("stop")
            assert stopped.returncode == 0, stopped.stderr
    finally:
        if lock is not None:
            os.close(lock)


@pytest.fixture(scope="session")
def shared_iso() -> Iterator[Path]:
    """The shell ISO in a 0755 directory every host sees at the same path (an ISO share, as NFS would give);
    read-only disks are not copied by a migration, so it must be there on both sides."""
    from tests.bootiso import build_shell_iso

    top = Path(tempfile.mkdtemp(prefix="vapor-mh-", dir="/var/tmp"))
    top.chmod(0o755)
    iso = top / "shell.iso"
    shutil.copyfile(build_shell_iso(), iso)
    iso.chmod(0o644)
    try:
        yield iso
    finally:
        shutil.rmtree(top, ignore_errors=True)


GUEST_LOG_DIR = Path("/var/log/libvirt/qemu")  # inside each host's mount namespace


@pytest.fixture
def tcg_guests(shared_iso: Path, settings: Any) -> Path:
    """Vapor's settings for TCG guests booting the shell ISO of the shared directory, logging their serial port
    where LibvirtHost.serial_log finds it; the ISO."""
    import dataclasses

    from django.conf import settings as django_settings

    settings.VAPOR = dataclasses.replace(
        django_settings.VAPOR,
        virt_type="qemu",
        iso_dirs=(shared_iso.parent,),
        iso_roots=(),
        download_dir=shared_iso.parent,
        serial_log_dir=GUEST_LOG_DIR,
        q_timeout=900,  # a migration may take 600 s (two thirds)
    )
    return shared_iso
