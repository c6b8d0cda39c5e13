"""Benchmarks of VM provisioning against the real libvirtd: create-enhanced, clones, list endpoint.

These are measurements, not tests: nothing here fails because something is
slow. They show where the time between a create-enhanced request and a
running guest goes (Vapor's validation and rows, libvirt's volume, define
and start), what a linked clone saves over a full copy of a template that
holds real data, and whether the VM list endpoint's queries stay fixed as
the number of VMs grows.

Parts 1 and 2 go through Vapor's own code paths (`vm_create`, then
`vm_provision` as the django-q2 task runs it, then `vm_delete`) on
`qemu:///system`, with a fresh driver per call as the API and the task get
from `get_hypervisor()`. That driver is wrapped so each hypervisor call is
timed: what is left of a call's wall time is Vapor's own work (database,
XML, event log). Guests are TCG (VAPOR_VIRT_TYPE=qemu), which is what this
machine must use for UEFI anyway. Every libvirt object is named `bench-...`
and removed at the end with virsh, whatever Vapor did.

Run:  cd /work/main && .venv/bin/python -m bench.vms_bench [--write]
--write refreshes this module's block of docs/BENCHMARKS.md, keeping the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bench.isos_bench import REPORT_PATH, Measure, Section, django_setup, machine_facts, require, say, write_report

if TYPE_CHECKING:
    from vms.hypervisor import Hypervisor
    from vms.services.requests import VmRequest

URI = "qemu:///system"
LIST_URL = "/api/v1/virtualmachines/"
MIB = 1024 * 1024
GIB = 1024 * MIB
MB = 1_000_000
PREFIX = "bench-"
DISK_GB = 20  # the spec's example 1: one 20 GB disk
ISO_POOL = 5  # ISOs the listed VMs' CD-ROMs point at


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


def remove_everything(run_prefix: str, pool: str) -> None:
    """Destroy and undefine this run's domains, empty and forget its pool: by name, with virsh, whatever state Vapor left."""
    for name in virsh("list", "--all", "--name", check=False).stdout.split():
        if name.startswith(run_prefix):
            virsh("destroy", name, check=False)
            virsh("undefine", name, "--nvram", "--tpm", "--managed-save", check=False)
    listed = virsh("vol-list", "--pool", pool, check=False)  # virsh 9.0 has no --name here
    for volume in [line.split()[0] for line in listed.stdout.splitlines()[2:] if line.strip()]:
        virsh("vol-delete", "--pool", pool, volume, check=False)
    virsh("pool-destroy", pool, check=False)
    virsh("pool-undefine", pool, check=False)


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
    """Stop with the fix when the daemon is not there: every figure of parts 1-2 needs it."""
    done = subprocess.run(["virsh", "-c", URI, "list"], capture_output=True, text=True, timeout=30, check=False)
    require(done.returncode == 0, f"libvirtd does not answer on {URI} ({done.stderr.strip()}); start it: bash scripts/libvirtd.sh start")


# ---------------------------------------------------------------------------
# One VM from request to running to gone


@dataclass
class Lifecycle:
    """Parts 1 and 2: one VM created, provisioned and deleted through the services."""

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
    from vms.models import VirtualMachine
    from vms.services.provisioning import vm_provision
    from vms.services.vms import vm_create, vm_delete

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


def ms_row(label: str, samples: Sequence[float], queries: Sequence[int] | None = None) -> list[str]:
    measure = Measure(label, list(samples))
    counts = "" if queries is None else "/".join(str(q) for q in sorted(set(queries)))
    return [label, f"{measure.median * 1000:.1f}", counts, measure.runs(1000, 1)]


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def connect_once() -> None:
    from vms.hypervisor.libvirt_driver import LibvirtDriver

    with LibvirtDriver(URI) as driver:
        driver.list_pools()


