"""Benchmark of hot-attach (issue 14): a new 10 GB disk attached to a running VM, API accept -> visible in the domain.

A measurement, not a test. One real running domain on the real libvirtd (`qemu:///system`): TCG, q35, 64 MiB,
no disk to boot (SeaBIOS idles) and `--ports` spare pcie-root-port controllers, so each attach takes a free
PCIe slot; a throwaway SQLite database holds its VM row. Each pair, in alternating order:

- Vapor: `POST /api/v1/virtualmachines/{id}/disks {"size": 10}` through Django's test client (the view, the
  service with creation's checks, the quota, the rows, the volume, attachDeviceFlags LIVE|CONFIG, the event
  and audit), timed until the new target is in the live domain XML;
- baseline: raw libvirt-python in the same process: `storagePool.createXML` of a 10 GiB qcow2 volume, then
  `attachDeviceFlags(LIVE|CONFIG)` of its `<disk>`, timed the same way.

Nothing is detached between pairs (a guest without an OS never acknowledges a PCIe unplug): the domain is
destroyed and undefined at the end and the pool with every volume removed.

Run:  flock /tmp/vapor-libvirt.lock .venv/bin/python -m bench.hotattach_bench [--write] [--pairs 8]
--write refreshes this module's block of docs/BENCHMARKS.md, keeping the others.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import libvirt

from bench.common import Run, Section, Target, django_setup, machine_facts, migrate, require, say, targets_section

URI = "qemu:///system"
GIB = 1024**3
CAVEAT = "pass/fail tests, against the real libvirtd shared with other work on this VM (2 vCPUs, TCG guests)."


def _domain_xml(name: str, ports: int) -> str:
    root_ports = "\n".join(f"    <controller type='pci' model='pcie-root-port' index='{i + 1}'/>" for i in range(ports))
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <controller type='pci' model='pcie-root' index='0'/>
{root_ports}
    <memballoon model='none'/>
    <video><model type='none'/></video>
  </devices>
</domain>"""


def _volume_xml(name: str) -> str:
    return (
        f"<volume><name>{name}</name><capacity unit='bytes'>{10 * GIB}</capacity><allocation>0</allocation>"
        "<target><format type='qcow2'/></target></volume>"
    )


def _disk_xml(path: str, target: str) -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2' discard='unmap'/><source file='{path}'/>"
        f"<target dev='{target}' bus='virtio'/><backingStore/></disk>"
    )


def _visible(domain: libvirt.virDomain, target: str) -> bool:
    return f"dev='{target}'" in domain.XMLDesc(0)


