"""Targets 4 and 5 of issue 6, for bench.vms_bench: provisioning a linked clone, and a full clone, against raw tools.

Target 4: from POSTing create-enhanced (DRF's test client, the real view, django-q2 in sync mode so the
provisioning task runs inside the request as the worker would run it) until that task returns with the
domain running and recorded as such, against raw
libvirt-python opening a connection, defining the same XML (the XML Vapor's dry run gives for that name) and
starting it, on an overlay `qemu-img create -b` made beforehand. Twice: a 20 GiB template with real data and a
200 MiB one, so the ratio of Vapor's two times shows whether provisioning is flat in the template's size.

Target 5: `clone_volume(..., linked=False)` as provisioning calls it (libvirt creates the empty volume,
`qemu-img convert -n --target-is-zero -t writeback` fills and flushes it, the pool is refreshed) against `qemu-img convert
-t writeback` of the same file into a new file, which flushes too.

Each pair runs its two sides back to back, alternating which goes first; every domain is destroyed before the
next measurement, so no guest competes with one being measured for the two CPUs.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import GIB, MB, MIB, Section, Target, require, say
from bench.vms_libvirt import URI, Bench, domain_state, image_info, run_tool, virsh

CREATE_URL = "/api/v1/virtualmachines/create-enhanced"
GUEST = {"memory": 256, "vcpus": 1, "graphics": {"type": "none"}, "networks": [{"type": "nat", "source": "default"}]}
FLAT_TARGET = 1.1  # "the same within noise": Vapor's time with the large template over the small one's
CONVERT_FLAGS = ("-t", "writeback", "-f", "qcow2", "-O", "qcow2")  # the baseline of target 5, as Vapor's copy: flushed


@dataclass(frozen=True)
class Template:
    label: str
    path: Path
    virtual: int
    data: int
    made_in: float


def make_template(bench: Bench, label: str, virtual: int, data_mib: int) -> Template:
    """A qcow2 of `virtual` bytes holding `data_mib` MiB of real data from offset 0, readable by QEMU (0644 in a 0755 dir)."""
    path = bench.disks / f"template-{label.replace(' ', '')}.qcow2"
    started = time.perf_counter()
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", str(path), str(virtual))
    run_tool("qemu-io", "-f", "qcow2", "-c", f"write -P 0xab 0 {data_mib}M", str(path))
    made_in = time.perf_counter() - started
    path.chmod(0o644)
    info = image_info(str(path))
    require(int(info["actual-size"]) >= data_mib * MIB and info["virtual-size"] == virtual, f"{path} is not what was asked: {info}")
    return Template(label, path, virtual, data_mib * MIB, made_in)


def size_words(size: int) -> str:
    return f"{size // GIB} GiB" if size % GIB == 0 else f"{size // MIB} MiB"


# ---------------------------------------------------------------------------
# Target 4: API accept -> running, against raw libvirt-python define + start


@contextmanager
def tasks_inline() -> Iterator[list[float]]:
    """django-q2's sync mode for the block, as VAPOR_Q_SYNC=1 gives: `async_task` runs the task in-process.

    Switched here rather than in the environment because part 2 calls vm_create and vm_provision apart.
    Yields the list of the moments (perf_counter) each `vms.tasks.provision_vm` returned: the domain is
    running and Vapor has recorded it. What the request does after that (django-q2 storing the task's
    result, the view reading the VM back for the 202 body) is not provisioning, so the clock stops there.
    """
    from django_q.conf import Conf

    from vms import tasks

    finished: list[float] = []
    original = tasks.provision_vm

    def provision_vm(vm_id: int) -> None:  # django-q2 finds the task by its dotted name, so it finds this
        try:
            original(vm_id)
        finally:
            finished.append(time.perf_counter())

    chatter = logging.getLogger("django-q")  # in sync mode it warns on every task that connections are shared
    before, level = Conf.SYNC, chatter.level
    Conf.SYNC, tasks.provision_vm = True, provision_vm
    chatter.setLevel(logging.ERROR)
    try:
        yield finished
    finally:
        Conf.SYNC, tasks.provision_vm = before, original
        chatter.setLevel(level)


def api_client() -> Any:
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    user = get_user_model().objects.create_superuser("bench-provision", "provision@example.invalid", os.urandom(16).hex())
    client = APIClient()
    client.force_authenticate(user)
    return client


def body(bench: Bench, name: str, template: Template) -> dict[str, Any]:
    return {**GUEST, "name": name, "storage_pool": bench.pool, "disks": [{"clone_from": str(template.path), "linked": True}]}


def vapor_provision(client: Any, bench: Bench, name: str, template: Template) -> tuple[float, float]:
    """(seconds from POSTing create-enhanced until the task, run inline, returned; seconds until the response).

    Then checks what was made and deletes the VM (untimed).
    """
    from vms.models import VirtualMachine
    from vms.services.lifecycle import vm_delete

    with tasks_inline() as finished:
        started = time.perf_counter()
        response = client.post(CREATE_URL, body(bench, name, template), format="json")
        answered = time.perf_counter() - started
    require(response.status_code == 202, f"create-enhanced answered {response.status_code}: {response.content[:500]!r}")
    require(len(finished) == 1, f"the provisioning task ran {len(finished)} times in the request")
    vm = VirtualMachine.objects.get(name=name)
    require(vm.status == "running", f"{name} is {vm.status} after the request: {vm.error}")
    require(domain_state(name) == "running", f"libvirt says {name} is {domain_state(name)!r}")
    info = image_info(vm.disks.get().path)
    require(info.get("backing-filename") == str(template.path), f"{name}'s disk is not an overlay on {template.path}: {info}")
    vm_delete(vm=vm)
    return finished[0] - started, answered


def vapor_xml(client: Any, bench: Bench, name: str, template: Template) -> tuple[str, Path]:
    """The domain XML Vapor generates for `name` (create-enhanced's dry run) and the disk path it names."""
    response = client.post(f"{CREATE_URL}?dry_run=1", body(bench, name, template), format="json")
    require(response.status_code == 200, f"the dry run answered {response.status_code}: {response.content[:500]!r}")
    disk = Path(response.data["vm"]["disks"][0]["path"])
    require(disk.parent == bench.pool_dir, f"the dry run put the disk at {disk}")
    return response.data["domain_xml"], disk


def raw_provision(client: Any, bench: Bench, name: str, template: Template) -> tuple[float, float]:
    """(seconds to open, define and start with libvirt-python, seconds `qemu-img create -b` took); then removes it (untimed)."""
    import libvirt

    xml, disk = vapor_xml(client, bench, name, template)
    started = time.perf_counter()
    run_tool("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(template.path), "-F", "qcow2", str(disk))
    overlay = time.perf_counter() - started
    conn = None
    try:
        started = time.perf_counter()
        conn = libvirt.open(URI)
        domain = conn.defineXML(xml)
        domain.create()
        elapsed = time.perf_counter() - started
        require(domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING, f"{name} is not running")
        domain.destroy()
        domain.undefine()
    finally:
        if conn is not None:
            conn.close()
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        disk.unlink(missing_ok=True)
    return elapsed, overlay


@dataclass
class ProvisionFigures:
    templates: tuple[Template, Template]  # large, small
    vapor: dict[str, list[float]] = field(default_factory=dict)  # POST until the task returned
    answered: dict[str, list[float]] = field(default_factory=dict)  # POST until the response
    raw: dict[str, list[float]] = field(default_factory=dict)
    overlay: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        for samples in (self.vapor, self.answered, self.raw):
            samples.update({t.label: [] for t in self.templates})


def measure_provisioning(bench: Bench, rounds: int, large: Template, small: Template) -> ProvisionFigures:
    client = api_client()
    figures = ProvisionFigures((large, small))
    # Warm-up, untimed: the first request imports and compiles what every later one reuses.
    vapor_provision(client, bench, bench.vm_name("warm-vapor"), small)
    raw_provision(client, bench, bench.vm_name("warm-raw"), small)
    for number in range(1, rounds + 1):
        # Which side of a pair goes first alternates every round, which template goes first every two rounds:
        # over four rounds each of the four measurements has held each slot of the round once.
        sides = ("raw", "vapor") if number % 2 else ("vapor", "raw")
        first, second = (large, small) if (number - 1) // 2 % 2 == 0 else (small, large)
        plan = [(sides[0], first), (sides[1], first), (sides[1], second), (sides[0], second)]
        for side, template in plan:
            name = bench.vm_name(f"{side}-{template.label.replace(' ', '')}-{number}")
            if side == "vapor":
                running, answered = vapor_provision(client, bench, name, template)
                figures.vapor[template.label].append(running)
                figures.answered[template.label].append(answered)
            else:
                seconds, overlay = raw_provision(client, bench, name, template)
                figures.raw[template.label].append(seconds)
                figures.overlay.append(overlay)
        last = [f"{t.label}: raw {figures.raw[t.label][-1]:.3f} s, Vapor {figures.vapor[t.label][-1]:.3f} s" for t in (large, small)]
        say(f"  round {number}: " + "; ".join(last))
    return figures


# ---------------------------------------------------------------------------
# Target 5: full clone against qemu-img convert


def vapor_full_clone(bench: Bench, name: str, template: Template) -> float:
    """clone_volume(linked=False) on a fresh driver, as the provisioning task calls it; then checks and deletes (untimed)."""
    from vms.hypervisor.libvirt_driver import LibvirtDriver

    with LibvirtDriver(URI) as driver:
        started = time.perf_counter()
        volume = driver.clone_volume(bench.pool, name, str(template.path), "qcow2", linked=False, fmt="qcow2")
        elapsed = time.perf_counter() - started
        info = image_info(volume.path)
        require("backing-filename" not in info and int(info["actual-size"]) >= template.data, f"not a full copy: {info}")
        driver.delete_volume(bench.pool, name)
    return elapsed


def convert_command(source: Path, dest: Path) -> list[str]:
    return ["qemu-img", "convert", *CONVERT_FLAGS, str(source), str(dest)]


def raw_full_clone(bench: Bench, name: str, template: Template) -> float:
    dest = bench.pool_dir / name
    try:
        started = time.perf_counter()
        run_tool(*convert_command(template.path, dest))
        elapsed = time.perf_counter() - started
        info = image_info(str(dest))
        require("backing-filename" not in info and int(info["actual-size"]) >= template.data, f"not a full copy: {info}")
    finally:
        dest.unlink(missing_ok=True)
    return elapsed


def measure_full_clones(bench: Bench, rounds: int, template: Template) -> tuple[list[float], list[float]]:
    """(baseline seconds, Vapor seconds) per pair. Each copy is deleted and the disk synced before the next (untimed)."""
    raw: list[float] = []
    vapor: list[float] = []
    sides: dict[str, Callable[[Bench, str, Template], float]] = {"raw": raw_full_clone, "vapor": vapor_full_clone}
    for number in range(1, rounds + 1):
        order = ("raw", "vapor") if number % 2 else ("vapor", "raw")
        for side in order:
            os.sync()
            seconds = sides[side](bench, bench.vm_name(f"full-{side}-{number}.qcow2"), template)
            (raw if side == "raw" else vapor).append(seconds)
        say(f"  pair {number}: qemu-img convert {raw[-1] * 1000:.0f} ms, clone_volume {vapor[-1] * 1000:.0f} ms")
    os.sync()
    return raw, vapor


# ---------------------------------------------------------------------------
# The report's rows


def targets(bench: Bench, rounds: int, data_mib: int) -> tuple[list[Target], Section]:
    """Targets 4 and 5, measured; and a section with the times behind their ratios."""
    large = make_template(bench, "20 GiB", 20 * GIB, data_mib)
    small = make_template(bench, "200 MiB", 200 * MIB, min(data_mib, 200))
    say(f"targets 4-5: templates made in {large.made_in:.1f} s and {small.made_in:.1f} s")
    say("target 4: create-enhanced -> running vs raw libvirt define + start")
    figures = measure_provisioning(bench, rounds, large, small)
    say("target 5: clone_volume(linked=False) vs qemu-img convert")
    convert, clone = measure_full_clones(bench, rounds, large)

    what = "Provisioning a linked clone of a {} template ({} data): POST create-enhanced until the task returns, domain running"
    baseline = "libvirt-python: open, defineXML, create of the same XML on a fresh `qemu-img create -b` overlay"
    found: list[Target] = []
    for template in (large, small):
        target = Target(4, what.format(size_words(template.virtual), size_words(template.data)), baseline, "s", 1.5, False)
        for raw, vapor in zip(figures.raw[template.label], figures.vapor[template.label], strict=True):
            target.add(raw, vapor)
        found.append(target)
    flat = Target(4, "Flat in template size: Vapor with the 20 GiB template", "Vapor with the 200 MiB template", "s", FLAT_TARGET, False)
    for small_time, large_time in zip(figures.vapor[small.label], figures.vapor[large.label], strict=True):
        flat.add(small_time, large_time)
    raw_flat = [a / b for a, b in zip(figures.raw[large.label], figures.raw[small.label], strict=True)]
    spread = f"{min(raw_flat):.2f} / {statistics.median(raw_flat):.2f} / {max(raw_flat):.2f}"
    flat.note = f"the baseline's own 20 GiB / 200 MiB ratio, as noise: {spread}"
    found.append(flat)
    full = Target(
        5,
        f"Full clone of the {size_words(large.virtual)} template ({size_words(large.data)} data): `clone_volume(linked=False)`, flushed",
        f"`qemu-img convert {' '.join(CONVERT_FLAGS)} SRC DST`, flushed by `-t writeback`",
        "s",
        1.2,
        False,
    )
    for raw, vapor in zip(convert, clone, strict=True):
        full.add(raw, vapor)
    found.append(full)
    return found, detail_section(figures, convert, clone, rounds)


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f}"


def detail_section(figures: ProvisionFigures, convert: list[float], clone: list[float], rounds: int) -> Section:
    large, small = figures.templates
    section = Section(
        title="1. Targets 4 and 5 in detail",
        intro=(
            "The times behind the ratios above (median, fastest, slowest, in ms). A guest is 256 MB, 1 vCPU, one virtio disk, "
            "a NIC on `default`, no graphics, TCG. Vapor's time is one POST through DRF's test client with django-q2 in sync "
            "mode: validation, rows, then the provisioning task inline (overlay, define, start). The baseline's XML is "
            "the one create-enhanced's dry run gives for its name, and its overlay is made by `qemu-img create -b` before "
            f"the clock starts. One untimed warm-up of each side, then {rounds} rounds."
        ),
        header=["what", "median ms", "min ms", "max ms"],
    )

    def row(label: str, samples: list[float]) -> None:
        section.rows.append([label, ms(samples), f"{min(samples) * 1000:.1f}", f"{max(samples) * 1000:.1f}"])

    for template in (large, small):
        row(f"raw define + start, {template.label} template", figures.raw[template.label])
        row(f"Vapor POST -> task returned (running), {template.label} template", figures.vapor[template.label])
        row(f"Vapor POST -> 202 response, {template.label} template", figures.answered[template.label])
    row("`qemu-img create -b` of the baseline's overlay (not in the baseline)", figures.overlay)
    row("`qemu-img convert` (target 5 baseline)", convert)
    row("Vapor `clone_volume(linked=False)`", clone)
    after = statistics.median([a - r for a, r in zip(figures.answered[large.label], figures.vapor[large.label], strict=True)])
    overheads = {t.label: statistics.median(figures.vapor[t.label]) - statistics.median(figures.raw[t.label]) for t in (large, small)}
    section.findings = [
        "Vapor's time over raw libvirt, at the medians: "
        + ", ".join(f"{overheads[t.label] * 1000:.0f} ms with the {t.label} template" for t in (large, small))
        + ": the request, validation (qemu-img info of the template, host checks), rows, the event log and the overlay.",
        "The request goes on after the task: django-q2 stores the task's result and the view reads the VM back for the "
        f"202 body, {after * 1000:.0f} ms "
        "(median, 20 GiB template) that are not provisioning and are left out of target 4.",
        f"Copying {size_words(large.data)} of data: qemu-img convert at {large.data / statistics.median(convert) / MB:,.0f} MB/s, "
        f"Vapor's clone at {large.data / statistics.median(clone) / MB:,.0f} MB/s, both including the flush to disk.",
    ]
    return section