def bench_example_1(bench: Bench, repeats: int) -> Section:
    say("part 1: example 1 (one 20 GB qcow2 disk), create -> running -> deleted")
    runs: list[Lifecycle] = []
    connects: list[float] = []

    def thin(info: dict[str, Any]) -> None:
        require(info["virtual-size"] == DISK_GB * GIB and "backing-filename" not in info, f"not a fresh 20 GB volume: {info}")

    for round_number in range(1, repeats + 1):
        started = time.perf_counter()
        connect_once()
        connects.append(time.perf_counter() - started)
        run = lifecycle(bench.vm_name(f"simple-{round_number}"), bench, {"size": DISK_GB}, thin)
        runs.append(run)
        say(
            f"  round {round_number}: create {run.create.seconds * 1000:.0f} ms, provision {run.provision.seconds * 1000:.0f} ms, "
            f"delete {run.delete.seconds * 1000:.0f} ms"
        )
    creates, provisions, deletes = [r.create for r in runs], [r.provision for r in runs], [r.delete for r in runs]

    def spent(calls: list[Call], *methods: str) -> list[float]:
        return [sum(c.spent.get(m, 0.0) for m in methods) for c in calls]

    provision_named = ("create_volume", "define_domain", "start_domain")
    section = Section(
        title="1. create-enhanced, example 1: request to running guest, then delete",
        intro=(
            f"The spec's example 1 (2048 MB, 2 vCPUs, one {DISK_GB} GB qcow2 disk, NIC on the `default` NAT network) with graphics "
            "none, TCG. `vm_create` is what the API request runs (validation against libvirt, rows, queuing the task); "
            "`vm_provision` is the task (volume, define, start); `vm_delete` is DELETE (destroy, undefine, delete the volume). "
            "Each call gets a fresh driver as in production, so its first libvirt call opens the connection. Rows starting "
            f"with - split a call into its hypervisor methods and the rest (Vapor's Python and SQLite). {repeats} VMs, one after another."
        ),
        header=["step", "median ms", "SQL queries", "runs (ms)"],
        rows=[
            ms_row("open a qemu:///system connection (alone)", connects),
            ms_row("**vm_create**", [c.seconds for c in creates], [c.queries for c in creates]),
            ms_row("- libvirt calls (connect, capabilities, vCPU limit, pool, network, name checks)", [c.libvirt for c in creates]),
            ms_row("- Vapor (validation, rows, queuing the task)", [c.vapor for c in creates]),
            ms_row("**vm_provision**", [c.seconds for c in provisions], [c.queries for c in provisions]),
            ms_row(f"- create_volume ({DISK_GB} GB thin qcow2)", spent(provisions, "create_volume")),
            ms_row("- define_domain", spent(provisions, "define_domain")),
            ms_row("- start_domain", spent(provisions, "start_domain")),
            ms_row(
                "- other libvirt calls (connect, leftover checks)",
                [c.libvirt - s for c, s in zip(provisions, spent(provisions, *provision_named), strict=True)],
            ),
            ms_row("- Vapor (claim, rows, XML, event log)", [c.vapor for c in provisions]),
            ms_row("**request to running** (vm_create + vm_provision)", [r.create.seconds + r.provision.seconds for r in runs]),
            ms_row("**vm_delete**", [c.seconds for c in deletes], [c.queries for c in deletes]),
            ms_row("- undefine_domain (destroy, then undefine)", spent(deletes, "undefine_domain")),
            ms_row("- delete_volume", spent(deletes, "delete_volume")),
            ms_row("- Vapor (rows)", [c.vapor for c in deletes]),
        ],
    )
    total = median_ms([r.create.seconds + r.provision.seconds for r in runs])
    start = median_ms(spent(provisions, "start_domain"))
    vapor = median_ms([r.create.vapor + r.provision.vapor for r in runs])
    section.findings = [
        f"**Request to running guest: {total:.0f} ms** (median). Starting the domain is {start / total:.0%} of it; "
        f"Vapor's own work in both calls, {vapor:.0f} ms ({vapor / total:.0%}).",
        f"The API answers 202 after vm_create alone: {median_ms([c.seconds for c in creates]):.0f} ms, "
        f"of which libvirt {median_ms([c.libvirt for c in creates]):.0f} ms.",
        f"Delete takes {median_ms([c.seconds for c in deletes]):.0f} ms, "
        f"{median_ms(spent(deletes, 'undefine_domain')) / median_ms([c.seconds for c in deletes]):.0%} of it in undefine_domain, "
        "which pulls the plug on the running guest and waits for QEMU to exit before undefining.",
        query_finding({"vm_create": creates, "vm_provision": provisions, "vm_delete": deletes}),
    ]
    return section


def query_finding(calls: dict[str, list[Call]]) -> str:
    """Whether each service ran the same number of queries in every run: a count that varies means work depends on state."""
    varying = [name for name, made in calls.items() if len({c.queries for c in made}) > 1]
    if not varying:
        return "Each service ran the same number of SQL queries in every run."
    return f"The SQL query count varied between runs for {', '.join(varying)} (the column lists each count seen)."


