"""Benchmark of the VM list with guest addresses (issue 14, point 2): "VM list with addresses, 1,000 VMs: <= 1.2x the same
list without addresses, constant queries".

A measurement, not a test; no libvirt. A throwaway SQLite database holds `--vms` (1,000) VM rows as provisioning
leaves them (bench.vms_list: two disks, one NIC and a CD-ROM each). The candidate is `GET /api/v1/virtualmachines/`
as it is, each NIC holding two stored addresses (an IPv4 DHCP lease and an IPv6 one from the agent) and each VM its
`addresses_checked_at` and `guest_agent`. The baseline is the same list without addresses: the NICs hold none and
the serializers lack the three new keys (`networks[].addresses`, `addresses_checked_at`, `guest_agent`), as before
issue 14. The two are measured in interleaved pairs (`--pairs`), each the median CPU time (the test client serves
in this process) of `--requests` requests after an untimed warm-up; the SQL queries of one request are counted
with 1 VM and with all of them.

Run:  .venv/bin/python -m bench.addresses_bench [--write] [--vms 1000] [--pairs 7] [--requests 5]
--write refreshes this module's block of docs/BENCHMARKS.md, keeping the others.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.common import Run, Section, Target, django_setup, machine_facts, migrate, require, say, targets_section

URL = "/api/v1/virtualmachines/"
CAVEAT = "pass/fail tests: timings on a shared VM (2 vCPUs) with other work running; compare ratios, not times."
ADDRESSES = [
    {"address": "192.168.122.50", "prefix": 24, "family": "ipv4", "source": "lease"},
    {"address": "fd00:122::50", "prefix": 64, "family": "ipv6", "source": "agent"},
]
NEW_VM_KEYS = ("addresses_checked_at", "guest_agent")


@contextlib.contextmanager
def without_addresses() -> Iterator[None]:
    """The serializers as before issue 14: no `addresses` on NICs, no `addresses_checked_at` or `guest_agent` on VMs."""
    from vms.api.serializers import NicOutSerializer, VmSerializer

    saved: list[tuple[Any, list[str], dict[str, Any]]] = []
    for serializer, gone in ((NicOutSerializer, ("addresses",)), (VmSerializer, NEW_VM_KEYS)):
        declared = serializer._declared_fields
        saved.append((serializer, serializer.Meta.fields, dict(declared)))
        serializer.Meta.fields = [name for name in serializer.Meta.fields if name not in gone]
        for name in gone:
            declared.pop(name, None)
    try:
        yield
    finally:
        for serializer, fields, declared in saved:
            serializer.Meta.fields = fields
            serializer._declared_fields = declared


def set_addresses(filled: bool) -> None:
    from django.db import connection
    from django.utils import timezone

    from vms.models import NetworkInterface, VirtualMachine

    NetworkInterface.objects.update(addresses=ADDRESSES if filled else [])
    VirtualMachine.objects.update(
        addresses_checked_at=timezone.now() if filled else None, guest_agent_channel=filled, guest_agent_connected=filled
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM")  # rows rewritten in place of the old ones: the next reads do not pay for the churn


def timed_list(client: Any, requests: int, vms: int, *, with_addresses: bool) -> float:
    """The median CPU time of `requests` GETs of the whole list (the test client serves them in this process, so its
    CPU time is the endpoint's, whatever else the machine runs), after one untimed warm-up; every answer checked."""

    def get() -> None:
        response = client.get(URL)
        require(response.status_code == 200, f"GET {URL} answered {response.status_code}")
        rows = response.json()["virtualmachines"]
        require(len(rows) == vms, "the list is not what was inserted")
        nic = rows[-1]["networks"][0]
        if with_addresses:
            require(nic["addresses"] == ADDRESSES and rows[-1]["guest_agent"]["connected"], "the addresses are not in the list")
        else:
            require("addresses" not in nic and "guest_agent" not in rows[-1], "the baseline shows addresses")

    get()
    samples = []
    for _ in range(requests):
        started = time.process_time()
        get()
        samples.append(time.process_time() - started)
    return statistics.median(samples)


def count_queries(client: Any) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(URL)
    with CaptureQueriesContext(connection) as captured:
        client.get(URL)
    return len(captured.captured_queries)


def main(argv: Sequence[str] | None = None) -> int:
    run = Run("addresses_bench", "VM list with guest addresses", CAVEAT, argv)
    parser = run.parser(__doc__)
    parser.add_argument("--write", action="store_true", help="refresh this module's block of docs/BENCHMARKS.md")
    parser.add_argument("--vms", type=int, default=1000, help="VMs in the list (default 1000)")
    parser.add_argument("--pairs", type=int, default=7, help="interleaved baseline/candidate pairs (default 7)")
    parser.add_argument("--requests", type=int, default=5, help="requests per measurement, the median counts (default 5)")
    parser.add_argument("--quick", action="store_true", help="100 VMs, 3 pairs of 3: a check that it all runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.vms, args.pairs, args.requests = 100, 3, 3
    top = Path(tempfile.mkdtemp(prefix="vapor-bench-addr-"))
    try:
        django_setup(top)
        migrate("migrating a fresh SQLite database")
        from django.contrib.auth import get_user_model
        from rest_framework.test import APIClient

        from bench.vms_list import add_isos, add_vms

        client = APIClient()
        client.force_authenticate(get_user_model().objects.create_superuser("bench", "bench@example.invalid", secrets.token_hex(16)))
        add_isos()
        add_vms(0, 1)
        set_addresses(True)
        queries_one = count_queries(client)
        say(f"inserting {args.vms} VMs")
        add_vms(1, args.vms)
        set_addresses(True)
        queries_all = count_queries(client)
        with without_addresses():
            set_addresses(False)
            baseline_queries = count_queries(client)
        target = Target(
            1, f"VM list with addresses, {args.vms} VMs", "the same list without addresses", "ms CPU", 1.2, higher_is_better=False
        )
        for pair in range(args.pairs):
            with without_addresses():
                set_addresses(False)
                base = timed_list(client, args.requests, args.vms, with_addresses=False)
            set_addresses(True)
            cand = timed_list(client, args.requests, args.vms, with_addresses=True)
            target.add(base * 1000, cand * 1000)
            say(f"  pair {pair + 1}: without {base * 1000:.0f} ms, with {cand * 1000:.0f} ms")
        target.note = f"and constant queries: {queries_one} with 1 VM, {queries_all} with {args.vms}"
        target.extra_met = queries_one == queries_all
        detail = Section(
            "Queries per request",
            "SQL queries of one `GET /api/v1/virtualmachines/` (whole list), counted with CaptureQueriesContext.",
            ["list", "VMs", "SQL queries"],
            [
                ["with addresses", "1", str(queries_one)],
                ["with addresses", str(args.vms), str(queries_all)],
                ["without addresses", str(args.vms), str(baseline_queries)],
            ],
            findings=[
                "The addresses are read with the NICs the list already prefetches (a JSON column of the NIC row, written by "
                "the state schedule), so they add no query; the list never asks libvirt.",
                f"Each NIC holds {len(ADDRESSES)} addresses (an IPv4 lease, an IPv6 agent address), the same on every NIC.",
            ],
        )
        method = (
            f"{args.vms} VM rows (2 disks, 1 NIC, 1 CD-ROM each) in a fresh SQLite database, DEBUG off, DRF test client as a "
            f"superuser; {args.pairs} interleaved pairs, each side the median CPU time of {args.requests} requests after a warm-up "
            "(`time.process_time`: the test client serves in-process, so other load on the machine does not count)."
        )
        sections = [targets_section([target]), detail]
        run.publish(run.render(method, machine_facts(top), sections), args.write)
        require(target.extra_met, "the query count grows with the list")
    finally:
        from django.db import connections

        connections.close_all()
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
