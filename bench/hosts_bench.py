"""Benchmark of the state refresh over several hosts (issue 15, point 7): 3 hosts with one dead vs all up.

A measurement, not a test. Three libvirt hosts of the test bed (scripts/hosts.sh: libvirtds vh1..vh3 in their
own namespaces, over qemu+tcp), each with `--domains` defined, shut-off domains and their VM rows (stopped) in a
throwaway SQLite database. `vms.services.states.vm_refresh_states()` (the schedule's refresh: one listing per
host, the hosts read in parallel) is timed. Each pair, in alternating order:

- all up: vh3 running and checked up (`hosts_check`), the refresh timed;
- one dead: vh3's libvirtd killed (SIGKILL, `hosts.sh kill`); its first refresh finds it dead (timed apart: the
  detection) and turns its VMs unknown; the refresh after that is the candidate (the steady state while it is
  down). vh3 is restarted and checked before the next pair.

Once, after the pairs, vh3's libvirtd is stopped with SIGSTOP (a host that accepts connections and never
answers): the detection is bounded by the check budget (connect timeout + keepalive), never hung; that figure is
reported beside the ratio.

Run:  flock /tmp/vapor-libvirt.lock .venv/bin/python -m bench.hosts_bench [--write] [--pairs 8] [--domains 20]
--write refreshes this module's block of docs/BENCHMARKS.md, keeping the others.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import libvirt

from bench.common import Run, Section, Target, django_setup, machine_facts, migrate, require, say, targets_section

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ("vh1", "vh2", "vh3")
DEAD = "vh3"
CAVEAT = "pass/fail tests, against libvirt daemons on this one VM (2 vCPUs), each in its own namespaces."
DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices><memballoon model='none'/></devices></domain>"""


def hosts_sh(*args: str) -> str:
    done = subprocess.run(["bash", str(ROOT / "scripts/hosts.sh"), *args], capture_output=True, text=True, timeout=120, check=False)
    require(done.returncode == 0, f"hosts.sh {' '.join(args)} failed: {done.stderr[-800:]}")
    return done.stdout.strip()


def libvirtd_pid(name: str) -> int:
    return int((ROOT / "var/hosts" / name / "run/libvirtd.pid").read_text().strip())


def timed_refresh() -> float:
    from vms.services.states import vm_refresh_states

    started = time.perf_counter()
    vm_refresh_states()
    return time.perf_counter() - started


def bring_back() -> None:
    from vms.models import VirtualMachine
    from vms.services.hosts import hosts_check

    hosts_sh("restart", DEAD)
    for _ in range(50):
        if hosts_check()[DEAD] == "up":
            break
        time.sleep(0.2)
    left = VirtualMachine.objects.filter(host__name=DEAD).exclude(status="stopped").count()
    require(left == 0, f"{left} VMs of {DEAD} were not reconciled once it was back")


def main(argv: Sequence[str] | None = None) -> int:
    run = Run("hosts_bench", "state refresh over several hosts", CAVEAT, argv)
    parser = run.parser(__doc__)
    parser.add_argument("--write", action="store_true", help="refresh this module's block of docs/BENCHMARKS.md")
    parser.add_argument("--pairs", type=int, default=8, help="pairs (default 8)")
    parser.add_argument("--domains", type=int, default=20, help="domains and VMs per host (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 pairs, 5 domains: a check that it all runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.domains = 3, 5
    hosts_sh("start", str(len(HOSTS)))
    top = Path(tempfile.mkdtemp(prefix="vapor-bench-hosts-"))
    try:
        django_setup(top)
        migrate("migrating a fresh SQLite database")
        from django.conf import settings

        from vms.models import Host, VirtualMachine
        from vms.services.hosts import check_budget, hosts_check

        uris = {name: hosts_sh("uri", name) for name in HOSTS}
        for name, uri in uris.items():
            host = Host.objects.create(name=name, uri=uri)
            conn = libvirt.open(uri)
            try:
                for index in range(args.domains):
                    vm_name = f"bench-{name}-{index}"
                    conn.defineXML(DOMAIN.format(name=vm_name))
                    VirtualMachine.objects.create(
                        name=vm_name, memory_mb=32, vcpus=1, virt_type="qemu", status="stopped", graphics_type="none", host=host
                    )
            finally:
                conn.close()
        hosts_check()
        timed_refresh()  # warm: the kept connections, the first queries
        target = Target(
            1, f"state refresh of all VMs ({args.domains} per host), 3 hosts with one dead (libvirtd killed)",
            "the same with all up", "s", 1.2, higher_is_better=False,
        )  # fmt: skip
        detections: list[float] = []
        for index in range(args.pairs):
            order = ["up", "dead"] if index % 2 == 0 else ["dead", "up"]
            got: dict[str, float] = {}
            for side in order:
                if side == "up":
                    got["up"] = timed_refresh()
                else:
                    hosts_sh("kill", DEAD)
                    detections.append(timed_refresh())
                    unknown = VirtualMachine.objects.filter(host__name=DEAD, status="unknown").count()
                    require(unknown == args.domains, f"{unknown} of {DEAD}'s VMs unknown after its first refresh")
                    got["dead"] = timed_refresh()
                    bring_back()
            target.add(got["up"], got["dead"])
            say(f"  pair {index + 1}: all up {got['up'] * 1000:.1f} ms, one dead {got['dead'] * 1000:.1f} ms")
        # A host that accepts connections and never answers: its libvirtd stopped, not killed.
        pid = libvirtd_pid(DEAD)
        os.kill(pid, signal.SIGSTOP)
        try:
            from vms.hypervisor import forget_hypervisors

            forget_hypervisors()  # as a fresh worker would: the dead host's connection must be opened
            silent = timed_refresh()
        finally:
            os.kill(pid, signal.SIGCONT)
        bring_back()
        facts = [*machine_facts(top), ("hosts", ", ".join(f"{n} {u}" for n, u in uris.items()))]
        detail = Section(
            title="Refresh times",
            intro="Each refresh's wall time (ms).",
            header=["case", "median", "min", "max"],
            rows=[
                [label, f"{statistics.median(s) * 1000:.1f}", f"{min(s) * 1000:.1f}", f"{max(s) * 1000:.1f}"]
                for label, s in (
                    ("all up", target.baseline_samples),
                    ("one dead (marked down: left to the health check)", target.candidate_samples),
                    ("the refresh that finds the killed host dead", detections),
                    ("the refresh that finds a silent host (SIGSTOP) dead", [silent]),
                )
            ],
            findings=[
                f"A silent host whose connection must be opened is given up after VAPOR_HOST_CONNECT_TIMEOUT "
                f"({settings.VAPOR.host_connect_timeout:g} s); one whose kept connection goes silent, within the check budget "
                f"({check_budget():g} s: connect timeout + 4 x keepalive). This refresh took {silent:.1f} s, bounded, and the "
                "other hosts' VMs were stored in it; later refreshes leave the host to the health check."
            ],
        )
        method = f"{args.pairs} interleaved pairs, in-process (the service function), over qemu+tcp to the test bed."
        run.publish(run.render(method, facts, [targets_section([target]), detail]), args.write)
    finally:
        subprocess.run(["bash", str(ROOT / "scripts/hosts.sh"), "stop"], capture_output=True, timeout=120, check=False)
        shutil.rmtree(top, ignore_errors=True)
        from django.db import connections

        connections.close_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