def make_template(bench: Bench, data_mib: int) -> tuple[Path, float]:
    """A 20 GB qcow2 holding `data_mib` MiB of real data from offset 0, readable by QEMU (0644 in a 0755 dir)."""
    template = bench.disks / "template.qcow2"
    started = time.perf_counter()
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", str(template), f"{DISK_GB}G")
    run_tool("qemu-io", "-f", "qcow2", "-c", f"write -P 0xab 0 {data_mib}M", str(template))
    elapsed = time.perf_counter() - started
    template.chmod(0o644)
    info = image_info(str(template))
    require(int(info["actual-size"]) >= data_mib * MIB, f"the template holds less than {data_mib} MiB: {info}")
    return template, elapsed


def bench_clones(bench: Bench, repeats: int, data_mib: int) -> Section:
    template, made_in = make_template(bench, data_mib)
    say(f"part 2: template with {data_mib} MiB of data made in {made_in:.1f} s; linked vs full clone")
    data = data_mib * MIB

    def overlay(info: dict[str, Any]) -> None:
        require(info.get("backing-filename") == str(template), f"the linked clone is not an overlay on the template: {info}")

    def copy(info: dict[str, Any]) -> None:
        require("backing-filename" not in info and int(info["actual-size"]) >= data, f"the full clone is not a full copy: {info}")

    variants = {"linked clone": (True, overlay), "full clone": (False, copy)}
    results: dict[str, list[Lifecycle]] = {label: [] for label in variants}
    for round_number in range(1, repeats + 1):
        for label, (linked, check) in variants.items():
            name = bench.vm_name(f"{'linked' if linked else 'full'}-{round_number}")
            run = lifecycle(name, bench, {"clone_from": str(template), "linked": linked}, check)
            results[label].append(run)
            say(f"  round {round_number}: {label}: provision {run.provision.seconds * 1000:.0f} ms")
    section = Section(
        title="2. Clone of a template with real data: linked vs full",
        intro=(
            f"A template outside any pool (a VAPOR_DISK_ROOTS directory): a {DISK_GB} GB qcow2 holding {data_mib} MiB written by "
            f"qemu-io ({made_in:.1f} s to make), so the copy reads it from the page cache. Same VM as part 1 "
            'with `disks: [{"clone_from": template, "linked": true|false}]`. A linked clone is a qcow2 overlay libvirt creates '
            "with the template as backing file; a full clone is an empty volume libvirt creates, filled by `qemu-img convert` "
            "whose default cache mode for convert, `unsafe`, never flushes: the copy returns once the data is in the page cache "
            f"and the disk writes it later. Variants interleaved, {repeats} rounds."
        ),
        header=[
            "variant",
            "vm_create ms",
            "vm_provision ms",
            "clone_volume ms",
            "start_domain ms",
            "vm_delete ms",
            "volume on disk",
            "provision runs (ms)",
        ],
    )
    clone_ms: dict[str, float] = {}
    provision_ms: dict[str, float] = {}
    for label, runs in results.items():
        clone_ms[label] = median_ms([r.provision.spent.get("clone_volume", 0.0) for r in runs])
        provision_ms[label] = median_ms([r.provision.seconds for r in runs])
        section.rows.append(
            [
                label,
                f"{median_ms([r.create.seconds for r in runs]):.1f}",
                f"{provision_ms[label]:.1f}",
                f"{clone_ms[label]:.1f}",
                f"{median_ms([r.provision.spent.get('start_domain', 0.0) for r in runs]):.1f}",
                f"{median_ms([r.delete.seconds for r in runs]):.1f}",
                f"{statistics.median(r.allocation for r in runs) / MIB:,.1f} MiB",
                Measure(label, [r.provision.seconds for r in runs]).runs(1000, 1),
            ]
        )
    overlay_ms, copy_ms = provision_ms["linked clone"], provision_ms["full clone"]
    section.findings = [
        f"**A linked clone provisions in {overlay_ms:.0f} ms against {copy_ms:.0f} ms for a full clone "
        f"({copy_ms / overlay_ms:.1f}x faster)**; "
        f"the clone step itself: {clone_ms['linked clone']:.0f} ms vs {clone_ms['full clone']:.0f} ms.",
        f"The full copy moves {data_mib} MiB at {data / (clone_ms['full clone'] / 1000) / MB:,.0f} MB/s (clone step, "
        "including libvirt creating the empty volume and refreshing the pool): page-cache speed, as nothing is flushed; "
        "where the template exceeds the dirty-page limit (machine table), the copy would wait for the disk instead.",
        "vm_create also reads the template with `qemu-img info` (format, size, backing chain), the same for both variants.",
        "A linked clone's guest reads the template on every boot, so the template must stay in place and unchanged.",
    ]
    return section


