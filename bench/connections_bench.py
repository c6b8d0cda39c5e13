"""Benchmark of kept connections (issue 15, point 2): an API request that needs the hypervisor, p50.

A measurement, not a test. One real defined domain on the real libvirtd (`qemu:///system`, TCG, 64 MiB, no OS,
running) and its VM row in a throwaway SQLite database. `GET /api/v1/virtualmachines/{id}` reads the
domain's state and its console from libvirt. Each pair, in alternating order, times `--requests` such GETs
through Django's test client:

- baseline: today's connect-per-request before issue 15, reproduced by dropping the process's kept
  connections (`vms.hypervisor.forget_hypervisors()`) before each request, so each one opens its own;
- Vapor: the kept connection, opened once and used by every request.

The ratio is requests per second at the p50 (Vapor's over the baseline's): the target is >= 5x.

Run:  flock /tmp/vapor-libvirt.lock .venv/bin/python -m bench.connections_bench [--write] [--pairs 8] [--requests 40]
--write refreshes this module's block of docs/BENCHMARKS.md, keeping the others.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import libvirt

from bench.common import Run, Section, Target, django_setup, machine_facts, migrate, require, say, targets_section

URI = "qemu:///system"
CAVEAT = "pass/fail tests, against the real libvirtd shared with other work on this VM (2 vCPUs, TCG guests)."
DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
    <memballoon model='none'/>
    <video><model type='none'/></video>
  </devices>
</domain>"""


def p50_of(requests: int, once: Callable[[], None], before: Callable[[], None] | None = None) -> float:
    """The median wall time of `requests` calls of `once` (`before` runs untimed before each)."""
    samples = []
    for _ in range(requests):
        if before is not None:
            before()
        started = time.perf_counter()
        once()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main(argv: Sequence[str] | None = None) -> int:
    run = Run("connections_bench", "kept libvirt connections", CAVEAT, argv)
    parser = run.parser(__doc__)
    parser.add_argument("--write", action="store_true", help="refresh this module's block of docs/BENCHMARKS.md")
    parser.add_argument("--pairs", type=int, default=8, help="pairs of runs (default 8)")
    parser.add_argument("--requests", type=int, default=40, help="requests per side per pair (default 40)")
    parser.add_argument("--uri", action="append", default=None, help=f"libvirt URI to measure (repeatable; default {URI})")
    parser.add_argument("--quick", action="store_true", help="3 pairs of 10: a check that it all runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.requests = 3, 10
    uris = args.uri or [URI]
    for uri in uris:
        done = subprocess.run(["virsh", "-c", uri, "list"], capture_output=True, text=True, timeout=30, check=False)
        require(done.returncode == 0, f"libvirtd does not answer on {uri}; start it (scripts/libvirtd.sh, scripts/hosts.sh)")
    top = Path(tempfile.mkdtemp(prefix="vapor-bench-conn-"))
    try:
        django_setup(top)
        migrate("migrating a fresh SQLite database")
        targets, sections, facts = [], [], machine_facts(top)
        for number, uri in enumerate(uris, start=1):
            target, detail, versions = measure(number, uri, args.pairs, args.requests)
            targets.append(target)
            sections.append(detail)
            facts.append((f"libvirt / QEMU at {uri}", versions))
        method = f"{args.pairs} interleaved pairs of {args.requests} GETs per side and URI, in-process (Django test client)."
        run.publish(run.render(method, facts, [targets_section(targets), *sections]), args.write)
    finally:
        shutil.rmtree(top, ignore_errors=True)
        from django.db import connections

        connections.close_all()
    return 0


def measure(number: int, uri: str, pairs: int, requests: int) -> tuple[Target, Section, str]:
    """One URI's pairs: a domain defined and started there, its VM row on a host with that URI, the GETs timed."""
    import uuid

    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from vms.hypervisor import forget_hypervisors
    from vms.models import Host, VirtualMachine

    name = "bench-conn-" + secrets.token_hex(4)
    conn = libvirt.open(uri)
    domain = None
    try:
        host, _ = Host.objects.get_or_create(name=f"bench-{number}", defaults={"uri": uri})
        domain = conn.defineXML(DOMAIN.format(name=name))
        domain.create()
        vm = VirtualMachine.objects.create(
            name=name, uuid=uuid.UUID(domain.UUIDString()), memory_mb=64, vcpus=1, virt_type="qemu", machine="q35",
            status="running", graphics_type="vnc", host=host,
        )  # fmt: skip
        client = APIClient()
        user, _ = User.objects.get_or_create(username="bench", defaults={"is_superuser": True, "is_staff": True})
        client.force_authenticate(user)
        url = f"/api/v1/virtualmachines/{vm.pk}"

        def get() -> None:
            response = client.get(url)
            require(response.status_code == 200, f"GET {url} answered {response.status_code}: {response.content[:300]!r}")
            require(response.json()["state"] == "running", f"the state was not read from libvirt: {response.json()['state']!r}")

        get()  # warm: the URL table, the first queries, the connection
        target = Target(
            number, f"API request that needs the hypervisor (GET a VM: state and console from libvirt), p50, `{uri}`",
            "connect-per-request (the connection dropped before each request)", "req/s", 5.0, higher_is_better=True,
        )  # fmt: skip
        for index in range(pairs):
            sides: list[tuple[str, Callable[[], None] | None]] = [("baseline", forget_hypervisors), ("kept", None)]
            if index % 2:
                sides.reverse()
            p50 = {side: p50_of(requests, get, before) for side, before in sides}
            target.add(1 / p50["baseline"], 1 / p50["kept"])
            say(f"  {uri} pair {index + 1}: connect-per-request p50 {p50['baseline'] * 1000:.2f} ms, kept {p50['kept'] * 1000:.2f} ms")
        versions = f"{libvirt.getVersion() // 1000000}.{libvirt.getVersion() // 1000 % 1000} / " + (
            f"{conn.getVersion() // 1000000}.{conn.getVersion() // 1000 % 1000}"
        )
        detail = Section(
            title=f"Request times, {uri}",
            intro=f"The p50 of each side's {requests} requests, per pair.",
            header=["side", "median of p50s, ms", "min ms", "max ms"],
            rows=[
                [label, f"{1000 / statistics.median(s):.2f}", f"{1000 / max(s):.2f}", f"{1000 / min(s):.2f}"]
                for label, s in (("connect-per-request", target.baseline_samples), ("kept connection", target.candidate_samples))
            ],
        )
        return target, detail, versions
    finally:
        if domain is not None:
            for step in (domain.destroy, domain.undefine):
                try:
                    step()
                except libvirt.libvirtError as exc:
                    say(f"cleanup: {exc}")
        conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
