"""Benchmarks of VM provisioning against the real libvirtd: issue 6's targets 4-5, create-enhanced, list endpoint.

These are measurements, not tests: nothing here fails because something is
slow. The targets (bench.vms_targets) are ratios measured side by side in
one run: provisioning a linked clone through the API against raw
libvirt-python define + start of the same XML, for a 20 GiB and a 200 MiB
template, and a full clone against `qemu-img convert`; part 1 gives the
times behind those ratios. Part 2 shows where the time between a
create-enhanced request and a running guest goes (Vapor's validation and
rows, libvirt's volume, define and start); part 3 whether the VM list
endpoint's queries stay fixed as the number of VMs grows.

Part 2 goes through Vapor's own code paths (`vm_create`, then
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

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import GIB, Measure, Run, Section, django_setup, machine_facts, median_ms, migrate, require, say, targets_section
from bench.vms_libvirt import (
    Bench,
    Call,
    Lifecycle,
    check_daemon,
    connect_once,
    libvirt_facts,
    lifecycle,
    load_now,
    prepare,
    remove_everything,
)
from bench.vms_list import bench_list
from bench.vms_targets import targets

DISK_GB = 20  # the spec's example 1: one 20 GB disk
# The report head's second line: what the figures may be compared with.
CAVEAT = "pass/fail tests, against the real libvirtd (`qemu:///system`) shared with other work on this VM: compare within one run."


def ms_row(label: str, samples: Sequence[float], queries: Sequence[int] | None = None) -> list[str]:
    measure = Measure(label, list(samples))
    counts = "" if queries is None else "/".join(str(q) for q in sorted(set(queries)))
    return [label, f"{measure.median * 1000:.1f}", counts, measure.runs(1000, 1)]


def bench_example_1(bench: Bench, repeats: int) -> Section:
    say("part 2: example 1 (one 20 GB qcow2 disk), create -> running -> deleted")
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
        title="2. create-enhanced, example 1: request to running guest, then delete",
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


def main(argv: Sequence[str] | None = None) -> int:
    run = Run("vms_bench", "VM provisioning", CAVEAT, argv)
    parser = run.parser(__doc__)
    parser.add_argument("--write", action="store_true", help="refresh this module's block of docs/BENCHMARKS.md")
    parser.add_argument("--rounds", type=int, default=8, help="pairs per ratio of targets 4 and 5 (at least 5 for the report)")
    parser.add_argument("--repeats", type=int, default=3, help="VMs in part 2 (median reported)")
    parser.add_argument("--template-mib", type=int, default=1024, help="data written into the 20 GiB template of targets 4-5")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per list size in part 3")
    parser.add_argument("--tmpdir", type=Path, default=Path("/var/tmp"), help="parent of the work directory; QEMU must be able to enter it")
    args = parser.parse_args(argv)
    if min(args.rounds, args.repeats, args.requests, args.template_mib) < 1:
        parser.error("--rounds, --repeats, --requests and --template-mib must be at least 1")

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
        migrate("migrating a fresh SQLite database")
        bench = prepare(top)
        found, detail = targets(bench, args.rounds, args.template_mib)
        sections = [
            targets_section(found),
            detail,
            bench_example_1(bench, args.repeats),
            bench_list(args.requests, (10, 200)),
        ]
        facts = [*machine_facts(top), *libvirt_facts(load_before, load_now())]
    finally:
        if bench is not None:
            remove_everything(bench)
        if django_ready:
            from django.db import connections

            connections.close_all()
        shutil.rmtree(top, ignore_errors=True)
    method = (
        f"targets 4-5 measure {args.rounds} interleaved pairs per ratio (min/median/max of the per-pair ratios), part 1 shows "
        f"their times; part 2 creates, provisions and deletes {args.repeats} VMs through Vapor's services and reports the median; "
        "part 3 times the endpoint through the test client. Domains, volumes and the pool are named `bench-...`, live in a "
        "0755 directory under /var/tmp and are removed at the end."
    )
    run.publish(run.render(method, facts, sections), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