# ---------------------------------------------------------------------------
# List endpoint


def add_vms(start: int, stop: int) -> None:
    """VMs `start`..`stop-1` as the ORM stores them after provisioning: two disks, one NIC and one CD-ROM each.

    Inserted in bulk, no services and no libvirt: the list endpoint is what is measured.
    """
    import uuid

    from isos.models import IsoImage
    from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine

    isos = list(IsoImage.objects.order_by("id"))
    vms = VirtualMachine.objects.bulk_create(
        VirtualMachine(
            name=f"bench-list-{n:05d}",
            uuid=uuid.uuid4(),
            memory_mb=2048,
            vcpus=2,
            os_type="linux",
            os_variant="ubuntu22.04",
            virt_type="qemu",
            storage_pool="default",
            graphics_port=5900 + n,
            status="running",
        )
        for n in range(start, stop)
    )
    Disk.objects.bulk_create(
        Disk(
            vm=vm,
            order=order,
            source="new",
            size_gb=20 * (order + 1),
            path=f"/var/lib/libvirt/images/{vm.name}-disk{order}.qcow2",
            volume_name=f"{vm.name}-disk{order}.qcow2",
            target_dev=f"vd{'ab'[order]}",
            boot_order=1 if order == 0 else None,
            created_by_vapor=True,
        )
        for vm in vms
        for order in range(2)
    )
    NetworkInterface.objects.bulk_create(
        NetworkInterface(vm=vm, order=0, mac=f"52:54:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}")
        for n, vm in enumerate(vms, start)
    )
    CdromAttachment.objects.bulk_create(
        CdromAttachment(
            vm=vm, iso=isos[n % len(isos)], resolved_by="filename", reference=isos[n % len(isos)].name, target_dev="sdc", boot_order=2
        )
        for n, vm in enumerate(vms, start)
    )


def add_isos() -> None:
    from isos.models import IsoImage

    IsoImage.objects.bulk_create(
        IsoImage(id=f"iso-{n:012x}", name=f"bench-{n}.iso", path=f"/var/lib/vapor/iso/bench-{n}.iso", size=GIB + n, status="ready")
        for n in range(ISO_POOL)
    )


def bench_list(requests: int, sizes: Sequence[int]) -> Section:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    from vms.models import VirtualMachine

    say("part 3: list endpoint")
    require(not VirtualMachine.objects.exists(), "parts 1-2 left VM rows behind")
    add_isos()
    user = get_user_model().objects.create_superuser("bench", "bench@example.invalid", secrets.token_hex(16))
    client = APIClient()
    client.force_authenticate(user)

    def get(expected: int) -> int:
        """One request; returns the body's size after checking it lists every VM with its parts."""
        response = client.get(LIST_URL)
        require(response.status_code == 200, f"GET {LIST_URL} answered {response.status_code}: {response.content[:300]!r}")
        rows = response.json()["virtualmachines"]
        require(
            len(rows) == expected and all(len(r["disks"]) == 2 and len(r["networks"]) == 1 and len(r["cdroms"]) == 1 for r in rows),
            "the list is not what was inserted",
        )
        return len(response.content)

    section = Section(
        title="3. List endpoint (GET /api/v1/virtualmachines/)",
        intro=(
            "Django test client (DRF APIClient, force_authenticate as a superuser) against SQLite, DEBUG off. VM rows are "
            f"inserted with the ORM (no libvirt); each VM has 2 disks, 1 NIC and a CD-ROM holding one of {ISO_POOL} ISOs. "
            f"{requests} requests per size after one untimed warm-up; queries counted with CaptureQueriesContext on one request."
        ),
        header=["VMs", "median ms", "min ms", "SQL queries / request", "response KiB"],
    )
    medians: dict[int, float] = {}
    query_counts: dict[int, int] = {}
    done = 0
    for size in sizes:
        add_vms(done, size)
        done = size
        require(VirtualMachine.objects.count() == size, "row count is off")
        get(size)  # warm-up: first-request imports and caches are not the endpoint's cost
        with CaptureQueriesContext(connection) as captured:
            body = get(size)
        queries = query_counts[size] = len(captured.captured_queries)
        samples: list[float] = []
        for _ in range(requests):
            started = time.perf_counter()
            get(size)
            samples.append(time.perf_counter() - started)
        medians[size] = statistics.median(samples)
        say(f"  {size} VMs: median {medians[size] * 1000:.1f} ms, {queries} queries")
        section.rows.append([str(size), f"{medians[size] * 1000:.1f}", f"{min(samples) * 1000:.1f}", str(queries), f"{body / 1024:.0f}"])
    small, large = min(sizes), max(sizes)
    per_vm = (medians[large] - medians[small]) / (large - small) * 1000
    section.findings = [
        f"Each extra VM adds about **{per_vm:.2f} ms** ({large} VMs take {medians[large] / medians[small]:.0f}x the time of {small}).",
        f"SQL queries per request: {query_counts[small]} with {small} VMs, {query_counts[large]} with {large}"
        + (
            " (constant: disks, NICs and CD-ROMs with their ISOs are prefetched)."
            if query_counts[small] == query_counts[large]
            else " (grows with the list: an N+1 query)."
        ),
        "The time includes serialising and parsing the JSON in the test client; the list is not paginated.",
    ]
    return section


