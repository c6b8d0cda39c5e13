"""The libvirt side of bench.vms_bench: timed hypervisor calls, this run's pool and domains, one VM's life.

Vapor's services get a driver wrapped so that each hypervisor call is timed, as the API and the task get a
fresh one from `get_hypervisor()`. Everything the run makes in libvirt is named `bench-<random>-...` and
removed with virsh at the end, whatever Vapor did, because the daemon is shared with other work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bench.common import MIB, require

if TYPE_CHECKING:
    from vms.hypervisor import Hypervisor
    from vms.services.requests import VmRequest

URI = "qemu:///system"
PREFIX = "bench-"

# ---------------------------------------------------------------------------
# Timing the hypervisor calls


class TimedHypervisor:
    """A `Hypervisor` that adds each call's wall time to `spent[method]`.

    Wrapping the real driver (rather than timing from the event log) splits
    a service call into libvirt's share and Vapor's, per libvirt call, without
    touching the service code.
    """

    def __init__(self, inner: Any, spent: dict[str, float]) -> None:
        self._inner = inner
        self._spent = spent

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target) or name.startswith("_"):
            return target

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return target(*args, **kwargs)
            finally:
                self._spent[name] += time.perf_counter() - started

        return timed


@contextmanager
def fresh_driver(spent: dict[str, float]) -> Iterator[Hypervisor]:
    """A new driver, as `get_hypervisor()` gives each request and task: its first call opens the connection."""
    from vms.hypervisor.libvirt_driver import LibvirtDriver

    driver = LibvirtDriver(URI)
    try:
        yield cast("Hypervisor", TimedHypervisor(driver, spent))
    finally:
        driver.close()


@dataclass
class Call:
    """One service call: wall time, SQL queries, and the time spent in each hypervisor method."""

    seconds: float
    queries: int
    spent: dict[str, float]

    @property
    def libvirt(self) -> float:
        return sum(self.spent.values())

    @property
    def vapor(self) -> float:
        return self.seconds - self.libvirt


def call_service(run: Callable[[Hypervisor], object]) -> tuple[object, Call]:
    """Run one service call on a fresh timed driver, counting its SQL queries.

    CaptureQueriesContext logs each query (microseconds each), negligible next to the libvirt calls.
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    spent: dict[str, float] = defaultdict(float)
    with fresh_driver(spent) as hv, CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        result = run(hv)
        elapsed = time.perf_counter() - started
    return result, Call(elapsed, len(captured.captured_queries), dict(spent))


# ---------------------------------------------------------------------------
# libvirt objects, outside Vapor


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, check=check, timeout=120)


def run_tool(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=300).stdout


def image_info(path: str) -> dict[str, Any]:
    """qemu-img's view of a volume; -U because the guest using it holds QEMU's lock."""
    return cast("dict[str, Any]", json.loads(run_tool("qemu-img", "info", "-U", "--output=json", "-f", "qcow2", path)))


def domain_state(name: str) -> str:
    return virsh("domstate", name, check=False).stdout.strip()


@dataclass(frozen=True)
class Bench:
    """Where this run's objects live: names start with `prefix`; files are under `top` (0755, QEMU reads them)."""

    prefix: str
    pool: str
    top: Path
    pool_dir: Path
    disks: Path

    def vm_name(self, label: str) -> str:
        return f"{self.prefix}{label}"


def prepare(top: Path) -> Bench:
    """The pool and NAT network the VMs need, and settings.VAPOR pointed at them as the integration tests do."""
    from django.conf import settings

    from vms.hypervisor.libvirt_driver import LibvirtDriver

    run_prefix = f"{PREFIX}{secrets.token_hex(3)}-"
    bench = Bench(prefix=run_prefix, pool=f"{run_prefix}pool", top=top, pool_dir=top / "pool", disks=top / "disks")
    for directory in (bench.pool_dir, bench.disks):
        directory.mkdir(mode=0o755)
    with LibvirtDriver(URI) as driver:
        driver.ensure_dir_pool(bench.pool, str(bench.pool_dir))
        driver.ensure_nat_network("default", "virbr0", "192.168.122.0/24")  # example 1's NIC goes on `default`
    settings.VAPOR = dataclasses.replace(settings.VAPOR, libvirt_uri=URI, virt_type="qemu", disk_roots=(bench.disks,))
    return bench


def check_daemon() -> None:
    """Stop with the fix when the daemon is not there: every figure but the list endpoint's needs it."""
    done = subprocess.run(["virsh", "-c", URI, "list"], capture_output=True, text=True, timeout=30, check=False)
    require(done.returncode == 0, f"libvirtd does not answer on {URI} ({done.stderr.strip()}); start it: bash scripts/libvirtd.sh start")