def baseline_once(conn: libvirt.virConnect, pool: libvirt.virStoragePool, domain: libvirt.virDomain, index: int) -> float:
    target = "vdz" + chr(ord("a") + index)
    started = time.perf_counter()
    volume = pool.createXML(_volume_xml(f"raw-{index}.qcow2"), 0)
    domain.attachDeviceFlags(_disk_xml(volume.path(), target), libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    require(_visible(domain, target), f"{target} is not in the live domain after attachDeviceFlags")
    return time.perf_counter() - started


def vapor_once(client: object, vm_id: int, domain: libvirt.virDomain) -> float:
    started = time.perf_counter()
    response = client.post(f"/api/v1/virtualmachines/{vm_id}/disks", {"size": 10}, format="json")  # type: ignore[attr-defined]
    require(response.status_code == 201, f"attach answered {response.status_code}: {response.content[:300]!r}")
    target = response.json()["target_dev"]
    require(_visible(domain, target), f"{target} is not in the live domain after the API's 201")
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    run = Run("hotattach_bench", "hot-attach of a disk", CAVEAT, argv)
    parser = run.parser(__doc__)
    parser.add_argument("--write", action="store_true", help="refresh this module's block of docs/BENCHMARKS.md")
    parser.add_argument("--pairs", type=int, default=8, help="pairs of attaches (default 8)")
    parser.add_argument("--quick", action="store_true", help="3 pairs: a check that it all runs")
    parser.add_argument("--tmpdir", type=Path, default=Path("/var/tmp"), help="parent of the work directory; QEMU must enter it")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs = 3
    require(1 <= args.pairs <= 12, "--pairs must be 1-12 (two PCIe slots per pair)")
    done = subprocess.run(["virsh", "-c", URI, "list"], capture_output=True, text=True, timeout=30, check=False)
    require(done.returncode == 0, f"libvirtd does not answer on {URI}; start it: bash scripts/libvirtd.sh start")
    top = Path(tempfile.mkdtemp(prefix="vapor-bench-hot-", dir=args.tmpdir))
    top.chmod(0o755)
    name = "bench-hot-" + secrets.token_hex(4)
    conn = libvirt.open(URI)
    domain = pool = None
    try:
        django_setup(top)
        migrate("migrating a fresh SQLite database")
        import uuid

        from django.contrib.auth.models import User
        from rest_framework.test import APIClient

        from vms.hypervisor.libvirt_driver import LibvirtDriver
        from vms.models import VirtualMachine

        pool_dir = top / "pool"
        with LibvirtDriver(URI) as driver:
            driver.ensure_dir_pool(name, str(pool_dir))
        pool = conn.storagePoolLookupByName(name)
        domain = conn.defineXML(_domain_xml(name, 2 * args.pairs + 2))
        domain.create()
        vm = VirtualMachine.objects.create(
            name=name, uuid=uuid.UUID(domain.UUIDString()), memory_mb=64, vcpus=1, virt_type="qemu", machine="q35",
            storage_pool=name, status="running", graphics_type="none",
        )  # fmt: skip
        client = APIClient()
        client.force_authenticate(User.objects.create_superuser("bench", password=None))
        client.get(f"/api/v1/virtualmachines/{vm.pk}/disks")  # warm: the URL table, the first queries
        target = Target(1, "hot-attach of a new 10 GB disk to a running VM, API accept -> visible in the domain",
                        "libvirt-python createXML + attachDeviceFlags", "s", 1.5, higher_is_better=False)  # fmt: skip
        for index in range(args.pairs):
            if index % 2:
                candidate = vapor_once(client, vm.pk, domain)
                base = baseline_once(conn, pool, domain, index)
            else:
                base = baseline_once(conn, pool, domain, index)
                candidate = vapor_once(client, vm.pk, domain)
            target.add(base, candidate)
            say(f"  pair {index + 1}: baseline {base * 1000:.1f} ms, Vapor {candidate * 1000:.1f} ms")
        facts = [
            *machine_facts(top),
            ("libvirt / QEMU", f"{libvirt.getVersion() // 1000000}.{libvirt.getVersion() // 1000 % 1000} / "
                               f"{conn.getVersion() // 1000000}.{conn.getVersion() // 1000 % 1000}"),
            ("domain", "TCG q35, 64 MiB, 1 vCPU, no OS (SeaBIOS idles), spare pcie-root-ports"),
        ]  # fmt: skip
        detail = Section(
            title="Attach times",
            intro="Each attach's wall time, request to the disk seen in the live domain XML.",
            header=["side", "median ms", "min ms", "max ms"],
            rows=[
                [label, f"{statistics.median(s) * 1000:.1f}", f"{min(s) * 1000:.1f}", f"{max(s) * 1000:.1f}"]
                for label, s in (("libvirt-python", target.baseline_samples), ("Vapor API", target.candidate_samples))
            ],
        )
        method = f"{args.pairs} interleaved pairs on one running domain, in-process (Django test client, libvirt-python)."
        run.publish(run.render(method, facts, [targets_section([target]), detail]), args.write)
    finally:
        if domain is not None:
            for step in (domain.destroy, domain.undefine):
                try:
                    step()
                except libvirt.libvirtError as exc:
                    say(f"cleanup: {exc}")
        if pool is not None:
            for volume in pool.listAllVolumes(0):
                volume.delete(0)
            pool.destroy()
            pool.undefine()
        conn.close()
        shutil.rmtree(top, ignore_errors=True)
        from django.db import connections

        connections.close_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