# ---------------------------------------------------------------------------
# Machine facts and the report


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


def render(command: str, started: datetime, elapsed: float, facts: list[tuple[str, str]], sections: list[Section], repeats: int) -> str:
    lines = [
        "# Benchmarks: VM provisioning",
        "",
        "Written by `bench/vms_bench.py --write`; rerun it to refresh, do not edit by hand. These are measurements, not",
        "pass/fail tests, against the real libvirtd (`qemu:///system`) shared with other work on this VM: compare within one run.",
        "",
        f"- Command: `{command}`",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')} (whole run {elapsed:.0f} s)",
        f"- Method: parts 1-2 create, provision and delete {repeats} VMs per variant through Vapor's services and report the "
        "median; part 3 times the endpoint through the test client. Domains, volumes and the pool are named `bench-...`, "
        "live in a 0755 directory under /var/tmp and are removed at the end.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in facts),
        "",
    ]
    return "\n".join(lines) + "\n" + "\n".join(section.markdown() for section in sections)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vms_bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help="refresh this module's block of docs/BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=3, help="VMs per variant in parts 1-2 (median reported)")
    parser.add_argument("--template-mib", type=int, default=1024, help="data written into the clone template in part 2")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per list size in part 3")
    parser.add_argument("--tmpdir", type=Path, default=Path("/var/tmp"), help="parent of the work directory; QEMU must be able to enter it")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.requests < 1 or args.template_mib < 1:
        parser.error("--repeats, --requests and --template-mib must be at least 1")

    started = datetime.now(UTC)
    clock = time.perf_counter()
    command = " ".join([".venv/bin/python -m bench.vms_bench", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
    check_daemon()
    load_before = load_now()
    top = Path(tempfile.mkdtemp(prefix="vapor-bench-vms-", dir=args.tmpdir))
    top.chmod(0o755)  # QEMU runs as libvirt-qemu and must reach the pool and the template
    bench: Bench | None = None
    django_ready = False
    try:
        os.environ["VAPOR_VIRT_TYPE"] = "qemu"
        django_setup(top)
        django_ready = True
        from django.core.management import call_command

        say("migrating a fresh SQLite database")
        call_command("migrate", interactive=False, verbosity=0, stdout=io.StringIO())
        bench = prepare(top)
        sections = [
            bench_example_1(bench, args.repeats),
            bench_clones(bench, args.repeats, args.template_mib),
            bench_list(args.requests, (10, 200)),
        ]
        facts = [*machine_facts(top), *libvirt_facts(load_before, load_now())]
    finally:
        if bench is not None:
            remove_everything(bench.prefix, bench.pool)
        if django_ready:
            from django.db import connections

            connections.close_all()
        shutil.rmtree(top, ignore_errors=True)
    report = render(command, started, time.perf_counter() - clock, facts, sections, args.repeats)
    print(report)
    if args.write:
        write_report(REPORT_PATH, "vms", report)
        say(f"wrote the vms block of {REPORT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