def remove_everything(bench: Bench) -> None:
    """Destroy and undefine this run's domains, stop and forget its pool: by name, with virsh, whatever state Vapor left.

    The pool's volumes are files in its directory, under the run's directory that main removes next, so
    they go with it: once the pool is undefined, libvirt keeps nothing of them.
    """
    for name in virsh("list", "--all", "--name", check=False).stdout.split():
        if name.startswith(bench.prefix):
            virsh("destroy", name, check=False)
            virsh("undefine", name, "--nvram", "--tpm", "--managed-save", check=False)
    virsh("pool-destroy", bench.pool, check=False)
    virsh("pool-undefine", bench.pool, check=False)


# ---------------------------------------------------------------------------
# One VM from request to running to gone


@dataclass
class Lifecycle:
    """Part 2: one VM created, provisioned and deleted through the services."""

    create: Call
    provision: Call
    delete: Call
    allocation: int  # bytes the VM's volume used on disk once running


def request_for(name: str, bench: Bench, disk: dict[str, Any]) -> VmRequest:
    """The spec's example 1 shape (2048 MB, 2 vCPUs, one disk, NIC on `default`), graphics none, in the bench pool."""
    from vms.services.requests import DiskRequest, GraphicsRequest, VmRequest

    return VmRequest(
        name=name,
        memory=2048,
        vcpus=2,
        disks=(DiskRequest(**disk),),
        graphics=GraphicsRequest(type="none"),
        storage_pool=bench.pool,
    )


def lifecycle(name: str, bench: Bench, disk: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> Lifecycle:
    """Create, provision and delete `name`, checking after each stage that it did what it says (untimed)."""
    from vms.jobs import vm_provision
    from vms.models import VirtualMachine
    from vms.services.lifecycle import vm_create, vm_delete

    request = request_for(name, bench, disk)
    created, create = call_service(lambda hv: vm_create(request=request, hv=hv))
    require(isinstance(created, VirtualMachine), f"vm_create returned {created!r}")
    vm_id = cast("VirtualMachine", created).pk
    _, provision = call_service(lambda hv: vm_provision(vm_id=vm_id, hv=hv))
    vm = VirtualMachine.objects.get(pk=vm_id)
    require(vm.status == "running", f"{name} is {vm.status} after provisioning: {vm.error}")
    require(domain_state(name) == "running", f"libvirt says {name} is {domain_state(name)!r}")
    volume = vm.disks.get().path
    info = image_info(volume)
    check(info)
    _, delete = call_service(lambda hv: vm_delete(vm=vm, hv=hv))
    require(not VirtualMachine.objects.filter(pk=vm_id).exists(), f"{name} is still in the database")
    require(virsh("dominfo", name, check=False).returncode != 0, f"{name} is still defined")
    require(not Path(volume).exists(), f"{volume} is still there")
    return Lifecycle(create, provision, delete, int(info["actual-size"]))


def connect_once() -> None:
    """Open a connection and make one call: what every fresh driver pays first, measured on its own in part 2."""
    from vms.hypervisor.libvirt_driver import LibvirtDriver

    with LibvirtDriver(URI) as driver:
        driver.list_pools()


# ---------------------------------------------------------------------------
# Facts about the daemon and the machine, for the report's table


def dirty_limits() -> str:
    """When writers start to wait for the disk: a full clone's speed depends on whether the copy fits under this."""
    values = {}
    for key in ("dirty_background_ratio", "dirty_background_bytes", "dirty_ratio", "dirty_bytes"):
        try:
            values[key] = int(Path(f"/proc/sys/vm/{key}").read_text())
        except (OSError, ValueError):
            return "unknown"

    def limit(kind: str) -> str:
        return f"{values[f'{kind}bytes'] / MIB:,.0f} MiB" if values[f"{kind}bytes"] else f"{values[f'{kind}ratio']}% of available memory"

    return f"background writeback from {limit('dirty_background_')}, writers wait from {limit('dirty_')}"


def load_now() -> str:
    """Other work on the shared daemon and machine skews the figures: domains running that are not ours, and the load."""
    others = [n for n in virsh("list", "--name", check=False).stdout.split() if not n.startswith(PREFIX)]
    return f"{len(others)} other domain(s) running, load average {os.getloadavg()[0]:.2f}"


def libvirt_facts(load_before: str, load_after: str) -> list[tuple[str, str]]:
    """Library and QEMU versions as the daemon reports them, and whether KVM was there (the benchmark uses TCG anyway)."""
    versions = dict(line.split(":", 1) for line in virsh("version", check=False).stdout.splitlines() if ":" in line)
    kvm = "; /dev/kvm present" if Path("/dev/kvm").exists() else "; no /dev/kvm"
    return [
        ("libvirt", versions.get("Using library", "unknown").strip()),
        ("hypervisor", versions.get("Running hypervisor", "unknown").strip()),
        ("guest domain type", "qemu (TCG), VAPOR_VIRT_TYPE=qemu" + kvm),
        ("dirty-page limit", dirty_limits()),
        ("daemon and machine at start", load_before),
        ("daemon and machine at end", load_after),
    ]
